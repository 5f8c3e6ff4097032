"""The pure parts of the eBPF attack findings: uprobe sites resolved in a real ELF (built with
gcc here), the secret-libraries list and its site extension, link info for user-space probes,
attach points in words, and which programs are covert triggers or packet rewriters."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from support.bpf_records import bpf_program

from patchguard.findings import Severity
from patchguard.kernel.bpf.objects import _decode_link
from patchguard.surfaces.ebpf import Attachment, BpfProgram, NetAttach, assess_program, uprobes
from patchguard.surfaces.ebpf.assess import spellings

LIBRARY_SOURCE = """
int pam_get_authtok(void *h, int item, const char **tok, const char *prompt)
{ (void)h; (void)item; (void)prompt; *tok = "x"; return 0; }
static int helper(int a) { return a * 3 + 1; }
int other(int a) { return helper(a) + helper(a + 1); }
"""


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("gcc") is None:
        pytest.fail("gcc is needed (scripts/setup --dev installs it)")
    where = tmp_path_factory.mktemp("elf")
    (where / "lib.c").write_text(LIBRARY_SOURCE)
    out = where / "libpam.so.0"
    cmd = ["gcc", "-shared", "-fPIC", "-O0", "-Wl,--build-id=sha1", "-o", str(out)]
    subprocess.run([*cmd, str(where / "lib.c")], check=True, capture_output=True, timeout=60)
    return out


def nm_offsets(library: Path) -> dict[str, int]:
    """Function -> file offset, from binutils (nm and readelf), not from pyelftools."""
    syms = subprocess.run(["nm", str(library)], capture_output=True, text=True, check=True)
    fields = [line.split() for line in syms.stdout.splitlines()]
    addrs = {f[2]: int(f[0], 16) for f in fields if len(f) == 3}
    heads = subprocess.run(
        ["readelf", "-lW", str(library)], capture_output=True, text=True, check=True
    )
    loads = [line.split() for line in heads.stdout.splitlines() if line.strip().startswith("LOAD")]
    segs = [(int(f[1], 16), int(f[2], 16), int(f[5], 16)) for f in loads]  # off, vaddr, memsz

    def offset(addr: int) -> int:
        return next(addr - v + o for o, v, size in segs if v <= addr < v + size)

    return {name: offset(a) for name, a in addrs.items() if name in ("pam_get_authtok", "other")}


def test_resolve_names_the_function_and_build_id(library: Path) -> None:
    offsets = nm_offsets(library)
    site = uprobes.resolve(str(library), offsets["pam_get_authtok"])
    assert site.symbol == "pam_get_authtok+0x0" and site.unresolved is None
    notes = subprocess.run(["readelf", "-n", str(library)], capture_output=True, text=True)
    assert site.build_id and site.build_id in notes.stdout
    inside = uprobes.resolve(str(library), offsets["other"] + 4)
    assert inside.symbol == "other+0x4"
    assert inside.spelled == f"{library}+{offsets['other'] + 4:#x} (other+0x4)"


def test_resolve_outside_any_function_or_file(library: Path, tmp_path: Path) -> None:
    assert uprobes.resolve(str(library), 10**9).symbol is None
    gone = uprobes.resolve(str(tmp_path / "nothing.so"), 0x10)
    assert gone.symbol is None and gone.unresolved and "nothing.so" in gone.unresolved
    assert gone.spelled == f"{tmp_path / 'nothing.so'}+0x10"
    text = tmp_path / "notelf"
    text.write_text("hello")
    assert uprobes.resolve(str(text), 0).unresolved


def test_truncated_elf_is_unresolved_not_an_error(library: Path, tmp_path: Path) -> None:
    data = library.read_bytes()
    for size in (16, 64, 1000, len(data) // 2):
        cut = tmp_path / f"cut{size}.so"
        cut.write_bytes(data[:size])
        site = uprobes.resolve(str(cut), 0x10)
        assert site.symbol is None and site.unresolved and str(cut) in site.unresolved


def test_resolve_under_another_root(library: Path) -> None:
    """A captured tree (or a container's root) is read under its root, reported as seen."""
    site = uprobes.resolve("/" + library.name, nm_offsets(library)["other"], library.parent)
    assert site.path == "/" + library.name and site.symbol == "other+0x0"


def test_shipped_list_covers_the_issue() -> None:
    entries = uprobes.shipped_secrets()

    def hit(path: str, function: str | None) -> uprobes.SecretHit | None:
        symbol = f"{function}+0x0" if function else None
        return uprobes.secret_at(uprobes.ProbedSite(path, 0, symbol=symbol), entries)

    for path, function in [
        ("/usr/lib/x86_64-linux-gnu/libpam.so.0", "pam_get_authtok"),
        ("/usr/lib/x86_64-linux-gnu/libssl.so.3", "SSL_read"),
        ("/usr/lib/x86_64-linux-gnu/libgnutls.so.30", "gnutls_record_recv"),
        ("/usr/lib/x86_64-linux-gnu/libnss3.so", "PR_Write"),
        ("/usr/sbin/sshd", "main"),
        ("/usr/bin/passwd", None),
        ("/usr/lib/x86_64-linux-gnu/libreadline.so.8", "readline"),
    ]:
        found = hit(path, function)
        assert found is not None and found.severity is Severity.HIGH, path
    tls = hit("/usr/lib/x86_64-linux-gnu/libssl.so.3", "SSL_CTX_new")
    assert tls is not None and tls.severity is Severity.MEDIUM
    assert "not known to carry" in tls.summary("uprobe", uprobes.ProbedSite("/l", 1, None, "f"))
    assert hit("/usr/lib/x86_64-linux-gnu/libz.so.1", "inflate") is None


SITE_ENTRY = """
[[secret]]
name = "vault agent"
files = ["vault"]
functions = ["*unseal*"]
reads = "unseal keys"
technique = "uprobe-credential-theft"
"""


def test_site_list_comes_first(tmp_path: Path) -> None:
    site = tmp_path / "secret-libraries.toml"
    site.write_text(SITE_ENTRY)
    entries = uprobes.load_secrets(site)
    assert entries[0].name == "vault agent" and len(entries) > 1
    found = uprobes.secret_at(
        uprobes.ProbedSite("/usr/bin/vault", 0, None, "do_unseal+0x4"), entries
    )
    assert found is not None and found.reads == "unseal keys"
    assert uprobes.load_secrets(tmp_path / "absent.toml") == uprobes.shipped_secrets()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[[secret]\n", "not TOML"),
        ("secret = 3\n", "array of tables"),
        (SITE_ENTRY.replace("uprobe-credential-theft", "rootkit-helper"), "technique must be"),
        (SITE_ENTRY.replace('["vault"]', "[]"), "names no file"),
        (SITE_ENTRY.replace('"unseal keys"', "3"), "`reads` must be"),
        (SITE_ENTRY.replace('["*unseal*"]', '"x"'), "`functions` must be"),
    ],
)
def test_bad_site_list_is_one_clear_line(tmp_path: Path, text: str, says: str) -> None:
    site = tmp_path / "secret-libraries.toml"
    site.write_text(text)
    with pytest.raises(uprobes.SecretListError) as err:
        uprobes.load_secrets(site)
    assert str(site) in str(err.value) and says in str(err.value)
    assert "\n" not in str(err.value)


