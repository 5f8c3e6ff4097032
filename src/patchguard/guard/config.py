"""The guard's configuration: one TOML file (docs/guard.md documents every key). Invalid input
is one error naming the file and the key; nothing is guessed."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchguard.findings import Severity
from patchguard.safe_read import InputError, parse_toml, read_bounded

RESPONSES = ("log", "alert", "contain", "bugcheck")
DEFAULT_PATH = Path("/etc/patchguard/guard.toml")


class ConfigError(Exception):
    """str() is one line: `<file>: <key>: <what is wrong>`."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


@dataclass(frozen=True)
class GuardConfig:
    baseline: Path | None = Path("/var/lib/patchguard/baseline.zip")
    ledger: Path | None = Path("/var/lib/patchguard/ledger.db")  # exceptions in force
    key: Path = Path("/var/lib/patchguard/host.key")
    spool: Path = Path("/var/lib/patchguard/spool")
    sweep_mean: float = 300.0  # seconds between full sweeps, on average
    sweep_jitter: float = 0.5  # uniform +-50 % around the mean
    trigger_interval: float = 1.0  # cheap surfaces, every second
    responses: dict[Severity, tuple[str, ...]] = field(
        default_factory=lambda: {
            Severity.INFO: ("log",),
            Severity.LOW: ("log",),
            Severity.MEDIUM: ("log", "alert"),
            Severity.HIGH: ("log", "alert"),
            Severity.CRITICAL: ("log", "alert"),
        }
    )
    webhook: str | None = None
    syslog: bool = False
    metrics: str | None = None  # "127.0.0.1:9977"
    bugcheck_dry_run: bool = True  # a real panic needs `dry_run = false`, explicitly

    def responses_for(self, severity: Severity) -> tuple[str, ...]:
        return self.responses.get(severity, ())


def _take(table: dict[str, Any], key: str, kinds: tuple[type, ...], where: str, path: Path) -> Any:
    """Pop `key` and check its TOML type (a boolean is never taken for a number)."""
    value = table.pop(key)
    if isinstance(value, bool) != (bool in kinds) or not isinstance(value, kinds):
        names = {
            str: "a string",
            int: "a number",
            float: "a number",
            bool: "true or false",
            list: "a list",
        }
        wanted = " or ".join(dict.fromkeys(names[k] for k in kinds))
        raise ConfigError(path, f"{where}.{key}", f"expected {wanted}, got {value!r}")
    return value


def _guard_table(table: dict[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("baseline", "ledger", "key", "spool"):
        if key in table:
            value = _take(table, key, (str,), "guard", path)
            out[key] = Path(value) if value else None
    for key in ("sweep_mean", "trigger_interval"):
        if key in table:
            value = float(_take(table, key, (int, float), "guard", path))
            if value <= 0:
                raise ConfigError(path, f"guard.{key}", "must be more than 0 seconds")
            out[key] = value
    if "sweep_jitter" in table:
        jitter = float(_take(table, "sweep_jitter", (int, float), "guard", path))
        if not 0 <= jitter < 1:
            raise ConfigError(path, "guard.sweep_jitter", "must be from 0 to below 1")
        out["sweep_jitter"] = jitter
    _no_extra(table, "guard", path)
    return out


def _responses_table(table: dict[str, Any], path: Path) -> dict[Severity, tuple[str, ...]]:
    out = dict(GuardConfig().responses)
    for name in list(table):
        try:
            severity = Severity.parse(name)
        except ValueError as exc:
            raise ConfigError(path, f"responses.{name}", str(exc)) from None
        actions = _take(table, name, (list,), "responses", path)
        for action in actions:
            if action not in RESPONSES:
                raise ConfigError(
                    path,
                    f"responses.{name}",
                    f"unknown response {action!r} (one of: {', '.join(RESPONSES)})",
                )
        out[severity] = tuple(actions)
    return out


def _no_extra(table: dict[str, Any], where: str, path: Path) -> None:
    if table:
        raise ConfigError(path, f"{where}.{next(iter(table))}", "unknown key")


def parse_config(text: str, path: Path) -> GuardConfig:
    try:
        raw = parse_toml(text, str(path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, "", f"not valid TOML: {exc}") from None
    except InputError as exc:
        raise ConfigError(path, "", exc.reason) from None
    values: dict[str, Any] = {}
    for section in ("guard", "responses", "alert", "metrics", "bugcheck"):
        if section in raw and not isinstance(raw[section], dict):
            raise ConfigError(path, section, "expected a table")
    values.update(_guard_table(dict(raw.pop("guard", {})), path))
    if "responses" in raw:
        values["responses"] = _responses_table(dict(raw.pop("responses")), path)
    alert = dict(raw.pop("alert", {}))
    if "webhook" in alert:
        url = _take(alert, "webhook", (str,), "alert", path)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(path, "alert.webhook", f"not an http(s) URL: {url!r}")
        values["webhook"] = url
    if "syslog" in alert:
        values["syslog"] = _take(alert, "syslog", (bool,), "alert", path)
    _no_extra(alert, "alert", path)
    metrics = dict(raw.pop("metrics", {}))
    if "listen" in metrics:
        listen = _take(metrics, "listen", (str,), "metrics", path)
        _host, sep, port = listen.rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(path, "metrics.listen", f"expected HOST:PORT, got {listen!r}")
        values["metrics"] = listen
    _no_extra(metrics, "metrics", path)
    bugcheck = dict(raw.pop("bugcheck", {}))
    if "dry_run" in bugcheck:
        values["bugcheck_dry_run"] = _take(bugcheck, "dry_run", (bool,), "bugcheck", path)
    _no_extra(bugcheck, "bugcheck", path)
    _no_extra(raw, "(top level)", path)
    return GuardConfig(**values)


def load_config(path: Path) -> GuardConfig:
    """Read (a regular file, at most 1 MiB of UTF-8) and validate a guard config."""
    try:
        text = read_bounded(path, "config").decode("utf-8")
    except InputError as exc:
        raise ConfigError(path, "", f"cannot read it: {exc.reason}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path)
