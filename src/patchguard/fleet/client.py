"""The host's side of the fleet: its enrolment (the pinned server key), its sequence
numbers, and the spool its messages wait in until the server has them.

Files, in the state directory (`/var/lib/patchguard` unless `PATCHGUARD_STATE_DIR`):
`fleet.json` (the server's URL and pinned key, this host's fingerprint, the ledger root key;
written atomically), `fleet.seq` (the last sequence number given out), `fleet.lock` (held while
a number is given out and its message spooled, and while the spool is sent, so two
processes never send out of order), `fleet-spool/` (messages not yet delivered, reusing the
guard's `Spool`), `fleet-rejected/` (messages the server refused for good, with the reason
beside each), `fleet-ledger.json` (the last exception ledger that verified).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from patchguard.atomic import sync, write_atomic
from patchguard.fleet.wire import Message, check_document, enrol_proof, envelope
from patchguard.guard.sinks import Spool
from patchguard.signing import HostKey

STATE_ENV = "PATCHGUARD_STATE_DIR"
DEFAULT_STATE = Path("/var/lib/patchguard")
MAX_ANSWER = 64 * 1024 * 1024  # bytes read from the server (the ledger can be large)
TIMEOUT = 10.0


class FleetError(Exception):
    """Enrolment or delivery cannot go on; str() is one line."""


def state_dir(given: Path | None = None) -> Path:
    return given or Path(os.environ.get(STATE_ENV) or DEFAULT_STATE)


@dataclass(frozen=True)
class Enrolment:
    server: str  # base URL, no trailing slash
    server_key: str  # hex: pinned at enrolment
    host: str  # this host's fingerprint
    ledger_root: str | None = None  # fingerprint that must sign ledger entry 1

    def save(self, directory: Path) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"
        write_atomic(directory / "fleet.json", text.encode(), 0o600)

    @classmethod
    def load(cls, directory: Path) -> Enrolment:
        path = directory / "fleet.json"
        try:
            data = json.loads(path.read_bytes()[:65536])
            return cls(**data)
        except FileNotFoundError:
            raise FleetError(
                f"{path}: not enrolled (run `patchguard enrol URL --token T`)"
            ) from None
        except (OSError, ValueError, TypeError) as exc:
            raise FleetError(f"{path}: unreadable enrolment: {exc}") from None


@dataclass(frozen=True)
class Answer:
    status: int
    data: dict[str, Any]

    @property
    def error(self) -> str:
        return str(self.data.get("error", f"HTTP {self.status}"))


def request(url: str, body: bytes | None = None, token: str | None = None) -> Answer:
    """One HTTP call; OSError (URLError is one) when the server cannot be reached."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    call = urllib.request.Request(url, data=body, headers=headers)
    try:
        with urllib.request.urlopen(call, timeout=TIMEOUT) as response:
            return Answer(response.status, _json(response.read(MAX_ANSWER + 1)))
    except urllib.error.HTTPError as exc:
        with exc:
            return Answer(exc.code, _json(exc.read(MAX_ANSWER + 1)))