def test_oversized_or_binary_site_list(tmp_path: Path) -> None:
    site = tmp_path / "big.toml"
    site.write_bytes(b"#" * (uprobes.MAX_SECRETS_BYTES + 1))
    with pytest.raises(uprobes.SecretListError, match="larger than"):
        uprobes.load_secrets(site)
    site.write_bytes(b"\xff\xfe")
    with pytest.raises(uprobes.SecretListError, match="not UTF-8"):
        uprobes.load_secrets(site)


def _link_raw(link_type: int, union: bytes) -> bytes:
    return struct.pack("<III4x", link_type, 40, 7) + union.ljust(80, b"\0")


def test_user_probe_links_decode_to_kind_file_and_offsets() -> None:
    # perf_event link, uprobe: perf_event_type 1, file_name ptr, name_len, offset 0x56c0
    perf = _decode_link(_link_raw(7, struct.pack("<I4xQII", 1, 0, 20, 0x56C0)), "perf_event", "/l")
    assert perf.probe is not None and (perf.probe.kind, perf.probe.offsets) == ("uprobe", (0x56C0,))
    assert perf.target == "uprobe:/l+0x56c0"
    # uprobe_multi: path, offsets, ref_ctr, cookies, path_size, count, flags (RETURN), pid
    multi = _decode_link(
        _link_raw(12, struct.pack("<QQQQIIII", 0, 0, 0, 0, 3, 2, 1, 99)), "uprobe_multi", "/l"
    )
    assert multi.probe is not None
    assert (multi.probe.kind, multi.probe.pid) == ("uretprobe", 99)


def _program(**overrides: object) -> BpfProgram:
    return bpf_program(**{"pins": ("/sys/fs/bpf/x",), **overrides})


def techniques(prog: BpfProgram) -> set[str]:
    return {f.technique for f in assess_program(prog)}


