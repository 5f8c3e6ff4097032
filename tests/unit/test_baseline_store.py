"""The signed baseline file: round trip, atomic writes, and every way of tampering with it."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
import struct
import sys
import sysconfig
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from patchguard.integrity import store as baseline_store
from patchguard.integrity.baseline import PAGE, Baseline, BaselineMeta, Region, page_hashes
from patchguard.integrity.store import (
    FORMAT,
    BaselineError,
    check_boot,
    load_baseline,
    read_manifest,
    read_region,
    save_baseline,
)
from patchguard.signing import HostKey

TEXT_START = 0xFFFFFFFF81000000
BOOT_ID = "3f1c2a9e-5b7d-4e21-9c0a-1d2e3f4a5b6c"
RELEASE = "6.18.3-200.fc43.x86_64"


def real_bytes() -> bytes:
    """~512 KiB of machine code and data from the python binary (or libpython, where the
    binary is a small stub), cut to a size that is not a multiple of a page."""
    libdir, soname = sysconfig.get_config_var("LIBDIR"), sysconfig.get_config_var("INSTSONAME")
    candidates = [os.path.realpath(sys.executable)]
    if libdir and soname:
        candidates.append(os.path.join(libdir, soname))
    for candidate in candidates:
        if os.path.isfile(candidate) and os.path.getsize(candidate) >= 256 * 1024:
            with open(candidate, "rb") as f:
                data = f.read(512 * 1024)
            return data[: len(data) - 1000]
    raise AssertionError(
        f"no python binary of 256 KiB or more to stand in for kernel text: {candidates}"
    )


def make_region(name: str, start: int, data: bytes) -> Region:
    return Region(name, start, data, page_hashes(data))


def make_baseline(boot_id: str = BOOT_ID, release: str = RELEASE) -> Baseline:
    text = real_bytes()
    meta = BaselineMeta(
        boot_id=boot_id,
        kernel_release=release,
        kaslr_offset=0x1E000000,
        created_at="2025-01-02T03:04:05Z",
        host="build-7",
        reader="ebpf",
        patchguard_version="0.1.0",
    )
    regions = {
        "core_text": make_region("core_text", TEXT_START, text),
        "jump_table": make_region("jump_table", 0xFFFFFFFF83000000, text[-3000:]),
    }
    sites = {"jump_labels": [{"addr": "0xffffffff81001234", "len": 5, "nop": True}], "n": 2}
    summary = {"syscall_dispatch": {"functions": ["x64_sys_call"], "syscalls_mapped": 360}}
    return Baseline(meta, regions, sites, summary)


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    return make_baseline()


@pytest.fixture(scope="module")
def key() -> HostKey:
    return HostKey.generate()


@pytest.fixture
def saved(tmp_path: Path, baseline: Baseline, key: HostKey) -> Path:
    path = tmp_path / "baseline.pgb"
    save_baseline(baseline, path, key)
    return path


def members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def rewrite(path: Path, changes: dict[str, bytes | None]) -> None:
    """Rewrite the zip with members replaced (bytes) or removed (None), CRCs recomputed."""
    with zipfile.ZipFile(path) as zf:
        old = [(info, zf.read(info.filename)) for info in zf.infolist()]
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in old:
            new = changes.get(info.filename, data)
            if new is not None:
                zf.writestr(info, new)


def flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def error_text(err: pytest.ExceptionInfo[BaselineError], path: Path) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    assert text.startswith(f"{path}: "), text
    return text.removeprefix(f"{path}: ")


def manifest_of(path: Path) -> dict[str, object]:
    parsed = json.loads(members(path)["manifest.json"])
    assert isinstance(parsed, dict)
    return parsed


def region_entry(manifest: dict[str, object], name: str) -> dict[str, object]:
    regions = manifest["regions"]
    assert isinstance(regions, list)
    entry = next(r for r in regions if r["name"] == name)
    assert isinstance(entry, dict)
    return entry


def stored_of(stream: bytes) -> dict[str, object]:
    """The manifest's description of a stored region stream."""
    return {"encoding": "zlib", "size": len(stream), "sha256": hashlib.sha256(stream).hexdigest()}


