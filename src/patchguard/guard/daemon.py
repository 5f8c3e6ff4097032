"""`patchguard guard`: full sweeps at random moments, cheap triggers every second, and the
configured responses to every new finding."""

from __future__ import annotations

import hashlib
import secrets
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import patchguard
from patchguard.findings import Disposition, Finding, Severity
from patchguard.fleet.client import FleetError
from patchguard.fleet.guard_link import ServerLink
from patchguard.guard.config import GuardConfig, load_config
from patchguard.guard.config_sig import check_with_host_key
from patchguard.guard.control_files import ControlFileWatch
from patchguard.guard.heap import fix_mmap_threshold
from patchguard.guard.kernel_events import KernelEvents
from patchguard.guard.ledger_feed import LedgerFeed
from patchguard.guard.metrics import Metrics
from patchguard.guard.pins import GuardMemory
from patchguard.guard.responses import bugcheck, contain
from patchguard.guard.sinks import Outlets
from patchguard.guard.systemd import notify
from patchguard.guard.tamper import (
    BaselinePin,
    CodePin,
    SurfaceWatch,
    ledger_root_changed,
    surface_lost,
)
from patchguard.guard.triggers import TriggerState
from patchguard.kernel import Kernel, KernelAccessError
from patchguard.policy import ledger
from patchguard.report import finding_json
from patchguard.scan import run_scan
from patchguard.surfaces import all_surfaces
from patchguard.surfaces.base import AnyState, Status, Surface

if TYPE_CHECKING:
    from patchguard.guard.supervisor import Supervisor
    from patchguard.integrity.keyed_pages import KeyedPages

FindingKey = tuple[str, str, str]
# How long any ledger read or write waits for another process's lock: a lock held by anyone is
# an event after this, never a sweep held past the watchdog or a stop held past 2 s.
LOCK_WAIT = 1.0


def next_interval(mean: float, jitter: float) -> float:
    """mean x (1 +- jitter), uniform, drawn from `secrets`: an attacker cannot predict it."""
    u = secrets.randbelow(1_000_001) / 1_000_000  # [0, 1]
    return mean * (1 + jitter * (2 * u - 1))


def _gap_text(state: AnyState) -> str:
    return "; ".join(f"{g.what}: {g.reason}" for g in state.gaps[:3]) or "no reason given"


def _key(f: Finding) -> FindingKey:
    return (f.surface, f.technique, f.subject)


