"""Readable messages for the direct receivers: Slack and Microsoft Teams incoming webhooks, and
e-mail. Each is built from one outbox message (the alerts of one rule, see ``notify.py``) and
the receiver's ``title`` (once) and ``text`` (per alert) templates.

* Slack (incoming webhook): ``{"text": <title>, "blocks": [header, a mrkdwn section per alert
  (at most 48: Slack takes 50 blocks), a context line]}``; ``text`` is what notifications and
  clients without blocks show.
* Teams (incoming webhook / Workflows "post to a channel"): ``{"type": "message",
  "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "content": an
  Adaptive Card 1.4 with the title, a text block per alert and an "Open in edgemon" action}]}``.
* E-mail: ``text/plain`` UTF-8, subject = title, one paragraph per alert; ``Message-ID`` is
  derived from the delivery's idempotency key, so a repeat after a crash has the same one.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

from edgemon.collector.alerting.templates import render_fields

__all__ = ["email_message", "slack_payload", "teams_payload", "text_lines", "title"]

_SLACK_MAX_ALERTS = 48


def _when(iso: str | None) -> str:
    if not iso or iso.startswith("0001-"):
        return ""
    try:
        moment = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return iso
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _value(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else "n/a"
    return "n/a" if value is None else value


def _context(alert: dict[str, Any]) -> dict[str, Any]:
    labels = alert.get("labels", {})
    return {"status": alert.get("status", "firing").upper(), "rule": alert.get("rule", ""),
            "host": alert.get("host") or labels.get("host", ""),
            "severity": labels.get("severity", ""), "value": _value(alert.get("value")),
            "since": _when(alert.get("startsAt")), "link": alert.get("generatorURL", ""),
            "summary": alert.get("annotations", {}).get("summary", ""), "labels": labels}


def title(receiver: Any, rule: str, alerts: list[dict[str, Any]]) -> str:
    firing = [a for a in alerts if a.get("status") == "firing"]
    status = "FIRING" if firing else "RESOLVED"
    severity = (alerts[0].get("labels", {}).get("severity", "") if alerts else "")
    return render_fields(receiver.title, {"status": status, "rule": rule,
                                          "count": len(firing) or len(alerts),
                                          "severity": severity})


def text_lines(receiver: Any, alerts: list[dict[str, Any]]) -> list[str]:
    return [render_fields(receiver.text, _context(a)) for a in alerts]


def slack_payload(receiver: Any, rule: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    head = title(receiver, rule, alerts)
    lines = text_lines(receiver, alerts)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": head[:150]}}]
    for alert, line in zip(alerts[:_SLACK_MAX_ALERTS], lines, strict=False):
        mark = ":red_circle:" if alert.get("status") == "firing" else ":large_green_circle:"
        blocks.append({"type": "section", "text": {"type": "mrkdwn",
                                                   "text": f"{mark} {line}"[:3000]}})
    more = len(alerts) - _SLACK_MAX_ALERTS
    footer = f"and {more} more" if more > 0 else "edgemon"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return {"text": head, "blocks": blocks}


def teams_payload(receiver: Any, rule: str, alerts: list[dict[str, Any]]) -> dict[str, Any]:
    head = title(receiver, rule, alerts)
    firing = any(a.get("status") == "firing" for a in alerts)
    body: list[dict[str, Any]] = [{"type": "TextBlock", "text": head, "weight": "Bolder",
                                   "size": "Medium", "wrap": True,
                                   "color": "Attention" if firing else "Good"}]
    body += [{"type": "TextBlock", "text": line, "wrap": True, "spacing": "Small"}
             for line in text_lines(receiver, alerts)]
    card: dict[str, Any] = {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                            "type": "AdaptiveCard", "version": "1.4", "body": body}
    link = alerts[0].get("generatorURL") if alerts else None
    if link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in edgemon", "url": link}]
    return {"type": "message", "summary": head, "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
         "content": card}]}


def email_message(receiver: Any, rule: str, alerts: list[dict[str, Any]],
                  message_key: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = title(receiver, rule, alerts)
    message["From"] = receiver.from_
    message["To"] = ", ".join(receiver.to)
    message["Date"] = formatdate(localtime=False, usegmt=True)
    domain = receiver.from_.rsplit("@", 1)[-1]
    message["Message-ID"] = f"<{message_key}@{domain}>"
    message["X-Edgemon-Idempotency-Key"] = message_key
    message.set_content("\n\n".join(text_lines(receiver, alerts)) + "\n\n-- \nedgemon\n")
    return message
