"""The baseline file: a signed zip of kernel memory regions, their page hashes and the boot.

Format `patchguard.baseline/2` is a zip archive with these members:

`manifest.json` (stored), UTF-8 JSON, one object:
    format      "patchguard.baseline/2"
    meta        the BaselineMeta fields: boot_id, kernel_release, kaslr_offset (int),
                created_at (ISO 8601 UTC), host, reader ("ebpf"/"kcore"), patchguard_version
    regions     list, in order, of {name, start (hex string, "0xffffffff81000000": kernel
                addresses do not fit a JSON reader's 2**53), size (bytes), sha256 (hex of the
                whole data), page_sha256 (hex of each 4 KiB page from start, last one short),
                stored {encoding "zlib", size, sha256 of the stored zlib stream}}
    sites       {size, sha256} of the member sites.json
    summary     small JSON-able facts every check uses, as given (integrity/check.py: how
                syscalls are dispatched; module_structs, where each module's struct was)
    signer      {public_key (raw ed25519, hex), fingerprint (16 hex of its sha256)}
`regions/<name>.zlib` (stored), each region's bytes as a zlib stream (level 1); names are
    [A-Za-z0-9_.-], not starting with a dot. The manifest signs the stored stream's hash, so
    every byte of the file is verified by read_manifest without decompressing anything.
`sites.json` (stored), UTF-8 JSON: the facts about patch sites, as given (tuples come back as
    lists). Apart from the manifest (format /1 kept them in it) because parsing them is most
    of what an unchanged `check` would spend on the baseline, and it needs them only when a
    page of text changed.
`manifest.sig` (stored), the 64-byte ed25519 signature of the exact bytes of manifest.json.

Only the manifest is signed; it carries the sha256 of every region and of the sites, so the
signature covers them too. A loader reads nothing from the file as fact before the signature
verifies against the key it was given: the format name and signer it peeks at before that only
pick the error message. Region data is only decompressed up to the size the signed manifest gives.

Files are written atomically (a temporary file in the same directory, fsync, rename over the
final name, fsync the directory), mode 0600; a failure removes the temporary file and leaves
any previous baseline as it was. Member timestamps are fixed, so the same baseline and key
give the same bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import re
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import IO, NoReturn

from patchguard.integrity.baseline import PAGE, Baseline, BaselineMeta, Region, page_hashes
from patchguard.safe_read import InputError, open_regular
from patchguard.signing import HostKey, fingerprint_of, verify_signature

FORMAT = "patchguard.baseline/2"
MANIFEST = "manifest.json"
SITES = "sites.json"
SIGNATURE = "manifest.sig"
REGION_DIR = "regions/"
REGION_LEVEL = 1  # deflate level: ~19 MB of kernel text in well under a second
MAX_MANIFEST = 64 * 1024 * 1024  # ~67 bytes of page hash per 4 KiB page: 64 MiB is ~4 GB
MAX_SIGNATURE = 4096
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

_REGION_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_META_FIELDS: dict[str, type] = {
    "boot_id": str,
    "kernel_release": str,
    "kaslr_offset": int,
    "created_at": str,
    "host": str,
    "reader": str,
    "patchguard_version": str,
}


class BaselineError(Exception):
    """The baseline cannot be used: str() is one line, `<path>: <what is wrong>`."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason


@dataclass(frozen=True)
class RegionEntry:
    """What the signed manifest says about one region (its data stays in the zip)."""

    name: str
    start: int
    size: int
    sha256: str
    page_sha256: tuple[str, ...]
    stored_size: int  # the zlib stream as stored in the zip
    stored_sha256: str

    @property
    def member(self) -> str:
        return f"{REGION_DIR}{self.name}.zlib"

    @cached_property
    def page_digests(self) -> bytes:
        """The page hashes as raw 32-byte digests, back to back: `check` compares each page's
        digest() with a slice of this, which is cheaper than formatting hex per page."""
        return bytes.fromhex("".join(self.page_sha256))