def resign(
    path: Path, key: HostKey, changes: dict[str, bytes], edit: Callable[[dict[str, Any]], None]
) -> None:
    """Replace members and edit the manifest, then sign it again with `key`: what a writer
    with the key could produce, to reach the checks behind the signature."""
    manifest = manifest_of(path)
    edit(manifest)
    manifest_bytes = json.dumps(manifest).encode()
    rewrite(
        path, {**changes, "manifest.json": manifest_bytes, "manifest.sig": key.sign(manifest_bytes)}
    )


STORED_CHANGED = "region {}: stored data does not match its manifest (changed after it was signed)"


def tmp_leftovers(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")]


# ---------------------------------------------------------------------------- round trip


def test_round_trip(saved: Path, baseline: Baseline, key: HostKey) -> None:
    loaded = load_baseline(saved, key.public_key_bytes())
    assert loaded == baseline
    assert list(loaded.regions) == ["core_text", "jump_table"]
    text = loaded.regions["core_text"]
    assert text.start == TEXT_START
    assert len(text.data) % PAGE != 0  # the short last page went through too
    assert text.page_sha256 == page_hashes(baseline.regions["core_text"].data)


def test_file_layout(saved: Path, baseline: Baseline, key: HostKey) -> None:
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert tmp_leftovers(saved.parent) == []
    with zipfile.ZipFile(saved) as zf:
        infos = {i.filename: i for i in zf.infolist()}
        assert list(infos) == [
            "manifest.json",
            "sites.json",
            "regions/core_text.zlib",
            "regions/jump_table.zlib",
            "manifest.sig",
        ]
        for name in infos:
            assert infos[name].compress_type == zipfile.ZIP_STORED, name
        text = baseline.regions["core_text"].data
        stream = zf.read("regions/core_text.zlib")
        assert infos["regions/core_text.zlib"].compress_size == len(stream)  # stored as is
        assert len(stream) < len(text)  # compressed by the writer itself
        assert zlib.decompress(stream) == text
        jump_stream = zf.read("regions/jump_table.zlib")
        assert zlib.decompress(jump_stream) == baseline.regions["jump_table"].data
        manifest_bytes = zf.read("manifest.json")
        assert key.sign(manifest_bytes) == zf.read("manifest.sig")  # ed25519 is deterministic
        sites = zf.read("sites.json")
    manifest = json.loads(manifest_bytes)
    assert manifest["format"] == FORMAT == "patchguard.baseline/2"
    assert manifest["meta"]["boot_id"] == BOOT_ID
    assert manifest["signer"] == {
        "public_key": key.public_key_bytes().hex(),
        "fingerprint": key.fingerprint(),
    }
    entry = manifest["regions"][0]
    assert entry["name"] == "core_text"
    assert entry["start"] == "0xffffffff81000000"
    assert entry["size"] == len(text)
    assert entry["sha256"] == hashlib.sha256(text).hexdigest()
    assert entry["page_sha256"] == list(page_hashes(text))
    assert entry["stored"] == stored_of(stream)
    assert manifest["regions"][1]["stored"] == stored_of(jump_stream)
    assert json.loads(sites) == baseline.sites
    assert manifest["sites"] == {"size": len(sites), "sha256": hashlib.sha256(sites).hexdigest()}
    assert manifest["summary"] == baseline.summary


def test_same_baseline_same_bytes(tmp_path: Path, baseline: Baseline, key: HostKey) -> None:
    save_baseline(baseline, tmp_path / "a", key)
    save_baseline(baseline, tmp_path / "b", key)
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()


def test_overwrite_replaces_the_old_baseline(
    tmp_path: Path, baseline: Baseline, key: HostKey
) -> None:
    path = tmp_path / "baseline.pgb"
    save_baseline(make_baseline(boot_id="old-boot"), path, key)
    save_baseline(baseline, path, key)
    assert load_baseline(path, key.public_key_bytes()).meta.boot_id == BOOT_ID
    assert sorted(os.listdir(tmp_path)) == ["baseline.pgb"]


class Decompressed(Exception):
    """Raised by the spy when baseline_store decompresses or parses region data."""


def test_read_manifest_does_not_decompress_regions(
    saved: Path, baseline: Baseline, key: HostKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real_open = zipfile.ZipFile.open

    def spy(self: zipfile.ZipFile, name: str, *args: object, **kwargs: object) -> object:
        opened.append(name)
        return real_open(self, name, *args, **kwargs)  # type: ignore[arg-type]

    def refuse(*args: object, **kwargs: object) -> object:
        raise Decompressed

    class NoDecompression:
        """baseline_store's zlib, minus decompression (not zlib itself, which zipfile
        uses too)."""

        decompressobj = decompress = staticmethod(refuse)

        def __getattr__(self, name: str) -> object:
            return getattr(zlib, name)

    monkeypatch.setattr(zipfile.ZipFile, "open", spy)
    monkeypatch.setattr(baseline_store, "zlib", NoDecompression())
    monkeypatch.setattr(baseline_store, "page_hashes", refuse)
    manifest = read_manifest(saved, key.public_key_bytes())
    # the region members are opened, to hash the stored streams, and nothing is inflated
    assert opened == [
        "manifest.json",
        "manifest.sig",
        "regions/core_text.zlib",
        "regions/jump_table.zlib",
        "sites.json",
    ]
    assert manifest.meta == baseline.meta
    assert manifest.summary == baseline.summary
    opened.clear()
    assert manifest.sites == baseline.sites
    assert opened == ["sites.json"]  # read when asked for, not before
    assert manifest.signer_fingerprint == key.fingerprint()
    text = baseline.regions["core_text"]
    entry = manifest.regions["core_text"]
    assert (entry.start, entry.size) == (text.start, len(text.data))
    assert entry.page_sha256 == text.page_sha256
    assert entry.member == "regions/core_text.zlib"
    stream = members(saved)["regions/core_text.zlib"]
    assert (entry.stored_size, entry.stored_sha256) == (
        len(stream),
        hashlib.sha256(stream).hexdigest(),
    )
    with pytest.raises(Decompressed):  # the spy is on the path that decompresses
        read_region(saved, "jump_table", manifest)

    monkeypatch.setattr(baseline_store, "zlib", zlib)
    monkeypatch.setattr(baseline_store, "page_hashes", page_hashes)
    opened.clear()
    assert read_region(saved, "jump_table", manifest) == baseline.regions["jump_table"].data
    assert opened == ["regions/jump_table.zlib"]


def test_read_region_unknown_name(saved: Path, key: HostKey) -> None:
    manifest = read_manifest(saved, key.public_key_bytes())
    with pytest.raises(BaselineError) as err:
        read_region(saved, "rodata", manifest)
    assert error_text(err, saved) == (
        "no region rodata in this baseline (it has: core_text, jump_table)"
    )


def test_read_region_checks_against_the_verified_manifest(
    saved: Path, baseline: Baseline, key: HostKey
) -> None:
    """A file replaced after read_manifest, by one that is valid on its own, is refused."""
    manifest = read_manifest(saved, key.public_key_bytes())
    text = baseline.regions["core_text"]
    changed = make_region("core_text", text.start, flip(text.data, 3 * PAGE + 17))
    other = replace(baseline, regions={**baseline.regions, "core_text": changed})
    save_baseline(other, saved, key)
    assert load_baseline(saved, key.public_key_bytes()) == other  # fine by itself
    with pytest.raises(BaselineError) as err:
        read_region(saved, "core_text", manifest)
    assert error_text(err, saved) == STORED_CHANGED.format("core_text")
    # the unchanged region still reads against the old manifest
    assert read_region(saved, "jump_table", manifest) == baseline.regions["jump_table"].data


def test_read_region_checks_the_data_against_the_manifest(
    saved: Path, baseline: Baseline, key: HostKey
) -> None:
    """Behind the stored hash, the inflated data is checked against sha256 and page_sha256:
    reached with a manifest whose stored hash is right for a stream of other data."""
    text = baseline.regions["core_text"].data
    stream = zlib.compress(flip(text, 3 * PAGE + 17))
    manifest = read_manifest(saved, key.public_key_bytes())
    entry = replace(
        manifest.regions["core_text"],
        stored_size=len(stream),
        stored_sha256=hashlib.sha256(stream).hexdigest(),
    )
    forged = replace(manifest, regions={**manifest.regions, "core_text": entry})
    rewrite(saved, {"regions/core_text.zlib": stream})
    with pytest.raises(BaselineError) as err:
        read_region(saved, "core_text", forged)
    assert error_text(err, saved) == (
        "region core_text: data does not match its manifest (page 3 differs)"
    )


# ---------------------------------------------------------------------------- tampering


@pytest.mark.parametrize(
    "region,at", [("core_text", 5 * PAGE + 100), ("core_text", 0), ("jump_table", -1)]
)
def test_flipped_byte_in_region_data(saved: Path, key: HostKey, region: str, at: int) -> None:
    """A byte flipped in a stored stream (zip CRC recomputed) is found by read_manifest,
    without inflating anything, and the region is named."""
    member = f"regions/{region}.zlib"
    stream = members(saved)[member]
    rewrite(saved, {member: flip(stream, at % len(stream))})
    for load in (read_manifest, load_baseline):
        with pytest.raises(BaselineError) as err:
            load(saved, key.public_key_bytes())
        assert error_text(err, saved) == STORED_CHANGED.format(region)


def test_several_changed_pages_are_named(saved: Path, baseline: Baseline, key: HostKey) -> None:
    """Data that does not match its hashes behind a good signature (a writer bug): the
    differing pages are named."""
    text = baseline.regions["core_text"].data
    for page in (1, 2, 9, 10, 11, 40, 100):
        text = flip(text, page * PAGE)
    stream = zlib.compress(text, 1)

    def edit(manifest: dict[str, Any]) -> None:
        region_entry(manifest, "core_text")["stored"] = stored_of(stream)

    resign(saved, key, {"regions/core_text.zlib": stream}, edit)
    manifest = read_manifest(saved, key.public_key_bytes())  # stored bytes are as signed
    expected = (
        "region core_text: data does not match its manifest (pages 1, 2, 9, 10, 11 and 2 more "
        "differ)"
    )
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == expected
    with pytest.raises(BaselineError) as err:
        read_region(saved, "core_text", manifest)
    assert error_text(err, saved) == expected


def test_region_of_another_length(saved: Path, key: HostKey) -> None:
    stream = members(saved)["regions/jump_table.zlib"]
    jt = zlib.decompress(stream)
    assert len(jt) == 3000
    # a stored stream longer or shorter than signed
    for changed in (stream + b"\x00", stream[:-1]):
        rewrite(saved, {"regions/jump_table.zlib": changed})
        with pytest.raises(BaselineError) as err:
            read_manifest(saved, key.public_key_bytes())
        assert error_text(err, saved) == STORED_CHANGED.format("jump_table")
    # behind a good signature, a stream that inflates to more or fewer bytes than `size`
    cases = [
        (jt + b"\x90", "data is more than the 3000 bytes its manifest says"),
        (jt + bytes(50_000_000), "data is more than the 3000 bytes its manifest says"),
        (jt[:-8], "data is 2992 bytes, not the 3000 bytes its manifest says"),
    ]
    for data, message in cases:
        changed = zlib.compress(data, 1)

        def edit(manifest: dict[str, Any], changed: bytes = changed) -> None:
            region_entry(manifest, "jump_table")["stored"] = stored_of(changed)

        resign(saved, key, {"regions/jump_table.zlib": changed}, edit)
        manifest = read_manifest(saved, key.public_key_bytes())
        with pytest.raises(BaselineError) as err:
            load_baseline(saved, key.public_key_bytes())
        assert error_text(err, saved) == f"region jump_table: {message}"
        with pytest.raises(BaselineError) as err:
            read_region(saved, "jump_table", manifest)
        assert error_text(err, saved) == f"region jump_table: {message}"


def test_flipped_byte_on_disk_breaks_the_member(saved: Path, key: HostKey) -> None:
    """A byte flipped in the file itself, zip CRC not recomputed: read_manifest names the
    member."""
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("regions/core_text.zlib")
    raw = bytearray(saved.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, info.header_offset + 26)
    at = info.header_offset + 30 + name_len + extra_len + info.compress_size // 2
    raw[at] ^= 0x40
    saved.write_bytes(bytes(raw))
    for load in (read_manifest, load_baseline):
        with pytest.raises(BaselineError) as err:
            load(saved, key.public_key_bytes())
        assert error_text(err, saved) == (
            "member regions/core_text.zlib is corrupt: Bad CRC-32 for file 'regions/core_text.zlib'"
        )


def test_sites_changed_after_signing(saved: Path, key: HostKey) -> None:
    sites = members(saved)["sites.json"]
    rewrite(saved, {"sites.json": sites.replace(b'"n":2', b'"n":3')})
    public = key.public_key_bytes()
    for load in (read_manifest, load_baseline):
        with pytest.raises(BaselineError) as err:
            load(saved, public)
        assert error_text(err, saved) == (
            "sites.json does not match its manifest (changed after it was signed)"
        )
    manifest = read_manifest(saved, public, stored=False)  # as `check` reads it
    with pytest.raises(BaselineError) as err:
        _ = manifest.sites
    assert error_text(err, saved) == (
        "sites.json does not match its manifest (changed after it was signed)"
    )


def test_sites_member_missing(saved: Path, key: HostKey) -> None:
    rewrite(saved, {"sites.json": None})
    with pytest.raises(BaselineError) as err:
        read_manifest(saved, key.public_key_bytes())
    assert error_text(err, saved) == (
        "missing member sites.json: truncated or not a patchguard baseline"
    )


def test_signed_sites_that_are_not_an_object(saved: Path, key: HostKey) -> None:
    sites = b"[1, 2]"
    digest = hashlib.sha256(sites).hexdigest()

    def edit(manifest: dict[str, Any]) -> None:
        manifest["sites"] = {"size": len(sites), "sha256": digest}

    resign(saved, key, {"sites.json": sites}, edit)
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == "sites.json is not a JSON object"


def test_missing_region_member(saved: Path, key: HostKey) -> None:
    rewrite(saved, {"regions/jump_table.zlib": None})
    for load in (read_manifest, load_baseline):
        with pytest.raises(BaselineError) as err:
            load(saved, key.public_key_bytes())
        assert error_text(err, saved) == (
            "missing member regions/jump_table.zlib: truncated or not a patchguard baseline"
        )


def test_edited_manifest_fails_the_signature(saved: Path, key: HostKey) -> None:
    manifest = manifest_of(saved)
    manifest["meta"]["boot_id"] = "0" * 36  # type: ignore[index]
    rewrite(saved, {"manifest.json": json.dumps(manifest).encode()})
    for load in (load_baseline, read_manifest):
        with pytest.raises(BaselineError) as err:
            load(saved, key.public_key_bytes())
        assert error_text(err, saved) == (
            "signature does not match: the manifest was changed after it was signed "
            f"(by key {key.fingerprint()})"
        )


def test_region_hash_changed_with_the_data_fails_the_signature(
    saved: Path, baseline: Baseline, key: HostKey
) -> None:
    """Changing data and all its hashes in the manifest together still needs the key."""
    text = flip(baseline.regions["core_text"].data, 7)
    stream = zlib.compress(text, 1)
    manifest = manifest_of(saved)
    entry = region_entry(manifest, "core_text")
    entry["sha256"] = hashlib.sha256(text).hexdigest()
    entry["page_sha256"] = list(page_hashes(text))
    entry["stored"] = stored_of(stream)
    manifest_bytes = json.dumps(manifest).encode()
    rewrite(saved, {"regions/core_text.zlib": stream, "manifest.json": manifest_bytes})
    for load in (read_manifest, load_baseline):
        with pytest.raises(BaselineError) as err:
            load(saved, key.public_key_bytes())
        assert error_text(err, saved) == (
            "signature does not match: the manifest was changed after it was signed "
            f"(by key {key.fingerprint()})"
        )
    # the forgery is consistent in every other way: with the key, it loads
    rewrite(saved, {"manifest.sig": key.sign(manifest_bytes)})
    assert load_baseline(saved, key.public_key_bytes()).regions["core_text"].data == text


def test_stored_stream_replaced_by_another_valid_stream(
    saved: Path, baseline: Baseline, key: HostKey
) -> None:
    """Another valid zlib stream in place of a region, manifest untouched, is refused by
    read_manifest: even one that inflates to the very same data."""
    text = baseline.regions["core_text"].data
    original = members(saved)["regions/core_text.zlib"]
    for data, level in ((text, 9), (flip(text, 2 * PAGE + 5), 1)):
        stream = zlib.compress(data, level)
        assert stream != original and zlib.decompress(stream) == data
        rewrite(saved, {"regions/core_text.zlib": stream})
        for load in (read_manifest, load_baseline):
            with pytest.raises(BaselineError) as err:
                load(saved, key.public_key_bytes())
            assert error_text(err, saved) == STORED_CHANGED.format("core_text")


def test_signature_member_removed(saved: Path, key: HostKey) -> None:
    rewrite(saved, {"manifest.sig": None})
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == (
        "signature missing: no manifest.sig; the baseline is unsigned"
    )


def test_garbage_signature(saved: Path, key: HostKey) -> None:
    rewrite(saved, {"manifest.sig": b"\x00" * 64})
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved).startswith("signature does not match: ")


def test_signed_by_another_key(tmp_path: Path, baseline: Baseline, key: HostKey) -> None:
    other = HostKey.generate()
    path = tmp_path / "baseline.pgb"
    save_baseline(baseline, path, other)
    for load in (load_baseline, read_manifest):
        with pytest.raises(BaselineError) as err:
            load(path, key.public_key_bytes())
        assert error_text(err, path) == (
            f"signature does not match: signed by another key (fingerprint {other.fingerprint()}"
            f", expected {key.fingerprint()})"
        )


def test_resigned_by_another_key_claiming_ours(saved: Path, key: HostKey) -> None:
    """An attacker edits the manifest, keeps our public key in it and signs with theirs."""
    attacker = HostKey.generate()
    manifest = manifest_of(saved)
    manifest["meta"]["kernel_release"] = "6.6.6"  # type: ignore[index]
    manifest_bytes = json.dumps(manifest).encode()
    rewrite(saved, {"manifest.json": manifest_bytes, "manifest.sig": attacker.sign(manifest_bytes)})
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == (
        "signature does not match: the manifest was changed after it was signed "
        f"(by key {key.fingerprint()})"
    )


def test_manifest_page_hashes_that_do_not_match_the_data(saved: Path, key: HostKey) -> None:
    """Signed by the right key, whole-data hash right, one page hash wrong (a writer bug)."""
    manifest = manifest_of(saved)
    entry = manifest["regions"][0]  # type: ignore[index]
    entry["page_sha256"][4] = "0" * 64
    manifest_bytes = json.dumps(manifest).encode()
    rewrite(saved, {"manifest.json": manifest_bytes, "manifest.sig": key.sign(manifest_bytes)})
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == (
        "region core_text: its manifest's page hashes do not match its data (page 4 differs)"
    )


@pytest.mark.parametrize("cut", [0, 10, 1000, "half", -30, -1])
def test_truncated_file(saved: Path, key: HostKey, cut: int | str) -> None:
    raw = saved.read_bytes()
    size = len(raw) // 2 if cut == "half" else int(cut) % len(raw) if int(cut) < 0 else int(cut)
    saved.write_bytes(raw[:size])
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved).startswith("truncated or not a patchguard baseline")


