"""Alert rules: the TOML file, its pydantic models, ``load_rules`` and ``check_rules``.

The file has three parts (see ``rules.example.toml``, which is also the built-in default)::

    [settings]          # engine-wide: evaluation interval, grouping window, staleness bound ...
    [[receiver]]        # webhook endpoints (Alertmanager-compatible payload), any number
    [[rule]]            # one table per rule; ``kind`` selects the rule type

Every problem is reported at once, each as ``FILE:LINE: rule 'NAME': key 'KEY': message``.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TextIO

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from edgemon.collector.alerting.templates import (
    DEFAULT_TEXT,
    DEFAULT_TITLE,
    MESSAGE_FIELDS,
    TITLE_FIELDS,
    check_template,
)
from edgemon.collector.http.timeparse import parse_duration_ms
from edgemon.collector.storage.base import Aggregation
from edgemon.common.toml_config import ConfigError, TomlLines, at_line, parse_toml, read_text

__all__ = [
    "DEFAULT_RULES_PATH",
    "AnomalyRule",
    "DiskFullEtaRule",
    "HostDownRule",
    "RateRule",
    "Receiver",
    "Rule",
    "RuleSet",
    "RulesError",
    "Settings",
    "ThresholdRule",
    "check_rules",
    "load_rules",
    "parse_duration_ms",
    "parse_rules",
]

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.example.toml")

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # one MQTT topic level, like a host id
_LABEL = r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$"
_METRIC = r"^[a-zA-Z_][a-zA-Z0-9_]{0,127}$"
_HOST_GLOB = r"^[A-Za-z0-9._*?\[\]!-]{1,128}$"
_EMAIL = r"^[^@\s<>]{1,64}@[^@\s<>]{1,255}$"


def _positive(value: int) -> int:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


Duration = Annotated[int, BeforeValidator(parse_duration_ms)]  # milliseconds
PositiveDuration = Annotated[Duration, AfterValidator(_positive)]
RuleName = Annotated[str, Field(pattern=NAME_PATTERN)]
LabelName = Annotated[str, Field(pattern=_LABEL)]
MetricName = Annotated[str, Field(pattern=_METRIC)]
HostGlob = Annotated[str, Field(pattern=_HOST_GLOB)]
LabelValue = Annotated[str, Field(max_length=256)]
Severity = Literal["critical", "warning", "info"]


def _check_templates(value: dict[str, str]) -> dict[str, str]:
    for key, template in value.items():
        try:
            check_template(template)
        except ValueError as exc:
            raise ValueError(f"annotation {key!r}: {exc}") from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Settings(_Model):
    """Engine-wide settings (``[settings]``)."""

    interval: PositiveDuration = 10_000  # between evaluation cycles
    settle: Duration = 90_000  # a step with no later data is evaluated this long after its end
    group_wait: Duration = 10_000  # transitions of one rule within this window: one message
    notify_max_age: Duration = 600_000  # older transitions are history only (historical=true)
    max_catchup: Duration = 86_400_000  # never evaluate data older than this
    history_retention: Duration = 30 * 86_400_000
    retry_initial: PositiveDuration = 1_000  # webhook retry back-off: initial ...
    retry_max: Duration = 300_000  # ... and cap
    max_alerts_per_message: Annotated[int, Field(ge=1, le=10_000)] = 1000
    external_url: Annotated[str, Field(max_length=1024)] = ""
    mqtt: bool = True  # publish transitions on MQTT (when the collector gives a publisher)
    record_pending: bool = False  # also keep pending / pending-cancelled transitions in history


def _message_template(fields: tuple[str, ...]) -> Any:
    def check(value: str) -> str:
        check_template(value, fields)
        return value
    return AfterValidator(check)


class Receiver(_Model):
    """A receiver (``[[receiver]]``): ``type`` "webhook" (Alertmanager-compatible JSON,
    version 4), "slack" or "teams" (an incoming webhook ``url``), "email" (SMTP)."""

    name: RuleName
    type: Literal["webhook", "slack", "teams", "email"] = "webhook"
    url: Annotated[str, Field(max_length=2048)] = ""
    timeout: PositiveDuration = 10_000
    send_resolved: bool = True
    headers: dict[str, Annotated[str, Field(max_length=4096)]] = {}
    # slack, teams, email: a message per group of alerts, ``title`` once (also the e-mail's
    # subject), ``text`` per alert (see templates.MESSAGE_FIELDS)
    title: Annotated[str, _message_template(TITLE_FIELDS)] = DEFAULT_TITLE
    text: Annotated[str, _message_template(MESSAGE_FIELDS)] = DEFAULT_TEXT
    # email
    to: list[Annotated[str, Field(pattern=_EMAIL)]] = []
    from_: Annotated[str, Field(alias="from", pattern=_EMAIL)] = "edgemon@localhost"
    smtp_host: str = "localhost"
    smtp_port: Annotated[int, Field(ge=1, le=65535)] = 587
    smtp_security: Literal["starttls", "tls", "none"] = "starttls"
    smtp_ca_file: Path | None = None  # verify the server against it (default: system CAs)
    username: str | None = None
    password: str | None = None
    password_file: Path | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
            raise ValueError("must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _complete(self) -> Self:
        if self.type == "email":
            if not self.to:
                raise ValueError("an email receiver needs 'to' (a list of addresses)")
            if self.password is not None and self.password_file is not None:
                raise ValueError("set password or password_file, not both")
            if (self.password is not None or self.password_file) and not self.username:
                raise ValueError("a password needs a username")
        elif not self.url:
            raise ValueError(f"a {self.type} receiver needs 'url'")
        return self

    def smtp_password(self) -> str | None:
        if self.password_file is not None:
            return self.password_file.read_text().strip()
        return self.password


class _RuleBase(_Model):
    name: RuleName
    enabled: bool = True
    severity: Severity = "warning"
    labels: dict[LabelName, LabelValue] = {}  # added to every alert of the rule
    annotations: dict[LabelName, str] = {}  # templates: summary, description, ...
    receivers: list[RuleName] | None = None  # None = every receiver
    hosts: list[HostGlob] = []  # host ids or globs; empty = every host
    for_: Annotated[Duration, Field(alias="for")] = 0
    keep_firing_for: Duration = 0
    interval: Duration | None = None  # evaluate at most this often (default: settings)
    stale_after: Duration | None = None  # an active alert without data this long resolves

    @field_validator("annotations")
    @classmethod
    def _templates(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_templates(value)

    @field_validator("labels")
    @classmethod
    def _reserved(cls, value: dict[str, str]) -> dict[str, str]:
        for key in ("alertname", "host"):
            if key in value:
                raise ValueError(f"label {key!r} is set by the engine")
        return value

    @property
    def host_globs(self) -> tuple[str, ...]:
        return () if self.hosts in ([], ["*"]) else tuple(self.hosts)

    def host_matcher(self) -> re.Pattern[str] | None:
        globs = self.host_globs
        if not globs:
            return None
        return re.compile("|".join(fnmatch.translate(g) for g in globs))

    @property
    def metric_name(self) -> str:
        return ""

    @property
    def threshold_value(self) -> float | None:
        return None


class _SeriesRule(_RuleBase):
    metric: MetricName
    match: dict[LabelName, LabelValue] = {}  # exact label matches (storage-side)
    aggregation: Aggregation = "avg"

    @property
    def metric_name(self) -> str:
        return self.metric

    @property
    def uses_rate(self) -> bool:
        """Whether the rule reads the metric's per-second rate (a counter) instead of it."""
        return False


