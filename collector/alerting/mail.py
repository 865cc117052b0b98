"""E-mail over SMTP (stdlib ``smtplib``, blocking: the delivery worker runs it in a thread).

``smtp_security``: "starttls" (port 587: the server must offer STARTTLS, the certificate is
verified), "tls" (implicit TLS, port 465), "none" (plain, only for a relay on this machine).
Outcome in the delivery worker's terms: (200, "") when the server accepted the message for
every recipient; (400, reason) when it refused it for good (5xx for the sender, all recipients
or the data): dropped and logged; (None, reason) for anything that may pass later (no
connection, 4xx, authentication - the password file is read again at each attempt): retried.
"""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from typing import Any

__all__ = ["send_email"]


def send_email(receiver: Any, message: EmailMessage) -> tuple[int | None, str]:
    timeout = receiver.timeout / 1000
    ca = receiver.smtp_ca_file
    context = ssl.create_default_context(cafile=str(ca) if ca else None)
    try:
        if receiver.smtp_security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(receiver.smtp_host, receiver.smtp_port,
                                                    timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(receiver.smtp_host, receiver.smtp_port, timeout=timeout)
        with client:
            client.ehlo()
            if receiver.smtp_security == "starttls":
                client.starttls(context=context)
                client.ehlo()
            if receiver.username:
                client.login(receiver.username, receiver.smtp_password() or "")
            refused = client.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        return _classify(exc.recipients, "every recipient refused")
    except (smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
        return _code_outcome(exc.smtp_code, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
    except smtplib.SMTPNotSupportedError as exc:
        return None, f"SMTP: {exc}"
    except (smtplib.SMTPException, OSError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    if refused:  # some recipients refused: the others have it; not retried (no duplicates)
        return 200, f"refused by the server for {', '.join(sorted(refused))}"
    return 200, ""


def _code_outcome(code: int, text: str) -> tuple[int | None, str]:
    return (400, text) if 500 <= code < 600 else (None, text)


def _classify(recipients: dict[str, tuple[int, bytes]], text: str) -> tuple[int | None, str]:
    codes = [code for code, _ in recipients.values()]
    permanent = all(500 <= c < 600 for c in codes)
    detail = "; ".join(f"{r}: {c}" for r, (c, _) in sorted(recipients.items()))
    return (400 if permanent else None), f"{text} ({detail})"