def test_not_a_zip(tmp_path: Path, key: HostKey) -> None:
    path = tmp_path / "baseline.pgb"
    path.write_text("core_text 0xffffffff81000000\n")
    with pytest.raises(BaselineError) as err:
        read_manifest(path, key.public_key_bytes())
    assert error_text(err, path) == (
        "truncated or not a patchguard baseline (File is not a zip file)"
    )


def test_zip_without_manifest(tmp_path: Path, key: HostKey) -> None:
    path = tmp_path / "baseline.pgb"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("notes.txt", "hello")
    with pytest.raises(BaselineError) as err:
        load_baseline(path, key.public_key_bytes())
    assert error_text(err, path) == (
        "missing member manifest.json: truncated or not a patchguard baseline"
    )


def test_unknown_format(saved: Path, key: HostKey) -> None:
    manifest = manifest_of(saved)
    manifest["format"] = "patchguard.baseline/1"
    manifest_bytes = json.dumps(manifest).encode()
    rewrite(saved, {"manifest.json": manifest_bytes, "manifest.sig": key.sign(manifest_bytes)})
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == (
        "unknown format 'patchguard.baseline/1' (this patchguard reads patchguard.baseline/2)"
    )


def test_manifest_not_json(saved: Path, key: HostKey) -> None:
    rewrite(saved, {"manifest.json": b"\x89PNG\r\n"})
    with pytest.raises(BaselineError) as err:
        load_baseline(saved, key.public_key_bytes())
    assert error_text(err, saved) == (
        "manifest.json is not a JSON object: truncated or not a patchguard baseline"
    )