class _SteppedRule(_SeriesRule):
    """A rule that reads one value per ``step``."""

    step: Duration

    @property
    def step_ms(self) -> int:
        return self.step


_OPS = Literal[">", ">=", "<", "<="]


class _ComparisonRule(_SeriesRule):
    """A value per ``window`` compared with ``threshold`` (``op``); clears when ``value op
    clear_threshold`` no longer holds (hysteresis; default: the threshold itself)."""

    window: Duration
    op: _OPS = ">"
    threshold: float
    clear_threshold: float | None = None

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        _check_window(self.window, "window")
        _check_clear(self.op, self.threshold, self.clear_threshold)
        return self

    @property
    def step_ms(self) -> int:
        return self.window

    @property
    def threshold_value(self) -> float | None:
        return self.threshold


class ThresholdRule(_ComparisonRule):
    """``aggregation`` of ``metric`` over each ``window`` compared with ``threshold``.

    Fires after the condition held for ``for``; clears when ``value op clear_threshold`` no
    longer holds (hysteresis; default: the threshold itself), after ``keep_firing_for``.
    """

    kind: Literal["threshold"]
    window: Duration = 60_000
    rate: bool = False  # per-second rate of a counter

    @property
    def uses_rate(self) -> bool:
        return self.rate


class RateRule(_ComparisonRule):
    """A counter's per-second rate (over each ``window``) above ``threshold`` for ``for``."""

    kind: Literal["rate"]
    window: Duration = 300_000
    threshold: float = 0.0

    @property
    def uses_rate(self) -> bool:
        return True


class HostDownRule(_RuleBase):
    """A host's death message (MQTT Last Will / clean shutdown) or no data for a while."""

    kind: Literal["host_down"]
    no_data_for: Duration = 120_000
    on_death: bool = True
    forget_after: Duration = 7 * 86_400_000  # hosts silent this long are decommissioned

    @model_validator(mode="after")
    def _durations(self) -> HostDownRule:
        if self.no_data_for <= 0:
            raise ValueError("no_data_for must be > 0")
        if self.forget_after <= self.no_data_for:
            raise ValueError("forget_after must be longer than no_data_for")
        return self


