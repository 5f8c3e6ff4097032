"""The corpus's loader pins against this machine's Debian packages (real dpkg, real files): a
shipped manifest's loader that this host installs is one of its pinned releases, and a pin gone
stale fails with the installed package's version, its hash and the line to add."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from support.corpus import MANIFESTS, installed_release, loader_release

SYSTEMD = "/usr/lib/systemd/systemd"


def debian_file(path: str) -> str:
    if shutil.which("dpkg") is None or not Path(path).is_file():
        pytest.skip(f"{path} is not installed by dpkg here (Debian hosts and the lab have it)")
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_a_merged_usr_file_is_named_by_its_package_and_version() -> None:
    debian_file(SYSTEMD)
    package, version = installed_release(SYSTEMD).split(" ")
    assert package == "systemd" and version.startswith("252.")


def test_this_hosts_systemd_is_a_pinned_release() -> None:
    debian_file(SYSTEMD)
    assert loader_release(MANIFESTS / "systemd.toml") == installed_release(SYSTEMD).split(" ")[1]


def test_a_stale_pin_says_which_release_and_hash_replace_it(tmp_path: Path) -> None:
    digest = debian_file(SYSTEMD)
    version = installed_release(SYSTEMD).split(" ")[1]
    shipped = (MANIFESTS / "systemd.toml").read_text()
    stale = tmp_path / "systemd.toml"
    stale.write_text(shipped.replace(digest, "0" * 64).replace(version, "252.1-1"))
    with pytest.raises(pytest.fail.Exception) as failed:
        loader_release(stale)
    said = str(failed.value)
    assert f"{SYSTEMD} here is systemd {version}, sha256 {digest}" in said, said
    assert "(252.1-1 = 000000000000...)" in said and f'"{version}" = "{digest}"' in said, said
