"""Helpers for the witness gate tests: a ledger made a log with a vendor and an approver, three
witnesses that can be served over HTTP on 127.0.0.1, a published site, and the host's gate."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pytest

from patchguard.policy import exceptions as ops
from patchguard.policy.manifest import parse_manifest
from patchguard.policy.transparency import collect, note, publish
from patchguard.policy.transparency.gate import Gated, gate
from patchguard.policy.transparency.gate_config import GateSettings
from patchguard.policy.transparency.note import COSIGNATURE, Signer
from patchguard.policy.transparency.serve import serve
from patchguard.policy.transparency.witness import Witness
from patchguard.signing import HostKey
from support.tlog import Log, make_log

PIN = "/sys/fs/bpf/list_tasks"
MANIFEST = f"""\
vendor = "Debian (bpftool packaging)"
product = "bpftool pinned task list"
version = "7.1.0+6.1.192-3"
contact = "sre@example.invalid"
justification = "Lists every task."

[[bpf_program]]
name = "list_tasks"
prog_type = "tracing"
attach = ["bpf_iter_task", "task"]
helpers = ["bpf_seq_printf"]
pins = ["{PIN}"]
"""


@dataclass(frozen=True)
class World:
    log: Log
    vendor: HostKey
    approver: HostKey
    site: Path  # where `ledger publish` writes
    witnesses: tuple[Witness, ...]
    host_state: Path

    def settings(self, quorum: int = 2) -> GateSettings:
        keys = tuple(w.signer.verifier for w in self.witnesses)
        log_key = note.parse_vkey(self.log.vkey())
        return GateSettings(log_key, keys, quorum, str(self.site), self.host_state)

    def request(self) -> int:
        manifest = parse_manifest(MANIFEST.encode(), "bpftool.toml")
        expires = date.today() + timedelta(days=30)
        return ops.request_exception(self.log.path, self.vendor, manifest, expires).entry.seq

    def approve(self, seq: int) -> None:
        ops.decide(self.log.path, self.approver, seq, True, "reviewed")

    def publish(self) -> None:
        self.log.publish(self.site)

    def collect(self, *live: Witness) -> collect.Collected:
        with running(*live) as urls:
            return collect.collect(publish.load_log(self.log.path), self.site, urls)

    def gate(self, quorum: int = 2) -> Gated:
        return gate(self.log.path, self.settings(quorum))


def new_witness(state: Path, log: Log, name: str) -> Witness:
    signer = Signer(f"witness.example/{name}", COSIGNATURE, HostKey.generate())
    verifier = note.parse_vkey(log.vkey())
    return Witness(signer, ((verifier.name, verifier),), state / name)


@contextmanager
def running(*witnesses: Witness) -> Iterator[list[str]]:
    """Each witness served over HTTP on 127.0.0.1 (a free port), stopped on exit."""
    with ExitStack() as stack:
        urls = []
        for w in witnesses:
            server = serve(w, "127.0.0.1", 0)
            thread = threading.Thread(target=server.serve_forever, daemon=True)
            thread.start()
            stack.callback(thread.join)
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            urls.append(f"http://127.0.0.1:{server.server_address[1]}")
        yield urls


@pytest.fixture
def world(tmp_path: Path) -> World:
    owner = HostKey.load_or_create(tmp_path / "keys" / "owner.key")
    log = make_log(tmp_path / "ledger", owner, tmp_path / "keys" / "log.key", [])
    vendor, approver = HostKey.generate(), HostKey.generate()
    ops.grant_key(log.path, owner, vendor.public_key_bytes(), "Debian (bpftool packaging)", [])
    ops.grant_key(log.path, owner, approver.public_key_bytes(), "Security team", ["approve"])
    ws = tuple(new_witness(tmp_path / "witnesses", log, n) for n in ("w1", "w2", "w3"))
    return World(log, vendor, approver, tmp_path / "site", ws, tmp_path / "host")