def test_missing_file(tmp_path: Path, key: HostKey) -> None:
    path = tmp_path / "nothing.pgb"
    with pytest.raises(BaselineError) as err:
        load_baseline(path, key.public_key_bytes())
    assert error_text(err, path) == ("cannot read the baseline: no such file or directory (ENOENT)")


# ---------------------------------------------------------------------------- boot


def test_check_boot(saved: Path, baseline: Baseline, key: HostKey) -> None:
    check_boot(baseline, BOOT_ID, RELEASE)
    check_boot(read_manifest(saved, key.public_key_bytes()), BOOT_ID, RELEASE, saved)

    with pytest.raises(BaselineError) as err:
        check_boot(baseline, "9d8e7f60-0000-4000-8000-000000000001", RELEASE, saved)
    assert error_text(err, saved) == (
        f"taken in another boot: baseline boot_id {BOOT_ID}, this boot "
        "9d8e7f60-0000-4000-8000-000000000001 (addresses and patched sites change at every "
        "boot); take a new baseline"
    )

    with pytest.raises(BaselineError) as err:
        check_boot(baseline, "9d8e7f60-0000-4000-8000-000000000001", "6.19.0-rc1", saved)
    assert error_text(err, saved) == (
        f"taken on another kernel: baseline kernel {RELEASE}, running 6.19.0-rc1; "
        "take a new baseline on this kernel"
    )