def _json(raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_ANSWER:
        return {"error": f"answer larger than {MAX_ANSWER} bytes"}
    try:
        data = json.loads(raw)
    except ValueError:
        return {"error": "the answer is not JSON"}
    return data if isinstance(data, dict) else {"error": "the answer is not a JSON object"}


def enrol(url: str, token: str, key: HostKey, name: str, directory: Path) -> Enrolment:
    """Register this host's key with the server and pin the key the server answers with."""
    base = url.rstrip("/")
    public = key.public_key_bytes().hex()
    body = {"name": name, "public_key": public, "proof": enrol_proof(name, public, key)}
    try:
        answer = request(f"{base}/api/v1/enrol", json.dumps(body).encode(), token)
    except OSError as exc:
        raise FleetError(f"{base}: cannot reach the server: {exc}") from None
    if answer.status != 200:
        raise FleetError(f"{base}: enrolment refused ({answer.status}): {answer.error}")
    server_key = _server_key(answer.data, base)
    document = check_document(answer.data, server_key)
    if document.get("host") != key.fingerprint():
        raise FleetError(f"{base}: the server enrolled {document.get('host')!r}, not this host")
    enrolment = Enrolment(base, server_key.hex(), key.fingerprint())
    with locked(directory):
        enrolment.save(directory)
        _raise_seq(directory, int(document.get("last_seq") or 0))
    return enrolment


def _server_key(data: Mapping[str, Any], base: str) -> bytes:
    document = data.get("document")
    raw = document.get("server_key") if isinstance(document, dict) else None
    try:
        key = bytes.fromhex(raw) if isinstance(raw, str) else b""
    except ValueError:
        key = b""
    if len(key) != 32:
        raise FleetError(f"{base}: the enrolment answer carries no ed25519 server key")
    return key


@contextlib.contextmanager
def locked(directory: Path, name: str = "fleet.lock") -> Iterator[None]:
    """Numbering (`fleet.lock`: the sequence file and the spool's names) and sending
    (`fleet-send.lock`: the spool sent in order by one sender) are locked apart, so a message
    is numbered and spooled while another process or thread is sending."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_seq(directory: Path) -> int:
    try:
        return int((directory / "fleet.seq").read_text()[:32].strip() or 0)
    except FileNotFoundError:
        return 0
    except ValueError as exc:
        raise FleetError(f"{directory / 'fleet.seq'}: not a number: {exc}") from None


def _raise_seq(directory: Path, at_least: int) -> None:
    """A host enrolled again (a new state directory) continues after what the server has."""
    if _read_seq(directory) < at_least:
        write_atomic(directory / "fleet.seq", f"{at_least}\n".encode(), 0o600)


def spool_of(directory: Path) -> Spool:
    return Spool(directory / "fleet-spool")


def queue(
    directory: Path, key: HostKey, kind: str, payload: Mapping[str, Any], **extra: Any
) -> int:
    """Number a new message, sign it and spool it, durably; its sequence number. The lock is
    held only while numbering and spooling, not while the disk syncs (up to 750 ms on a busy
    machine), which a guard's stop would otherwise wait behind, once per message queued."""
    enrolment = Enrolment.load(directory)
    with locked(directory):
        seq = _read_seq(directory) + 1
        message = Message(enrolment.host, seq, kind, payload, **extra)
        write_atomic(directory / "fleet.seq", f"{seq}\n".encode(), 0o600, durable=False)
        path = spool_of(directory).put(json.loads(envelope(message, key)), durable=False)
    sync(directory / "fleet.seq")
    with contextlib.suppress(FileNotFoundError):  # already sent: nothing left to keep
        sync(path)
    return seq


SENDING = "fleet-send.lock"


def send_last(
    directory: Path, key: HostKey, kind: str, payload: Mapping[str, Any], **extra: Any
) -> Delivery:
    """A message that must reach the server promptly (the guard's stop, within its 2 s):
    numbered, signed and spooled like any, but sent straight away when nothing waits before
    it, and only what was spooled before it is sent with it (what comes after waits for the
    next delivery). Nothing waits for the disk before it is sent: the sequence file and the
    spool file are made durable after, and only if still needed (the four fsyncs of a queued
    message took up to 750 ms on a busy machine)."""
    enrolment = Enrolment.load(directory)
    url = f"{enrolment.server.rstrip('/')}/api/v1/reports"
    with locked(directory, SENDING):
        with locked(directory):  # the number and the spool's order agree
            seq = _read_seq(directory) + 1
            body = envelope(Message(enrolment.host, seq, kind, payload, **extra), key)
            write_atomic(directory / "fleet.seq", f"{seq}\n".encode(), 0o600, durable=False)
            path = spool_of(directory).put(json.loads(body), durable=False)
        first = spool_of(directory).pending()[0] == path
        sent = first and _sent(url, body)
        sync(directory / "fleet.seq")
        if sent:
            path.unlink()
            return Delivery(1, len(spool_of(directory).pending()), (), None)
        sync(path)
    return deliver(directory, through=path)


def _sent(url: str, body: bytes) -> bool:
    """True if the server stored it (or had); else it goes to the spool and waits its turn."""
    try:
        return request(url, body).status == 200
    except OSError:
        return False


@dataclass(frozen=True)
class Delivery:
    sent: int
    pending: int
    rejected: tuple[str, ...]  # "000000000003.json: 409 sequence 3 is not after 5"
    unreachable: str | None  # why the rest waits, or None


def _reject(directory: Path, path: Path, reason: str) -> None:
    dead = directory / "fleet-rejected"
    dead.mkdir(mode=0o700, exist_ok=True)
    stem = f"{time.time_ns()}-{path.stem}"  # spool numbers start again once it is empty
    write_atomic(dead / f"{stem}.reason", reason.encode() + b"\n", 0o600)
    os.replace(path, dead / f"{stem}.json")


BATCH = 64  # messages per request (the server's MAX_BATCH)
BATCH_BYTES = 1024 * 1024  # request body; one larger message goes alone


def deliver(
    directory: Path,
    server: str | None = None,
    through: Path | None = None,
    going: Callable[[], bool] = lambda: True,
) -> Delivery:
    """Send the spool in order, in batches (one request and one server transaction for up
    to BATCH messages); stop at the first message the server cannot take now, after
    `through` (a spool file: what was queued after it waits), or when `going()` turns false
    between two batches (a guard stopping takes over the sending)."""
    enrolment = Enrolment.load(directory)
    url = f"{(server or enrolment.server).rstrip('/')}/api/v1/reports"
    sent, rejected, why = 0, list[str](), None
    with locked(directory, SENDING):
        spool = spool_of(directory)
        pending = [p for p in spool.pending() if through is None or p.name <= through.name]
        while pending and why is None and going():
            chunk = _batch(pending)
            done, why = _send_batch(directory, url, chunk, rejected)
            sent += done
            pending = pending[len(chunk) :]
        left = len(spool.pending())
    return Delivery(sent, left, tuple(rejected), why)


def _batch(pending: list[Path]) -> list[tuple[Path, bytes]]:
    chunk: list[tuple[Path, bytes]] = []
    size = 0
    for path in pending[:BATCH]:
        raw = path.read_bytes()
        if chunk and size + len(raw) > BATCH_BYTES:
            break
        chunk.append((path, raw))
        size += len(raw) + 1
    return chunk


def _send_batch(
    directory: Path, url: str, chunk: list[tuple[Path, bytes]], rejected: list[str]
) -> tuple[int, str | None]:
    """(messages stored, why the rest waits). A batch the server will not read as one (an
    unreadable spool file makes it malformed) goes one message at a time instead, so the bad
    one is set aside and the rest go."""
    body = b'{"messages":[' + b",".join(raw for _, raw in chunk) + b"]}"
    try:
        answer = request(f"{url}/batch", body)
    except OSError as exc:
        return 0, f"cannot reach {url}: {exc}"
    results = answer.data.get("results")
    if answer.status != 200 or not isinstance(results, list) or len(results) != len(chunk):
        if answer.status in (408, 429) or answer.status >= 500:
            return 0, f"{url}/batch: {answer.status} {answer.error}"
        return _send_each(directory, url, chunk, rejected)
    sent = 0
    for (path, _), result in zip(chunk, results, strict=True):
        status = result.get("status") if isinstance(result, dict) else None
        status = status if isinstance(status, int) else 500
        why = _settle(directory, path, Answer(status, result), rejected)
        if why is not None:
            return sent, f"{url}: {why}"
        sent += status == 200
    return sent, None


def _send_each(
    directory: Path, url: str, chunk: list[tuple[Path, bytes]], rejected: list[str]
) -> tuple[int, str | None]:
    sent = 0
    for path, raw in chunk:
        try:
            answer = request(url, raw)
        except OSError as exc:
            return sent, f"cannot reach {url}: {exc}"
        why = _settle(directory, path, answer, rejected)
        if why is not None:
            return sent, f"{url}: {why}"
        sent += answer.status == 200
    return sent, None


def _settle(directory: Path, path: Path, answer: Answer, rejected: list[str]) -> str | None:
    """Stored: gone from the spool; refused for good: set aside so the rest can go; else why
    it waits (the server is busy or failing: this and the rest are tried again later)."""
    if answer.status == 200:
        path.unlink()
        return None
    if answer.status in (408, 429) or answer.status >= 500:
        return f"{answer.status} {answer.error}"
    rejected.append(f"{path.name}: {answer.status} {answer.error}")
    _reject(directory, path, rejected[-1])
    return None


def baseline_digest(path: Path) -> str | None:
    """SHA-256 of the baseline file, or None when there is none."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        return None
    return digest.hexdigest()


def fetch_policy(directory: Path, server: str | None = None) -> dict[str, Any]:
    """The server's ledger export, signed by the pinned server key (not yet verified as a
    ledger: `fleet.policy` does that)."""
    enrolment = Enrolment.load(directory)
    url = f"{(server or enrolment.server).rstrip('/')}/api/v1/policy"
    try:
        answer = request(url)
    except OSError as exc:
        raise FleetError(f"cannot reach {url}: {exc}") from None
    if answer.status != 200:
        raise FleetError(f"{url}: {answer.status} {answer.error}")
    try:
        return check_document(answer.data, bytes.fromhex(enrolment.server_key))
    except ValueError as exc:
        raise FleetError(f"{url}: {exc}") from None
