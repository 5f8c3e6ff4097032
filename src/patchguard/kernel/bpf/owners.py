"""Who keeps each eBPF object alive: processes holding an fd to it (/proc/*/fdinfo), perf events
that run a program without a link (found with BPF_TASK_FD_QUERY, as `bpftool perf` does), and
pins in every mounted bpffs."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from patchguard.kernel.bpf import syscall as bpf
from patchguard.kernel.mounts import mounted_types

# readlink(/proc/PID/fd/N) of each kind of fd, as the kernel names its anonymous inodes.
FD_KINDS = {
    "anon_inode:bpf-prog": "prog",
    "anon_inode:bpf_link": "link",
    "anon_inode:bpf-link": "link",  # a link fd from BPF_OBJ_GET (a pin) is named this way
    "anon_inode:bpf-map": "map",
    "anon_inode:[perf_event]": "perf_event",
}
ID_KEYS = {"prog": "prog_id", "link": "link_id", "map": "map_id"}


@dataclass(frozen=True)
class Process:
    pid: int
    comm: str
    exe: str | None  # None: a kernel thread, or the process is gone
    exe_deleted: bool = False  # its executable was unlinked after it started (or replaced)


@dataclass(frozen=True)
class Holder:
    process: Process
    fd: int


@dataclass(frozen=True)
class PerfAttachment:
    """A program attached to a perf event fd with PERF_EVENT_IOC_SET_BPF (no link object)."""

    holder: Holder
    prog_id: int
    fd_type: str  # tracepoint, kprobe, kretprobe, uprobe, uretprobe, raw_tracepoint
    name: str  # tracepoint name, kprobe function, or uprobe file
    probe_offset: int
    probe_addr: int

    @property
    def target(self) -> str:
        if self.fd_type in ("kprobe", "kretprobe") and not self.name:
            return f"{self.fd_type}:{self.probe_addr:#x}"
        offset = f"+{self.probe_offset:#x}" if self.probe_offset else ""
        return f"{self.fd_type}:{self.name}{offset}"


@dataclass(frozen=True)
class Owners:
    holders: dict[tuple[str, int], list[Holder]] = field(default_factory=dict)  # (kind, id)
    perf: list[PerfAttachment] = field(default_factory=list)
    pins: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # processes or pins we could not read


def parse_fdinfo(text: str) -> dict[str, str]:
    """/proc/PID/fdinfo/N: 'key:\\tvalue' lines (pos, flags, prog_id, link_type, ...)."""
    info: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info[key.strip()] = value.strip()
    return info


def parse_exe_link(target: str) -> tuple[str, bool]:
    """readlink(/proc/PID/exe) -> (path, deleted); the kernel appends ' (deleted)'."""
    suffix = " (deleted)"
    if target.endswith(suffix):
        return target[: -len(suffix)], True
    return target, False


def read_process(proc: Path, pid: int) -> Process:
    base = proc / str(pid)
    try:
        comm = (base / "comm").read_text().strip()
    except OSError:
        comm = "?"
    try:
        exe, deleted = parse_exe_link(os.readlink(base / "exe"))
    except OSError:
        return Process(pid, comm, None)
    return Process(pid, comm, exe, deleted)


def _bpf_fds(proc: Path, pid: int) -> Iterator[tuple[int, str]]:
    # Paths as strings: thousands of fds per walk, and pathlib's joins were most of its time.
    fd_dir = f"{proc}/{pid}/fd"
    try:
        names = os.listdir(fd_dir)
    except OSError:
        return
    for name in names:
        try:
            kind = FD_KINDS.get(os.readlink(f"{fd_dir}/{name}"))
        except OSError:
            continue
        if kind is not None:
            yield int(name), kind


def find_owners(root: Path = Path("/"), query_perf: bool = True) -> Owners:
    """Walk every process's fds once; query perf event fds only on the live kernel."""
    owners = Owners()
    proc = root / "proc"
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fds = list(_bpf_fds(proc, pid))
        if fds:
            _add_process(owners, proc, pid, fds, query_perf)
    for mount in bpffs_mounts(root):
        _add_pins(owners, Path(mount))
    return owners


def _add_process(
    owners: Owners, proc: Path, pid: int, fds: list[tuple[int, str]], query_perf: bool
) -> None:
    process = read_process(proc, pid)
    for fd, kind in fds:
        holder = Holder(process, fd)
        if kind == "perf_event":
            if query_perf:
                _add_perf(owners, holder)
            continue
        try:
            info = parse_fdinfo((proc / str(pid) / "fdinfo" / str(fd)).read_text())
        except OSError:
            continue  # the fd was closed while we looked
        obj_id = info.get(ID_KEYS[kind])
        if obj_id and obj_id.isdigit():
            owners.holders.setdefault((kind, int(obj_id)), []).append(holder)


def _add_perf(owners: Owners, holder: Holder) -> None:
    try:
        prog_id, fd_type, name, offset, addr = bpf.task_fd_query(holder.process.pid, holder.fd)
    except bpf.BpfError:
        return  # a perf event with no program (ENOENT), or gone: nothing of ours
    owners.perf.append(PerfAttachment(holder, prog_id, fd_type, name, offset, addr))


def bpffs_mounts(root: Path = Path("/")) -> list[str]:
    try:
        points = mounted_types((root / "proc/self/mountinfo").read_text())
    except OSError:
        return []
    return sorted(point for point, fstype in points.items() if fstype == "bpf")


def _add_pins(owners: Owners, mount: Path) -> None:
    for dirpath, _dirs, files in os.walk(mount):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                kind_id = pinned_object(path)
            except bpf.BpfError as exc:
                # ENOENT: unpinned while we walked, or not a pinned object at all (the
                # kernel's own bpf_preload iterators, maps.debug and progs.debug).
                if exc.errno != errno.ENOENT:
                    owners.errors.append(f"{path}: {exc}")
                continue
            except OSError as exc:
                owners.errors.append(f"{path}: {exc}")
                continue
            if kind_id is not None:
                owners.pins.setdefault(kind_id, []).append(path)


def pinned_object(path: str) -> tuple[str, int] | None:
    """(kind, id) of the object pinned at `path`, through a short-lived fd of our own."""
    fd = bpf.obj_get(path)
    try:
        kind = FD_KINDS.get(os.readlink(f"/proc/self/fd/{fd}"))
        if kind is None or kind == "perf_event":
            return None
        info = parse_fdinfo(Path(f"/proc/self/fdinfo/{fd}").read_text())
        return kind, int(info[ID_KEYS[kind]])
    finally:
        os.close(fd)