class DiskFullEtaRule(_SteppedRule):
    """Linear regression over ``window`` (like PromQL predict_linear): fires when the value
    is predicted to reach ``full_at`` within ``within``."""

    kind: Literal["disk_full_eta"]
    metric: MetricName = "disk_usage_percent"
    window: Duration = 6 * 3_600_000
    step: Duration = 600_000
    within: Duration = 24 * 3_600_000
    clear_within: Duration | None = None  # hysteresis: clears when the ETA exceeds this
    full_at: float = 100.0
    min_points: Annotated[int, Field(ge=3)] = 6

    @model_validator(mode="after")
    def _shape(self) -> DiskFullEtaRule:
        _check_window(self.step, "step")
        if self.window < self.step * self.min_points:
            raise ValueError("window must hold at least min_points steps")
        if self.within <= 0:
            raise ValueError("within must be > 0")
        if self.clear_within is not None and self.clear_within < self.within:
            raise ValueError("clear_within must be >= within")
        return self

    @property
    def threshold_value(self) -> float | None:
        return self.within / 3_600_000


class AnomalyRule(_SteppedRule):
    """The value leaves the EWMA mean +- k standard deviations (after ``min_history`` steps).

    Out-of-band values update the baseline clipped to the band, so a lasting level change
    fires, then becomes the new normal and resolves.
    """

    kind: Literal["anomaly"]
    step: Duration = 60_000
    rate: bool = False
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    k: Annotated[float, Field(gt=0.0)] = 3.0
    clear_k: Annotated[float, Field(gt=0.0)] | None = None  # default k
    min_history: Annotated[int, Field(ge=2)] = 30
    min_stddev: Annotated[float, Field(ge=0.0)] = 0.0
    direction: Literal["both", "up", "down"] = "both"

    @model_validator(mode="after")
    def _shape(self) -> AnomalyRule:
        _check_window(self.step, "step")
        if self.clear_k is not None and self.clear_k > self.k:
            raise ValueError("clear_k must be <= k")
        return self

    @property
    def uses_rate(self) -> bool:
        return self.rate

    @property
    def threshold_value(self) -> float | None:
        return self.k


Rule = Annotated[ThresholdRule | RateRule | HostDownRule | DiskFullEtaRule | AnomalyRule,
                 Field(discriminator="kind")]
SeriesRule = ThresholdRule | RateRule | DiskFullEtaRule | AnomalyRule
_RULE = TypeAdapter(Rule)


def _check_window(value: int, key: str) -> None:
    if value < 1000 or value % 1000:
        raise ValueError(f"{key} must be a whole number of seconds >= 1s")


def _check_clear(op: str, threshold: float, clear: float | None) -> None:
    if clear is None:
        return
    if op in (">", ">=") and clear > threshold:
        raise ValueError(f"clear_threshold must be <= threshold for op {op!r}")
    if op in ("<", "<=") and clear < threshold:
        raise ValueError(f"clear_threshold must be >= threshold for op {op!r}")


# --- the rule set ------------------------------------------------------------------------------

@dataclass(frozen=True)
class RuleSet:
    settings: Settings
    receivers: dict[str, Receiver]
    rules: list[Any]  # Rule instances, file order
    source: str  # the file they came from
    digest: str = ""  # sha256 of the file's bytes (first 12 hex)
    by_name: dict[str, Any] = field(default_factory=dict)

    @property
    def enabled(self) -> list[Any]:
        return [r for r in self.rules if r.enabled]

    def receivers_for(self, rule: Any) -> list[Receiver]:
        if rule.receivers is None:
            return list(self.receivers.values())
        return [self.receivers[n] for n in rule.receivers if n in self.receivers]