class Guard:
    """The guard's work; it runs in the supervisor's worker thread (supervisor.py), which
    takes the signals and answers a stop whatever this is doing."""

    def __init__(
        self, config: GuardConfig, config_path: Path | None, outlets: Outlets, sup: Supervisor
    ) -> None:
        self.stop, self.reload, self.waiter = sup.stop, sup.reload, sup.waiter
        self.progress = sup.progress
        self.config, self.config_path = config, config_path
        self.outlets = outlets
        self.log = outlets.log
        self.server: ServerLink | None = None
        self.kernel = Kernel()
        ledger.BEFORE_OPEN = lambda _path: self.mark(self.progress.phase)
        self.metrics = Metrics(config.metrics)
        self.active: dict[str, set[FindingKey]] = {}  # per surface: findings seen last time
        self.records: dict[str, Sequence[object]] = {}
        self.surfaces = {s.name: s for s in all_surfaces()}
        self.package = Path(patchguard.__file__).parent
        self.code = CodePin.take(self.package)
        self.config_digest = self._config_digest()
        self._ledger_problem: str | None = None
        self.feed = self._ledger_feed()
        self.memory = GuardMemory(config, self.announce)
        self.pin = self.memory.baseline_pin()
        self.watch = SurfaceWatch()
        self.events: KernelEvents | None = None  # loaded by run(), closed when it ends
        self.events_problem: str | None = None
        self.control: ControlFileWatch | None = None  # the same, for the control files
        self.control_problem: str | None = None
        # what woke the last trigger check: "ringbuf", "inotify" or "poll"
        self.woken_by = "poll"
        self._keyed: KeyedPages | None = None
        self._keyed_tried = False

    # --- set-up ----------------------------------------------------------------------------
    @property
    def alerts(self) -> list[Any]:
        return self.outlets.alerts

    def mark(self, phase: str) -> None:
        """Progress, for the supervisor's watchdog: what the guard is doing, and that it moves."""
        self.progress.mark(phase)

    def _server_link(self) -> ServerLink | None:
        """The fleet server link of the config's [server] table; a host not enrolled (or a key
        that cannot be read) is said on every sink, and the guard goes on without it."""
        from patchguard.signing import HostKey, KeyFileError

        if self.config.server is None:
            return None
        try:
            key = HostKey.load(self.config.key)
            return ServerLink(self.config.server, key, self.config.baseline)
        except (FleetError, KeyFileError, OSError) as exc:
            self.announce({"event": "server-unavailable", "message": str(exc)})
            return None

    def _kernel_events(self) -> tuple[KernelEvents | None, str | None]:
        """The guard's own program and ring buffer (kernel_events.py), left out of findings by
        identity; (None, why) where they cannot load: then the triggers are only polled."""
        try:
            events = KernelEvents.open()
        except KernelAccessError as exc:
            return None, str(exc)
        self.kernel.own_prog_ids.update(events.own_prog_ids)
        self.kernel.own_map_ids.update(events.own_map_ids)
        return events, None

    def _doorbells(self) -> None:
        """What ends a wait before the poll: the ring buffer, and the control files' watch
        (guard/control_files.py: tracefs writes, which the ring buffer does not see)."""
        self.events, self.events_problem = self._kernel_events()
        if self.events is not None:
            self.waiter.watch(self.events)
        try:
            self.control = ControlFileWatch.open()
            self.waiter.listen("inotify", self.control)
        except KernelAccessError as exc:
            self.control_problem = str(exc)

    def _ledger_feed(self) -> LedgerFeed | None:
        ledger = self.config.ledger
        return LedgerFeed(ledger, self.config.key) if ledger is not None else None

    def _config_digest(self) -> str | None:
        if self.config_path is None:
            return None
        try:
            return hashlib.sha256(self.config_path.read_bytes()).hexdigest()
        except OSError:
            return None

    def announce(self, event: dict[str, Any]) -> None:
        """An event about the guard itself (start, stop, reload): to the log and every alert
        sink, so that a guard stopped or reconfigured is seen where its findings are."""
        self.outlets.announce(event)

    # --- the loop --------------------------------------------------------------------------
    def run(self) -> None:
        self.mark("start")
        self._doorbells()
        try:
            self._run()
        finally:  # the guard's own program is detached whatever ends the loop
            if self.events is not None:
                self.events.close()
            if self.control is not None:
                self.control.close()
            if self._keyed is not None:
                self._keyed.close()
            self.kernel.close()

    def _run(self) -> None:
        remembered = self.memory.start(self.pin)
        self.server = self._server_link()
        self.handle("guard:state", remembered, "start")
        self.announce(
            {
                "event": "start",
                "version": patchguard.__version__,
                "sweep_mean": self.config.sweep_mean,
                "baseline_sha256": self.pin.digest if self.pin else None,
                # the syscall exits the guard's own program tells it of, and that program
                "told_by": self.events.attached if self.events else None,
                "told_by_prog_id": self.events.prog_id if self.events else None,
                "told_by_prog_ids": list(self.events.own_prog_ids) if self.events else None,
                "told_by_unavailable": self.events_problem,
                # the control files whose writes wake it (inotify)
                "watched_files": self.control.watched if self.control else None,
                "watched_files_unavailable": self.control_problem,
            }
        )
        # Read the triggers before the first sweep: whatever appears after this reading is
        # either in the sweep or fires a trigger; nothing falls between the two.
        triggers = TriggerState(self.kernel)
        self.sweep()
        next_sweep = time.monotonic() + next_interval(
            self.config.sweep_mean, self.config.sweep_jitter
        )
        notify("READY=1")
        while not self.stop.is_set():
            self.mark("wait")
            # A hook call told by the kernel, or a control file written, ends the wait at once; else
            # poll each interval.
            self.woken_by = self.waiter.wait(self.config.trigger_interval)
            self.metrics.woke(self.woken_by)
            if self.stop.is_set():
                break
            if self.reload.is_set():
                self._reload()
            if self.feed is not None and self.feed.changed():
                self.mark("ledger replay")
                self.announce_ledger()
            self.mark("triggers")
            fired = triggers.fired()
            if fired:
                names = sorted({s for t in fired for s in t.surfaces})
                self.metrics.triggered([t.name for t in fired])
                self.collect([self.surfaces[n] for n in names], f"trigger:{fired[0].name}")
            if time.monotonic() >= next_sweep:
                self.sweep()
                next_sweep = time.monotonic() + next_interval(
                    self.config.sweep_mean, self.config.sweep_jitter
                )

    def _reload(self) -> None:
        self.reload.clear()
        if self.config_path is None:
            return
        try:
            self.config = load_config(self.config_path)
        except Exception as exc:  # a bad new config keeps the old one running
            self.announce({"event": "reload-failed", "message": str(exc)})
            return
        self.outlets.close()
        self.outlets.open(self.config.webhook, self.config.syslog, self.config.spool)
        self.feed = self._ledger_feed()
        self.config_digest = self._config_digest()
        # The same baseline file keeps its pin: a new one is accepted only through a rotation
        # request (`patchguard baseline rotate`); a config naming another file pins that one.
        self.memory.config = self.config
        if self.pin is None or self.pin.path != self.config.baseline:
            self.pin = BaselinePin.take(self.config.baseline) if self.config.baseline else None
        self.announce(
            {
                "event": "reloaded",
                "config": str(self.config_path),
                "baseline_sha256": self.pin.digest if self.pin else None,
            }
        )

    # --- sweeps and triggers --------------------------------------------------------------
    def _phases(self) -> list[tuple[str, Callable[[], list[Finding]]]]:
        phases = [
            ("ledger replay", self._announce_ledger_phase),
            ("sweep", lambda: self.collect(list(self.surfaces.values()), "sweep")),
            ("self-check", lambda: self.handle("guard", self.self_check(), "sweep")),
        ]
        if self.config.baseline is not None:
            check = lambda: self.handle("kernel_text", self.check_baseline(), "sweep")  # noqa: E731
            phases.append(("baseline check", check))
        return phases

    def _announce_ledger_phase(self) -> list[Finding]:
        self.announce_ledger()
        return []

    def sweep(self) -> None:
        t0 = time.monotonic()
        findings: list[Finding] = []
        for name, phase in self._phases():
            if self.stop.is_set():  # SIGTERM is answered between phases, not after the sweep
                return
            self.mark(name)
            findings += phase()
        self.metrics.swept(time.monotonic() - t0, findings)
        if self.server is not None:
            self.server.sweep(findings)
        self.log.send(
            {
                "event": "sweep",
                "seconds": round(time.monotonic() - t0, 3),
                "findings": len(findings),
            }
        )

    def announce_ledger(self) -> None:
        """Every new ledger entry (and the expiries now due) to the log and alert sinks."""
        if self.feed is None:
            return
        for event in self.feed.news():
            self.log.send(event)
            if event["event"] in ("ledger-entry", "ledger-rewritten"):
                for sink in self.alerts:
                    sink.send(event)

    def collect(self, surfaces: list[Surface], why: str) -> list[Finding]:
        from patchguard.guard.witnessed import guard_policy

        policy, why_not, gated = guard_policy(self.config)  # gated: the witness gate's findings
        if why_not and why_not != self._ledger_problem:
            self.log.send({"event": "ledger-untrusted", "message": why_not})
        self._ledger_problem = why_not
        try:
            self.kernel.refresh()  # symbols of modules and BPF programs loaded since the last
            # A trigger's look reads kallsyms only if a surface asks: a read started for nobody
            # is waited for by the next refresh(), and that wait was most of a reaction's time.
            report = run_scan(
                self.kernel,
                surfaces,
                progress=lambda s: self.mark(f"{why}: {s.name}"),
                policy=policy,
                read_ahead=why == "sweep",
            )
        except Exception as exc:  # a reader taken away mid-run: a finding, never an exit
            reason = f"{type(exc).__name__}: {exc}"
            return self._lost([(s.name, Status.UNAVAILABLE, reason) for s in surfaces], why)
        finally:
            self.let_go()
        self.metrics.unavailable(sum(1 for r in report.results if r.state.gaps))
        found: list[Finding] = []
        for result in report.results:
            self.records[result.surface.name] = list(result.state.records)
            found += self.handle(result.surface.name, result.findings, why)
        looks = [(r.surface.name, r.state.status, _gap_text(r.state)) for r in report.results]
        found += self.handle("transparency", gated, why) if self.config.transparency else []
        return found + self._lost(looks, why)

    def _lost(self, looks: list[tuple[str, Status, str]], why: str) -> list[Finding]:
        """surface-lost findings, each surface on its own (triggers look at a few at a time)."""
        lost = {f.subject: f for f in self.watch.update(looks)}
        found: list[Finding] = []
        for name, _status, _why in looks:
            found += self.handle(f"lost:{name}", [lost[name]] if name in lost else [], why)
        return found

    def let_go(self) -> None:
        """Drop what the look just ended read (kallsyms' table, ~17 MiB of Python objects
        here, its attributor, module BTF): the next look refreshes the kernel handle before it
        reads anyway, so holding them through the idle minutes between looks bought nothing."""
        self.kernel.refresh()

    def keyed_pages(self) -> KeyedPages | None:
        """The in-kernel page hasher for the sweeps, opened at the first (None: refused)."""
        if not self._keyed_tried:
            from patchguard.integrity.keyed_pages import KeyedPages

            self._keyed, self._keyed_tried = KeyedPages.open(self.kernel), True
        return self._keyed

    def check_baseline(self) -> list[Finding]:
        from patchguard.integrity.check import verify
        from patchguard.integrity.store import BaselineError
        from patchguard.kernel import KernelAccessError
        from patchguard.signing import HostKey, KeyFileError

        assert self.config.baseline is not None
        try:
            key = HostKey.load(self.config.key)
            self.kernel.refresh()
            public = key.public_key_bytes()
            return verify(self.kernel, self.config.baseline, public, self.keyed_pages()).findings
        except KernelAccessError as exc:  # the memory reader went away: a finding, not an exit
            return [surface_lost("kernel_text", str(exc))]
        except (BaselineError, KeyFileError) as exc:
            return [
                Finding(
                    "kernel_text",
                    "baseline-untrusted",
                    Severity.CRITICAL,
                    str(self.config.baseline),
                    f"the baseline cannot be trusted: {exc}",
                    Disposition.TAMPERING,
                    "T1565.001",
                    {"error": str(exc)},
                )
            ]
        finally:
            self.let_go()

    def self_check(self) -> list[Finding]:
        """The guard's own files and its config, against what they were when it started."""
        found = []
        changed = self.code.changed()
        if changed:
            found.append(
                Finding(
                    "guard",
                    "guard-files-changed",
                    Severity.CRITICAL,
                    str(self.package),
                    "the guard's installed files changed while it runs: " + ", ".join(changed[:10]),
                    Disposition.TAMPERING,
                    "T1562.001",
                    {"files": changed[:50]},
                )
            )
        digest = self._config_digest()
        if digest != self.config_digest:
            found.append(
                Finding(
                    "guard",
                    "config-changed",
                    Severity.CRITICAL,
                    str(self.config_path),
                    "the guard's config changed without a "
                    "reload (SIGHUP); the running config is the old one",
                    Disposition.TAMPERING,
                    "T1562.001",
                    {"path": str(self.config_path)},
                )
            )
        found += self._baseline_pin()
        found += self._ledger_root()
        found += self.memory.ledger_check()
        return found + self._config_signature()

    def _baseline_pin(self) -> list[Finding]:
        """The baseline against its pin: another file is critical unless a rotation request
        (CLI, signed) names it; then it is pinned, and announced to every sink and the server."""
        if self.pin is None:
            return []
        found = self.pin.check()
        if not found:
            return []
        now = str(found[0].evidence["now"])
        rotation = self.memory.rotation_for(self.pin, now)
        if rotation is None:
            return found
        before, self.pin = self.pin.digest, BaselinePin(self.pin.path, now)
        self.announce(
            {
                "event": "baseline-rotated",
                "path": str(self.pin.path),
                "from": before,
                "to": now,
                "reason": rotation.reason,
                "message": f"baseline {self.pin.path} rotated as requested: {rotation.reason}",
            }
        )
        if self.server is not None:
            self.server.rotated(rotation.reason)
        return []

    def _ledger_root(self) -> list[Finding]:
        root, ledger = self.config.ledger_root, self.config.ledger
        return ledger_root_changed(ledger, root) if root and ledger else []

    def _config_signature(self) -> list[Finding]:
        """The config as signed with the host key (`patchguard config sign`): an unsigned one
        is reported, one edited or signed by another key is tampering."""
        if self.config_path is None:
            return []
        check = check_with_host_key(self.config_path, self.config.key)
        if check.ok:
            return []
        technique, severity = ("config-unsigned", Severity.MEDIUM)
        if not check.missing:
            technique, severity = ("config-signature-invalid", Severity.CRITICAL)
        return [
            Finding(
                "guard",
                technique,
                severity,
                str(self.config_path),
                f"the guard's config is not signed by this host's key: {check.reason}",
                Disposition.WEAKNESS if check.missing else Disposition.TAMPERING,
                "T1562.001",
                {"path": str(self.config_path), "reason": check.reason},
            )
        ]

    # --- responses -------------------------------------------------------------------------
    def handle(self, surface: str, findings: list[Finding], why: str) -> list[Finding]:
        """Respond to the findings not seen in the last look at this surface."""
        keys = {_key(f) for f in findings}
        before = self.active.get(surface, set())
        self.active[surface] = keys
        new = [f for f in findings if _key(f) not in before]
        for finding in new:
            self.respond(finding, why)
        if self.server is not None:  # one message for the look, not one per finding
            quiet = (Disposition.EXPLAINED, Disposition.ALLOWED)
            self.server.findings(f for f in new if f.disposition not in quiet)
        return findings

    def respond(self, finding: Finding, why: str) -> None:
        event: dict[str, Any] = {"event": "finding", "why": why, "finding": finding_json(finding)}
        if why.startswith("trigger:"):
            event["woken_by"] = self.woken_by
        actions = self.config.responses_for(finding.severity)
        if finding.surface == "guard":  # the guard's own integrity: every sink, always
            actions = tuple(dict.fromkeys(("log", "alert", *actions)))
        if finding.disposition in (Disposition.EXPLAINED, Disposition.ALLOWED):
            actions = tuple(a for a in actions if a == "log")  # shown, never acted on
        if "log" in actions:
            self.log.send(event)
        if "alert" in actions:
            for sink in self.alerts:
                sink.send(event)
        if "contain" in actions:
            result = contain(finding, self.records.get(finding.surface, ()))
            self.log.send(
                {
                    "event": "contain",
                    "subject": finding.subject,
                    "done": result.done,
                    "not_done": result.not_done,
                }
            )
        if "bugcheck" in actions:
            report = bugcheck(
                [event["finding"]], self.config.spool.parent, self.config.bugcheck_dry_run
            )
            self.log.send(
                {
                    "event": "bugcheck",
                    "report": str(report),
                    "dry_run": self.config.bugcheck_dry_run,
                }
            )


def main(config_path: Path | None, out: IO[str] = sys.stdout) -> int:
    from patchguard.guard.supervisor import Supervisor

    # No bytecode written by the guard: every file of its code is pinned at start, and a cache
    # file appearing later is reported, not explained away.
    sys.dont_write_bytecode = True
    fix_mmap_threshold()  # before the first sweep allocates (heap.py)
    ledger.READ_LOCK_WAIT = ledger.WRITE_LOCK_WAIT = LOCK_WAIT
    config = load_config(config_path) if config_path is not None else GuardConfig()
    return Supervisor(config, config_path, out).run()
