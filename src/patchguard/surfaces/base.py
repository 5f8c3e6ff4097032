"""The one interface every surface implements (scan and integrity know surfaces only through
it), and the one helper that builds their findings from the technique catalogue."""

from __future__ import annotations

import enum
import typing
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from patchguard.findings import Disposition, Evidence, Finding, Gap, Severity
from patchguard.techniques import TECHNIQUES

if TYPE_CHECKING:
    from patchguard.kernel import Kernel


class Default(enum.Enum):
    """Take the value from the technique catalogue (techniques.py)."""

    CATALOGUE = "catalogue"


def finding(
    surface: str,
    technique: str,
    subject: str,
    summary: str,
    evidence: Evidence,
    *,
    severity: Severity | Default = Default.CATALOGUE,
    disposition: Disposition = Disposition.SUSPICIOUS,
    attack_id: str | Default | None = Default.CATALOGUE,
) -> Finding:
    """A finding of a catalogued technique: its severity and ATT&CK id are the catalogue's
    unless the evidence calls for others (a kprobe on commit_creds is graver than most)."""
    known = TECHNIQUES[technique]
    return Finding(
        surface=surface,
        technique=technique,
        severity=known.severity if isinstance(severity, Default) else severity,
        subject=subject,
        summary=summary,
        disposition=disposition,
        attack_id=known.attack_id if isinstance(attack_id, Default) else attack_id,
        evidence=evidence,
    )


class Status(enum.StrEnum):
    OK = "ok"  # everything the surface covers was read
    PARTIAL = "partial"  # some parts were read, the gaps say what was not
    UNAVAILABLE = "unavailable"  # nothing could be read, the gaps say why


Self = TypeVar("Self", bound="RecordSet")


class RecordSet:
    """Base of a surface's typed records: a frozen dataclass whose fields each hold the records
    of one kind (a tuple of them, or one record or None), so assess code reads
    `state.records.hidden` instead of filtering a mixed list by type. Iterating gives every
    record, field by field: what `scan --records` prints and what policy and the guard see."""

    def __iter__(self) -> Iterator[object]:
        for f in fields(self):  # type: ignore[arg-type]  # subclasses are dataclasses
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                yield from value
            elif value is not None:
                yield value

    def __len__(self) -> int:
        return sum(1 for _ in self)

    @classmethod
    def of(cls: type[Self], records: Iterable[object]) -> Self:
        """The records a collect() gathered in reading order, each put in the field declared
        for its kind; a record of a kind the set does not declare is a programming error."""
        kinds = _field_kinds(cls)
        grouped: dict[str, list[object]] = {name: [] for name, _, _ in kinds}
        for record in records:
            grouped[_field_for(kinds, record, cls)].append(record)
        return cls(**{name: _value(grouped[name], many) for name, _, many in kinds})


def _value(found: list[object], many: bool) -> object:
    if many:
        return tuple(found)
    if len(found) > 1:
        raise TypeError(f"{len(found)} records where the set holds one: {found[:2]!r}")
    return found[0] if found else None


def _field_for(kinds: list[tuple[str, type, bool]], record: object, cls: type) -> str:
    for name, kind, _ in kinds:
        if isinstance(record, kind):
            return name
    raise TypeError(f"{cls.__name__} has no field for a {type(record).__name__}")


_KINDS: dict[type, list[tuple[str, type, bool]]] = {}


def _field_kinds(cls: type) -> list[tuple[str, type, bool]]:
    """(field, record kind, holds many) per field: from `tuple[Kind, ...]` or `Kind | None`."""
    if cls not in _KINDS:
        hints = typing.get_type_hints(cls)
        _KINDS[cls] = [(f.name, *_kind(hints[f.name])) for f in fields(cls)]
    return _KINDS[cls]


def _kind(hint: object) -> tuple[type, bool]:
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    return args[0], typing.get_origin(hint) is tuple


RecordsT = TypeVar("RecordsT", bound=Iterable[object], covariant=True)


@dataclass(frozen=True)
class SurfaceState(Generic[RecordsT]):
    """What one surface read from the kernel: its typed records (a RecordSet; a plain sequence
    where a surface has one kind) plus what it could not read."""

    surface: str
    records: RecordsT
    counts: Mapping[str, int] = field(default_factory=dict)  # shown in the scan table
    gaps: Sequence[Gap] = ()

    @property
    def status(self) -> Status:
        if not self.gaps:
            return Status.OK
        read = any(True for _ in self.records) or any(self.counts.values())
        return Status.PARTIAL if read else Status.UNAVAILABLE


# A state as code above the surfaces sees it (scan, policy, the guard): records to iterate.
AnyState = SurfaceState[Iterable[object]]


class Surface(Protocol):
    name: str
    title: str

    def collect(self, kernel: Kernel) -> SurfaceState[Any]:
        """Read the surface from the live kernel (or a captured tree); never raises on EPERM."""
        ...

    def assess(self, state: SurfaceState[Any]) -> list[Finding]:
        """Findings from the current state alone (no baseline): what `scan` reports."""
        ...