@dataclass(frozen=True)
class SitesEntry:
    """What the signed manifest says about the sites member."""

    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """A verified manifest: everything in the baseline except the region bytes and the sites,
    which are read from `path` (and checked against it) when first asked for."""

    path: Path
    meta: BaselineMeta
    regions: Mapping[str, RegionEntry]
    sites_entry: SitesEntry
    summary: Mapping[str, object]
    signer_fingerprint: str

    @cached_property
    def sites(self) -> Mapping[str, object]:
        with _open_zip(self.path) as zf:
            return _read_sites(self.path, zf, self.sites_entry)


# ---------------------------------------------------------------------------- saving


def _sites_bytes(baseline: Baseline) -> bytes:
    try:
        text = json.dumps(baseline.sites, separators=(",", ":"), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"baseline sites are not JSON: {exc}") from exc
    return text.encode()


def _manifest_bytes(
    baseline: Baseline, key: HostKey, packed: Mapping[str, bytes], sites: bytes
) -> bytes:
    regions = []
    for name, region in baseline.regions.items():
        if name != region.name:
            raise ValueError(f"region {region.name!r} is filed under the name {name!r}")
        if not _REGION_NAME.match(name):
            raise ValueError(f"region name {name!r}: use letters, digits, '_', '-' and '.'")
        if region.page_sha256 != page_hashes(region.data):
            raise ValueError(f"region {name}: page_sha256 does not match its data")
        regions.append(
            {
                "name": name,
                "start": f"{region.start:#x}",
                "size": len(region.data),
                "sha256": hashlib.sha256(region.data).hexdigest(),
                "page_sha256": list(region.page_sha256),
                "stored": {
                    "encoding": "zlib",
                    "size": len(packed[name]),
                    "sha256": hashlib.sha256(packed[name]).hexdigest(),
                },
            }
        )
    manifest = {
        "format": FORMAT,
        "meta": asdict(baseline.meta),
        "regions": regions,
        "sites": {"size": len(sites), "sha256": hashlib.sha256(sites).hexdigest()},
        "summary": baseline.summary,
        "signer": {"public_key": key.public_key_bytes().hex(), "fingerprint": key.fingerprint()},
    }
    try:
        text = json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"baseline summary or meta are not JSON: {exc}") from exc
    return (text + "\n").encode()


def _member(name: str, compress: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=ZIP_EPOCH)
    info.compress_type = compress
    info.external_attr = 0o600 << 16
    return info


def _write_zip(
    out: IO[bytes], packed: Mapping[str, bytes], manifest: bytes, sites: bytes, signature: bytes
) -> None:
    with zipfile.ZipFile(out, "w") as zf:
        # Stored, not deflated: check reads it every time, and page hashes barely compress.
        zf.writestr(_member(MANIFEST, zipfile.ZIP_STORED), manifest)
        zf.writestr(_member(SITES, zipfile.ZIP_STORED), sites)
        for name, stream in packed.items():
            zf.writestr(_member(f"{REGION_DIR}{name}.zlib", zipfile.ZIP_STORED), stream)
        zf.writestr(_member(SIGNATURE, zipfile.ZIP_STORED), signature)


def _why(exc: OSError) -> str:
    name = errno.errorcode.get(exc.errno, str(exc.errno)) if exc.errno is not None else None
    text = (exc.strerror or str(exc)).lower()
    return f"{text} ({name})" if name else text


def save_baseline(baseline: Baseline, path: Path, key: HostKey) -> None:
    """Sign and write `baseline` to `path` atomically, mode 0600.

    ValueError if the baseline itself is inconsistent (region names, page hashes, sites or
    summary not JSON); BaselineError if the file cannot be written. Either way no temporary
    file stays behind and a previous baseline at `path` is untouched.
    """
    # Regions are compressed here and stored as they are, so the signed manifest can carry
    # the hash of the stored bytes: `check` verifies every byte of the file without
    # decompressing 19 MB, and decompresses a region only when a page of it changed.
    packed = {name: zlib.compress(r.data, REGION_LEVEL) for name, r in baseline.regions.items()}
    sites = _sites_bytes(baseline)
    manifest = _manifest_bytes(baseline, key, packed, sites)
    signature = key.sign(manifest)
    archive = io.BytesIO()
    _write_zip(archive, packed, manifest, sites, signature)
    from patchguard.atomic import write_atomic  # only a baseline's writer: check reads

    try:
        write_atomic(path, archive.getvalue(), 0o600)
    except OSError as exc:
        raise BaselineError(path, f"cannot write the baseline: {_why(exc)}") from exc