class RulesError(ValueError):
    """The rules file is invalid; ``errors`` lists every problem (``FILE:LINE: ...``)."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


def _describe(error: dict[str, Any], drop_tag: bool) -> tuple[list[Any], str]:
    loc = list(error["loc"])
    if drop_tag and loc and isinstance(loc[0], str) and error["type"] not in (
            "union_tag_not_found", "union_tag_invalid"):
        loc = loc[1:]  # the discriminated union puts the kind first
    loc = [p for p in loc if p not in ("function-after",)]
    message = error["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, "):]
    if error["type"] == "union_tag_not_found":
        message = "missing 'kind': one of threshold, rate, host_down, disk_full_eta, anomaly"
        loc = ["kind"]
    elif error["type"] == "union_tag_invalid":
        message = (f"unknown kind {error.get('input', {}).get('kind')!r}: use threshold, rate, "
                   "host_down, disk_full_eta or anomaly")
        loc = ["kind"]
    elif error["type"] == "extra_forbidden":
        message = "unknown key"
    return loc, message


def _line_of(error: str) -> int:
    m = re.match(r"^[^:]*:(\d+):", error)
    return int(m.group(1)) if m else 0


def parse_rules(text: str, source: str = "<rules>") -> RuleSet:
    """Validate rules from TOML text; raise ``RulesError`` listing every problem."""
    try:
        doc = parse_toml(text, source)
    except ConfigError as exc:
        raise RulesError(exc.problems) from None
    lines = TomlLines(text)
    errors: list[str] = []

    def where(section: str, index: int | None, loc: list[Any]) -> str:
        return f"{source}{at_line(lines.find(section, [str(p) for p in loc], index))}"

    for key in doc:
        if key not in ("settings", "receiver", "rule"):
            errors.append(f"{source}: unknown top-level key {key!r}: use [settings], "
                          "[[receiver]], [[rule]]")

    settings = Settings()
    try:
        settings = Settings.model_validate(doc.get("settings", {}))
    except ValidationError as exc:
        for err in exc.errors():
            loc, msg = _describe(err, drop_tag=False)
            errors.append(f"{where('settings', None, loc)}: settings: key "
                          f"{'.'.join(map(str, loc))!r}: {msg}")

    receivers: dict[str, Receiver] = {}
    raw_receivers = doc.get("receiver", [])
    if not isinstance(raw_receivers, list):
        errors.append(f"{source}: 'receiver' must be an array of tables ([[receiver]])")
        raw_receivers = []
    for i, raw in enumerate(raw_receivers):
        name = raw.get("name") if isinstance(raw, dict) else None
        try:
            receiver = Receiver.model_validate(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc, msg = _describe(err, drop_tag=False)
                errors.append(f"{where('receiver', i, loc)}: receiver {name or f'#{i + 1}'!r}: "
                              f"key {'.'.join(map(str, loc))!r}: {msg}")
            continue
        if receiver.name in receivers:
            errors.append(f"{where('receiver', i, ['name'])}: receiver {receiver.name!r}: "
                          "duplicate name")
        receivers[receiver.name] = receiver

    rules: list[Any] = []
    raw_rules = doc.get("rule", [])
    if not isinstance(raw_rules, list):
        errors.append(f"{source}: 'rule' must be an array of tables ([[rule]])")
        raw_rules = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_rules):
        name = raw.get("name") if isinstance(raw, dict) else None
        label = f"rule {name!r}" if isinstance(name, str) else f"rule #{i + 1}"
        try:
            rule = _RULE.validate_python(raw)
        except ValidationError as exc:
            for err in exc.errors():
                loc, msg = _describe(err, drop_tag=True)
                key = ".".join(map(str, loc)) or "(rule)"
                errors.append(f"{where('rule', i, loc)}: {label}: key {key!r}: {msg}")
            continue
        if rule.name in seen:
            errors.append(f"{where('rule', i, ['name'])}: {label}: duplicate name")
        seen.add(rule.name)
        for receiver in rule.receivers or []:
            if receiver not in receivers:
                errors.append(f"{where('rule', i, ['receivers'])}: {label}: key 'receivers': "
                              f"unknown receiver {receiver!r}")
        rules.append(rule)
    if errors:
        raise RulesError(sorted(errors, key=_line_of))
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return RuleSet(settings=settings, receivers=receivers, rules=rules, source=source,
                   digest=digest, by_name={r.name: r for r in rules})


def load_rules(path: str | Path | None = None) -> RuleSet:
    """Read and validate a rules file; ``None`` = the built-in defaults."""
    path = Path(path) if path is not None else DEFAULT_RULES_PATH
    try:
        text = read_text(path)
    except ConfigError as exc:
        raise RulesError(exc.problems) from None
    return parse_rules(text, str(path))


def check_rules(path: str | Path | None = None, out: TextIO | None = None,
                err: TextIO | None = None) -> int:
    """The ``check-rules`` command: validate, print a summary or every error; exit status."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        ruleset = load_rules(path)
    except RulesError as exc:
        for line in exc.errors:
            print(line, file=err)
        print(f"{len(exc.errors)} error(s)", file=err)
        return 1
    enabled = ruleset.enabled
    print(f"{ruleset.source}: OK: {len(ruleset.rules)} rules ({len(enabled)} enabled), "
          f"{len(ruleset.receivers)} receivers", file=out)
    for rule in ruleset.rules:
        state = "" if rule.enabled else " (disabled)"
        target = f" {rule.metric_name}" if rule.metric_name else ""
        print(f"  {rule.name}: {rule.kind}{target}, {rule.severity}{state}", file=out)
    return 0