@pytest.mark.parametrize(
    ("target", "trigger"),
    [
        ("tracepoint:tcp_receive_reset", True),
        ("tracepoint:tcp_bad_csum", True),
        ("tcp:tcp_receive_reset", True),
        ("raw_tracepoint:kfree_skb", True),
        ("tracepoint:napi_gro_receive_entry", True),
        ("kprobe:napi_gro_receive", True),
        ("kprobe:tcp_v4_rcv+0x10", True),
        ("kprobe:tcp_sendmsg", False),  # outgoing data: observability, not a trigger
        ("tracepoint:sched_switch", False),
        ("uprobe:/usr/lib/libtcp_stuff.so+0x10 (tcp_x+0x0)", False),
    ],
)
def test_covert_triggers_by_attach_point(target: str, trigger: bool) -> None:
    prog = _program(attachments=(Attachment("perf_event", target),))
    assert ("covert-trigger" in techniques(prog)) is trigger


def test_packet_programs_are_triggers_and_rewriters_named_by_helper() -> None:
    where = NetAttach("xdp", "lo", 1, "init", "ingress", "generic", kept_by="XDP attachment")
    prog = _program(
        prog_type="xdp",
        helpers=("bpf_xdp_adjust_tail", "bpf_csum_diff", "bpf_ktime_get_ns"),
        attachments=(Attachment("xdp", where.spelled(), net=where),),
    )
    found = {f.technique: f for f in assess_program(prog)}
    assert found["covert-trigger"].severity is Severity.MEDIUM
    tamper = found["packet-tamper"].summary
    assert "xdp on lo in netns init ingress (generic)" in tamper
    assert "bpf_xdp_adjust_tail" in tamper and "bpf_csum_diff" in tamper
    assert "bpf_ktime_get_ns" not in tamper
    assert techniques(_program(prog_type="xdp")) == {"covert-trigger"}


def test_sensitive_hook_in_every_spelling() -> None:
    assert "sched_process_exec" in spellings("tracepoint:sched:sched_process_exec")
    for target in (
        "tracepoint:sched_process_exec",
        "sched:sched_process_exec",
        "raw_tracepoint:sched_process_exec",
    ):
        prog = _program(attachments=(Attachment("perf_event", target),))
        assert "sensitive-hook" in techniques(prog), target


def test_orphan_names_what_keeps_it() -> None:
    tc = NetAttach("tc", "eth0", 2, "init", "ingress", "direct action", 1, "0x1", "tc filter")
    kept = (f"tc filter ({tc.spelled()})",)
    prog = _program(prog_type="sched_cls", pins=(), kept_by=kept)
    [orphan] = [f for f in assess_program(prog) if f.technique == "orphan-program"]
    assert orphan.summary.endswith(
        "kept alive only by tc filter (tc on eth0 in netns init ingress prio 1 handle 0x1 "
        "(direct action))"
    )
    assert orphan.evidence["kept_by"] == list(kept)


def test_secret_probe_finding_says_what_it_reads() -> None:
    site = uprobes.ProbedSite("/lib/libpam.so.0", 0x56C0, "ab12", "pam_get_authtok+0x0")
    hit = uprobes.secret_at(site, uprobes.shipped_secrets())
    attach = Attachment("link", f"uprobe:{site.spelled}", 3, "perf_event", uprobe=site, secret=hit)
    [finding] = [f for f in assess_program(_program(attachments=(attach,)))]
    assert finding.technique == "uprobe-credential-theft" and finding.severity is Severity.HIGH
    assert "/lib/libpam.so.0+0x56c0 (pam_get_authtok+0x0) (PAM)" in finding.summary
    assert finding.evidence["build_id"] == "ab12" and "passwords" in str(finding.evidence["reads"])


def test_orphan_socket_filter_says_a_socket_keeps_it() -> None:
    prog = _program(prog_type="socket_filter", pins=())
    [orphan] = [f for f in assess_program(prog) if f.technique == "orphan-program"]
    assert "kept by the socket it was attached to (SO_ATTACH_BPF)" in orphan.summary


def test_control_characters_in_names_are_made_visible() -> None:
    site = uprobes.ProbedSite("/lib/libpam.so.0", 0x10, None, "pam_get_authtok\x1b[2J+0x0")
    hit = uprobes.secret_at(site, uprobes.shipped_secrets())
    attach = Attachment("link", f"uprobe:{site.spelled}", 3, "perf_event", uprobe=site, secret=hit)
    prog = _program(name="evil\x07\x9b", attachments=(attach,))
    [finding] = assess_program(prog)
    assert "pam_get_authtok\\x1b[2J+0x0" in finding.summary
    assert finding.subject == "prog 7 (evil\\x07\\x9b, kprobe)"
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in finding.summary)