# ---------------------------------------------------------------------------- loading

_NOT_A_BASELINE = "truncated or not a patchguard baseline"
_CORRUPT_MEMBER = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
)


@contextlib.contextmanager
def _open_zip(path: Path) -> Iterator[zipfile.ZipFile]:
    """The baseline as a zip: a regular file of at most 4 GiB (no FIFO, no /dev/zero)."""
    try:
        file = open_regular(path, "baseline")
    except InputError as exc:
        raise BaselineError(path, f"cannot read the baseline: {exc.reason}") from None
    with file:
        try:
            zf = zipfile.ZipFile(file)
        except OSError as exc:
            raise BaselineError(path, f"cannot read the baseline: {_why(exc)}") from exc
        except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError) as exc:
            raise BaselineError(path, f"{_NOT_A_BASELINE} ({exc})") from exc
        with zf:
            yield zf


@contextlib.contextmanager
def _member_errors(path: Path, name: str) -> Iterator[None]:
    """Reading member `name` of the zip: what can go wrong, said as one BaselineError."""
    try:
        yield
    except KeyError:
        raise BaselineError(path, f"missing member {name}: {_NOT_A_BASELINE}") from None
    except OSError as exc:
        raise BaselineError(path, f"cannot read member {name}: {_why(exc)}") from exc
    except _CORRUPT_MEMBER as exc:
        raise BaselineError(path, f"member {name} is corrupt: {exc}") from exc


def _read_member(path: Path, zf: zipfile.ZipFile, name: str, limit: int) -> bytes:
    """At most `limit` + 1 bytes of a member (so a caller can tell 'too long')."""
    with _member_errors(path, name), zf.open(name) as member:
        return member.read(limit + 1)