def test_check_boot_without_a_path(baseline: Baseline) -> None:
    with pytest.raises(BaselineError) as err:
        check_boot(baseline, "other", RELEASE)
    assert str(err.value).startswith("baseline: taken in another boot: ")


# ---------------------------------------------------------------------------- failing to save

FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_IMMUTABLE_FL = 0x10


def set_immutable(directory: Path, on: bool) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(4)  # the kernel reads and writes an int here
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = int.from_bytes(buf, sys.byteorder)
        flags = flags | FS_IMMUTABLE_FL if on else flags & ~FS_IMMUTABLE_FL
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags.to_bytes(4, sys.byteorder))
    finally:
        os.close(fd)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory nobody can create files in: mode 0555, and immutable for root."""
    directory = tmp_path / "ro"
    directory.mkdir()
    os.chmod(directory, 0o555)
    immutable = False
    if os.geteuid() == 0:
        try:
            set_immutable(directory, True)
            immutable = True
        except OSError as exc:
            os.chmod(directory, 0o755)
            pytest.skip(f"root writes into a mode-0555 directory, and chattr +i failed: {exc}")
    try:
        yield directory
    finally:
        if immutable:
            set_immutable(directory, False)
        os.chmod(directory, 0o755)


def test_save_into_a_read_only_directory(
    read_only_dir: Path, baseline: Baseline, key: HostKey
) -> None:
    path = read_only_dir / "baseline.pgb"
    with pytest.raises(BaselineError) as err:
        save_baseline(baseline, path, key)
    reason = error_text(err, path)
    assert reason in (
        "cannot write the baseline: permission denied (EACCES)",
        "cannot write the baseline: operation not permitted (EPERM)",  # immutable (root)
    )
    assert os.listdir(read_only_dir) == []


def test_failed_rename_keeps_the_previous_baseline(
    saved: Path, key: HostKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()

    def refuse(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(BaselineError) as err:
        save_baseline(make_baseline(boot_id="new-boot"), saved, key)
    assert error_text(err, saved) == "cannot write the baseline: input/output error (EIO)"
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert load_baseline(saved, key.public_key_bytes()).meta.boot_id == BOOT_ID
    assert sorted(os.listdir(saved.parent)) == [saved.name]


def test_failure_while_writing_removes_the_temporary_file(
    saved: Path, key: HostKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = saved.read_bytes()

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(BaselineError) as err:
        save_baseline(make_baseline(boot_id="new-boot"), saved, key)
    assert error_text(err, saved) == ("cannot write the baseline: no space left on device (ENOSPC)")
    monkeypatch.undo()
    assert saved.read_bytes() == before
    assert sorted(os.listdir(saved.parent)) == [saved.name]


def test_interrupted_save_removes_the_temporary_file(
    tmp_path: Path, baseline: Baseline, key: HostKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupt(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(baseline_store, "_write_zip", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_baseline(baseline, tmp_path / "baseline.pgb", key)
    assert os.listdir(tmp_path) == []


def test_inconsistent_baseline_is_refused_before_writing(
    tmp_path: Path, baseline: Baseline, key: HostKey
) -> None:
    text = baseline.regions["core_text"]
    bad_pages = replace(text, page_sha256=text.page_sha256[:-1])
    cases: list[tuple[dict[str, Region], str]] = [
        ({"core_text": bad_pages}, "region core_text: page_sha256 does not match its data"),
        ({"other": text}, "region 'core_text' is filed under the name 'other'"),
        (
            {"../etc": replace(text, name="../etc")},
            "region name '../etc': use letters, digits, '_', '-' and '.'",
        ),
    ]
    for regions, message in cases:
        with pytest.raises(ValueError) as err:
            save_baseline(replace(baseline, regions=regions), tmp_path / "b.pgb", key)
        assert str(err.value) == message
    with pytest.raises(ValueError, match="not JSON"):
        save_baseline(replace(baseline, sites={"x": {1, 2}}), tmp_path / "b.pgb", key)
    assert os.listdir(tmp_path) == []


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def edit(manifest: dict[str, Any]) -> None:
        target: Any = manifest
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "what"),
    [
        (_set(("meta", "kaslr_offset"), "0x1e000000"), "meta.kaslr_offset is not a int"),
        (_set(("regions", 0, "start"), 4076863488), "region core_text: start is not a hex address"),
        (
            _set(("regions", 1, "page_sha256"), []),
            "region jump_table: 0 page hashes for 3000 bytes",
        ),
        (_set(("sites", "size"), "12"), "sites.size is not a byte count"),
        (_set(("sites", "sha256"), "00"), "sites.sha256 is not a SHA-256 hex digest"),
        (_set(("summary",), []), "summary is not an object"),
        (
            _set(("signer", "public_key"), "00" * 32),
            "the signer it names is not the key that signed it",
        ),
    ],
)
def test_signed_but_malformed_manifest(
    saved: Path, key: HostKey, edit: Callable[[dict[str, Any]], None], what: str
) -> None:
    """What a writer holding the key could sign is still checked field by field."""
    resign(saved, key, {}, edit)
    with pytest.raises(BaselineError) as err:
        read_manifest(saved, key.public_key_bytes())
    assert error_text(err, saved) == f"signed manifest is malformed: {what}"
