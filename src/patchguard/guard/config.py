"""The guard's configuration: one TOML file (docs/guard.md documents every key). Invalid input
is one error naming the file and the key; nothing is guessed."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchguard.findings import Severity
from patchguard.fleet.guard_link import ServerSettings, server_settings
from patchguard.policy.transparency.gate_config import GateSettings, gate_settings
from patchguard.safe_read import InputError, parse_toml, read_bounded

RESPONSES = ("log", "alert", "contain", "bugcheck")
# Seconds, inclusive (docs/guard.md): a sweep at least every day and at most every second; a
# trigger look at least every 10 s (the unit's watchdog, 30 s, is pinged from that loop) and
# at most every 50 ms (below that it is a busy loop, not a guard).
INTERVALS = {"sweep_mean": (1.0, 86400.0), "trigger_interval": (0.05, 10.0)}
DEFAULT_PATH = Path("/etc/patchguard/guard.toml")


class ConfigError(Exception):
    """str() is one line: `<file>: <key>: <what is wrong>`."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        super().__init__(f"{path}: {key}: {reason}" if key else f"{path}: {reason}")


@dataclass(frozen=True)
class GuardConfig:
    baseline: Path | None = Path("/var/lib/patchguard/baseline.zip")
    ledger: Path | None = Path("/var/lib/patchguard/ledger.db")  # exceptions in force
    ledger_root: str | None = None  # fingerprint entry 1 must be signed by (pinned owner key)
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
    server: ServerSettings | None = None  # the fleet server this host reports to ([server])
    transparency: GateSettings | None = None  # exceptions only when witnessed ([transparency])
    state: Path | None = None  # the guard's state directory (default: the spool's parent)
    ledger_head: tuple[int, str] | None = None  # a ledger head the ledger must still hold

    @property
    def state_dir(self) -> Path:
        return self.state if self.state is not None else self.spool.parent

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


def _finite(value: float, key: str, path: Path) -> float:
    # int and float both: an int too large for a float is as unusable as inf
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ConfigError(path, f"guard.{key}", f"must be a finite number, got {value!r:.40}")
    return number


def _seconds(value: float, key: str, low: float, high: float, path: Path) -> float:
    seconds = _finite(value, key, path)
    if seconds <= 0:
        raise ConfigError(path, f"guard.{key}", "must be more than 0 seconds")
    if not low <= seconds <= high:
        raise ConfigError(path, f"guard.{key}", f"must be from {low:g} to {high:g} seconds")
    return seconds


def _listen(value: str, path: Path) -> str:
    """HOST:PORT with a port from 1 to 65535 and a host ("[::1]" for IPv6)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or len(port) > 5:
        raise ConfigError(path, "metrics.listen", f"expected HOST:PORT, got {value!r:.80}")
    if not 1 <= int(port) <= 65535:
        raise ConfigError(path, "metrics.listen", f"port {port} is not from 1 to 65535")
    return value


def _guard_table(table: dict[str, Any], path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("baseline", "ledger", "key", "spool", "state"):
        if key in table:
            value = _take(table, key, (str,), "guard", path)
            out[key] = Path(value) if value else None
    if "ledger_root" in table:
        root = _take(table, "ledger_root", (str,), "guard", path)
        if not re.fullmatch(r"[0-9a-f]{16}", root):
            raise ConfigError(
                path, "guard.ledger_root", "expected a key fingerprint, 16 hex digits"
            )
        out["ledger_root"] = root
    if "ledger_head" in table:
        out["ledger_head"] = _ledger_head(_take(table, "ledger_head", (str,), "guard", path), path)
    for key, (low, high) in INTERVALS.items():
        if key in table:
            out[key] = _seconds(
                _take(table, key, (int, float), "guard", path), key, low, high, path
            )
    if "sweep_jitter" in table:
        jitter = _finite(
            _take(table, "sweep_jitter", (int, float), "guard", path), "sweep_jitter", path
        )
        if not 0 <= jitter < 1:
            raise ConfigError(path, "guard.sweep_jitter", "must be from 0 to below 1")
        out["sweep_jitter"] = jitter
    _no_extra(table, "guard", path)
    return out


def _ledger_head(value: str, path: Path) -> tuple[int, str]:
    """`SEQ:HASH`: the number of entries and the hash of the last, as `ledger verify` says."""
    found = re.fullmatch(r"([1-9][0-9]{0,11}):([0-9a-f]{64})", value)
    if found is None:
        raise ConfigError(
            path, "guard.ledger_head", "expected SEQ:HASH (entries, then 64 hex digits)"
        )
    return int(found.group(1)), found.group(2)


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
    for section in ("guard", "responses", "alert", "metrics", "bugcheck", "server", "transparency"):
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
        values["metrics"] = _listen(_take(metrics, "listen", (str,), "metrics", path), path)
    _no_extra(metrics, "metrics", path)
    bugcheck = dict(raw.pop("bugcheck", {}))
    if "dry_run" in bugcheck:
        values["bugcheck_dry_run"] = _take(bugcheck, "dry_run", (bool,), "bugcheck", path)
    _no_extra(bugcheck, "bugcheck", path)
    if "server" in raw:
        values["server"] = _server_table(dict(raw.pop("server")), path)
    if "transparency" in raw:
        values["transparency"] = _transparency_table(dict(raw.pop("transparency")), path)
    _no_extra(raw, "(top level)", path)
    return GuardConfig(**values)


def _server_table(table: dict[str, Any], path: Path) -> ServerSettings:
    try:
        return server_settings(table, path)
    except ValueError as exc:  # it names the file and the key already
        raise ConfigError(path, "", str(exc).removeprefix(f"{path}: ")) from None


def _transparency_table(table: dict[str, Any], path: Path) -> GateSettings:
    try:
        return gate_settings(table, path)
    except ValueError as exc:  # it names the file and the key already
        raise ConfigError(path, "", str(exc).removeprefix(f"{path}: ")) from None


def load_config(path: Path) -> GuardConfig:
    """Read (a regular file, at most 1 MiB of UTF-8) and validate a guard config."""
    try:
        text = read_bounded(path, "config").decode("utf-8")
    except InputError as exc:
        raise ConfigError(path, "", f"cannot read it: {exc.reason}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(path, "", f"not UTF-8 text (byte {exc.start})") from None
    return parse_config(text, path)