def _peek(manifest_bytes: bytes) -> dict[str, object]:
    """Parse the manifest, before it is verified, only to choose an error message."""
    try:
        parsed = json.loads(manifest_bytes)
    except (ValueError, RecursionError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _signer_of(peeked: Mapping[str, object]) -> bytes | None:
    signer = peeked.get("signer")
    if isinstance(signer, dict) and isinstance(signer.get("public_key"), str):
        try:
            raw = bytes.fromhex(signer["public_key"])
        except ValueError:
            return None
        return raw if len(raw) == 32 else None
    return None


def _verify(path: Path, manifest_bytes: bytes, signature: bytes, public_key: bytes) -> None:
    if verify_signature(public_key, manifest_bytes, signature):
        return
    expected = fingerprint_of(public_key)
    claimed = _signer_of(_peek(manifest_bytes))
    if claimed is None:
        why = f"the manifest was changed, or signed by another key (expected {expected})"
    elif claimed != public_key and verify_signature(claimed, manifest_bytes, signature):
        why = f"signed by another key (fingerprint {fingerprint_of(claimed)}, expected {expected})"
    elif claimed == public_key:
        why = f"the manifest was changed after it was signed (by key {expected})"
    else:
        why = (
            "the manifest was changed, or signed by another key "
            f"(fingerprint {fingerprint_of(claimed)}, expected {expected})"
        )
    raise BaselineError(path, f"signature does not match: {why}")


def _malformed(path: Path, what: str) -> NoReturn:
    raise BaselineError(path, f"signed manifest is malformed: {what}")


def _parse_meta(path: Path, raw: object) -> BaselineMeta:
    if not isinstance(raw, dict):
        _malformed(path, "meta is not an object")
    values: dict[str, object] = {}
    for field, kind in _META_FIELDS.items():
        value = raw.get(field)
        if not isinstance(value, kind) or isinstance(value, bool):
            _malformed(path, f"meta.{field} is not a {kind.__name__}")
        values[field] = value
    return BaselineMeta(**values)  # type: ignore[arg-type]  # checked field by field above


def _all_sha256_hex(values: list[object]) -> bool:
    """Every value a 64-digit hex string; checked in bulk (a baseline of core text has ~4,700
    of them and `check` reads them every time)."""
    if not values:
        return True
    if set(map(type, values)) != {str} or set(map(len, values)) != {64}:  # type: ignore[arg-type]
        return False
    try:  # fromhex skips spaces: the length of what it decodes tells if there were any
        return len(bytes.fromhex("".join(values))) == 32 * len(values)  # type: ignore[arg-type]
    except ValueError:
        return False


def _byte_count(path: Path, value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        _malformed(path, f"{what} is not a byte count")
    return value


def _sha256_hex(path: Path, value: object, what: str) -> str:
    if not isinstance(value, str) or not _HEX64.match(value):
        _malformed(path, f"{what} is not a SHA-256 hex digest")
    return value


def _matches(data: bytes, size: int, sha256: str) -> bool:
    """Whether `data` is what the signed manifest describes: that many bytes, that SHA-256."""
    return len(data) == size and hashlib.sha256(data).hexdigest() == sha256


def _parse_region(path: Path, raw: object) -> RegionEntry:
    if not isinstance(raw, dict):
        _malformed(path, "a region entry is not an object")
    name = raw.get("name")
    if not isinstance(name, str) or not _REGION_NAME.match(name):
        _malformed(path, f"region name {name!r} is not a valid name")
    start, size, digest, pages = (raw.get(k) for k in ("start", "size", "sha256", "page_sha256"))
    if not isinstance(start, str) or not start.startswith("0x"):
        _malformed(path, f"region {name}: start is not a hex address")
    try:
        start_address = int(start[:20], 16) if len(start) <= 18 else -1  # 0x + 16 digits
    except ValueError:
        start_address = -1
    if not 0 <= start_address < 1 << 64:
        _malformed(path, f"region {name}: start {start[:40]!r} is not a 64-bit hex address")
    size = _byte_count(path, size, f"region {name}: size")
    digest = _sha256_hex(path, digest, f"region {name}: sha256")
    if not isinstance(pages, list) or not _all_sha256_hex(pages):
        _malformed(path, f"region {name}: page_sha256 is not a list of SHA-256 hex digests")
    if len(pages) != -(-size // PAGE):
        _malformed(path, f"region {name}: {len(pages)} page hashes for {size} bytes")
    stored = raw.get("stored")
    if not isinstance(stored, dict) or stored.get("encoding") != "zlib":
        _malformed(path, f"region {name}: stored is not a zlib stream description")
    stored_size = _byte_count(path, stored.get("size"), f"region {name}: stored.size")
    stored_digest = _sha256_hex(path, stored.get("sha256"), f"region {name}: stored.sha256")
    return RegionEntry(name, start_address, size, digest, tuple(pages), stored_size, stored_digest)


def _parse_manifest(path: Path, parsed: dict[str, object], public_key: bytes) -> Manifest:
    meta = _parse_meta(path, parsed.get("meta"))
    raw_regions = parsed.get("regions")
    if not isinstance(raw_regions, list):
        _malformed(path, "regions is not a list")
    regions: dict[str, RegionEntry] = {}
    for raw in raw_regions:
        entry = _parse_region(path, raw)
        if entry.name in regions:
            _malformed(path, f"region {entry.name} is listed twice")
        regions[entry.name] = entry
    sites = parsed.get("sites")
    if not isinstance(sites, dict):
        _malformed(path, "sites is not an object")
    size = _byte_count(path, sites.get("size"), "sites.size")
    digest = _sha256_hex(path, sites.get("sha256"), "sites.sha256")
    summary = parsed.get("summary")
    if not isinstance(summary, dict):
        _malformed(path, "summary is not an object")
    if _signer_of(parsed) != public_key:
        _malformed(path, "the signer it names is not the key that signed it")
    sites_entry = SitesEntry(size, digest)
    return Manifest(path, meta, regions, sites_entry, summary, fingerprint_of(public_key))


def _sites_member(path: Path, zf: zipfile.ZipFile, entry: SitesEntry) -> bytes:
    """The bytes of the sites member, checked against the signed manifest."""
    raw = _read_member(path, zf, SITES, entry.size)
    if not _matches(raw, entry.size, entry.sha256):
        raise BaselineError(
            path, f"{SITES} does not match its manifest (changed after it was signed)"
        )
    return raw


def _read_sites(path: Path, zf: zipfile.ZipFile, entry: SitesEntry) -> dict[str, object]:
    """The sites, checked against the signed manifest before they are parsed."""
    raw = _sites_member(path, zf, entry)
    try:
        sites = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise BaselineError(path, f"{SITES} is not JSON: {exc}") from exc
    if not isinstance(sites, dict):
        raise BaselineError(path, f"{SITES} is not a JSON object")
    return sites


def _read_verified_manifest(path: Path, zf: zipfile.ZipFile, public_key: bytes) -> Manifest:
    manifest_bytes = _read_member(path, zf, MANIFEST, MAX_MANIFEST)
    if len(manifest_bytes) > MAX_MANIFEST:
        raise BaselineError(path, f"{MANIFEST} is larger than {MAX_MANIFEST >> 20} MiB")
    peeked = _peek(manifest_bytes)
    if not peeked:
        raise BaselineError(path, f"{MANIFEST} is not a JSON object: {_NOT_A_BASELINE}")
    if peeked.get("format") != FORMAT:
        found = peeked.get("format")
        what = f"unknown format {found!r}" if isinstance(found, str) else "no format name"
        raise BaselineError(path, f"{what} (this patchguard reads {FORMAT})")
    if SIGNATURE not in zf.namelist():
        raise BaselineError(path, f"signature missing: no {SIGNATURE}; the baseline is unsigned")
    signature = _read_member(path, zf, SIGNATURE, MAX_SIGNATURE)
    _verify(path, manifest_bytes, signature, public_key)
    # Verified: these are the bytes that were signed, so what was peeked can now be trusted.
    return _parse_manifest(path, peeked, public_key)


def _differing_pages(expected: tuple[str, ...], actual: tuple[str, ...]) -> list[int]:
    return [i for i, (a, b) in enumerate(zip(expected, actual, strict=False)) if a != b]


def _pages_text(pages: list[int]) -> str:
    if len(pages) == 1:
        return f"page {pages[0]} differs"
    shown = ", ".join(str(p) for p in pages[:5])
    more = f" and {len(pages) - 5} more" if len(pages) > 5 else ""
    return f"pages {shown}{more} differ"


def _read_stored(path: Path, zf: zipfile.ZipFile, entry: RegionEntry) -> bytes:
    """A region's stored zlib stream, checked against the signed manifest: one hash, no
    decompression. A flipped byte anywhere in it is found here."""
    stored = _read_member(path, zf, entry.member, entry.stored_size)
    if not _matches(stored, entry.stored_size, entry.stored_sha256):
        raise BaselineError(path, _stored_changed(entry))
    return stored


def _stored_changed(entry: RegionEntry) -> str:
    return (
        f"region {entry.name}: stored data does not match its manifest "
        "(changed after it was signed)"
    )


def _read_region_data(path: Path, zf: zipfile.ZipFile, entry: RegionEntry) -> bytes:
    stored = _read_stored(path, zf, entry)
    try:
        data = zlib.decompressobj().decompress(stored, entry.size + 1)
    except zlib.error as exc:
        raise BaselineError(path, f"region {entry.name}: stored data is corrupt: {exc}") from exc
    if len(data) != entry.size:
        longer = "more than" if len(data) > entry.size else f"{len(data)} bytes, not"
        raise BaselineError(
            path, f"region {entry.name}: data is {longer} the {entry.size} bytes its manifest says"
        )
    actual_pages = page_hashes(data)
    if hashlib.sha256(data).hexdigest() != entry.sha256:
        differ = _differing_pages(entry.page_sha256, actual_pages)
        pages = f" ({_pages_text(differ)})" if differ else ""
        raise BaselineError(path, f"region {entry.name}: data does not match its manifest{pages}")
    if actual_pages != entry.page_sha256:
        differ = _differing_pages(entry.page_sha256, actual_pages)
        raise BaselineError(
            path,
            f"region {entry.name}: its manifest's page hashes do not match its data "
            f"({_pages_text(differ)})",
        )
    return data


def read_manifest(path: Path, public_key: bytes, stored: bool = True) -> Manifest:
    """Verify the signature and (unless `stored` is False, for a caller that runs
    verify_stored itself, say beside other work) the stored bytes of every region and of
    the sites; return
    meta, page hashes and sites. Region data stays packed (decompressed only by read_region)."""
    with _open_zip(path) as zf:
        manifest = _read_verified_manifest(path, zf, public_key)
        if stored:
            _verify_stored(path, zf, manifest)
        return manifest


FileStamp = tuple[int, int, int, int, int]


def file_stamp(path: Path) -> FileStamp | None:
    """What tells a file apart from the one read before without reading it: device, inode,
    size, modification and change times (the kernel sets ctime to the clock's time on every
    change; no call sets it). None where it cannot be stat'ed."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def verify_stored(path: Path, manifest: Manifest) -> None:
    """Hash every region's stored stream against the verified manifest (BaselineError if one
    was changed after signing); nothing is decompressed."""
    with _open_zip(path) as zf:
        _verify_stored(path, zf, manifest)


def _verify_stored(path: Path, zf: zipfile.ZipFile, manifest: Manifest) -> None:
    for entry in manifest.regions.values():
        _hash_stored(path, zf, entry)
    _sites_member(path, zf, manifest.sites_entry)


# 1 MiB: the kernel-read thread waited ~4 ms for the GIL when the whole stream was copied at
# once, ~2 ms with 256 KiB chunks (more handoffs), under 1 ms with 1 MiB (bench/check).
STREAM_CHUNK = 1 << 20


def _hash_stored(path: Path, zf: zipfile.ZipFile, entry: RegionEntry) -> None:
    """_read_stored without keeping the bytes: read and hashed in chunks, so that `check`, which
    runs this beside its kernel reads, does not keep them waiting for the GIL (reading, CRC and
    SHA-256 release it; copying megabytes at once does not)."""
    digest, size = hashlib.sha256(), 0
    with _member_errors(path, entry.member), zf.open(entry.member) as member:
        while size <= entry.stored_size and (chunk := member.read(STREAM_CHUNK)):
            digest.update(chunk)
            size += len(chunk)
    if size != entry.stored_size or digest.hexdigest() != entry.stored_sha256:
        raise BaselineError(path, _stored_changed(entry))


def read_region(path: Path, name: str, manifest: Manifest) -> bytes:
    """One region's bytes, checked against `manifest` (from read_manifest on the same file).

    The manifest is passed in, not re-read, so the bytes are checked against hashes whose
    signature was verified; a file replaced since then fails that check.
    """
    entry = manifest.regions.get(name)
    if entry is None:
        known = ", ".join(manifest.regions) or "none"
        raise BaselineError(path, f"no region {name} in this baseline (it has: {known})")
    with _open_zip(path) as zf:
        return _read_region_data(path, zf, entry)


def load_baseline(path: Path, public_key: bytes) -> Baseline:
    """Read and verify the whole baseline: signature, then every region against the manifest."""
    with _open_zip(path) as zf:
        manifest = _read_verified_manifest(path, zf, public_key)
        regions = {
            name: Region(name, entry.start, _read_region_data(path, zf, entry), entry.page_sha256)
            for name, entry in manifest.regions.items()
        }
    return Baseline(manifest.meta, regions, manifest.sites, manifest.summary)


def check_boot(
    baseline: Baseline | Manifest,
    boot_id: str,
    kernel_release: str,
    path: Path | str = "baseline",
) -> None:
    """BaselineError unless the baseline was taken on this kernel release and this boot."""
    meta = baseline.meta
    if meta.kernel_release != kernel_release:
        raise BaselineError(
            path,
            f"taken on another kernel: baseline kernel {meta.kernel_release}, running "
            f"{kernel_release}; take a new baseline on this kernel",
        )
    if meta.boot_id != boot_id:
        raise BaselineError(
            path,
            f"taken in another boot: baseline boot_id {meta.boot_id}, this boot {boot_id} "
            "(addresses and patched sites change at every boot); take a new baseline",
        )
