"""The shapes the server accepts, as pydantic models: unknown fields are refused
(`extra="forbid"`), every string and list has a bound, so a hostile host cannot make the
server store (or hold in memory) more than `fleet.wire.MAX_BODY` allows."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from patchguard.policy.chain import canonical

MAX_TEXT = 4096  # subject, summary, reason: one finding's text
MAX_FINDINGS = 2000
MAX_EVIDENCE = 64 * 1024  # canonical JSON of one finding's evidence
MAX_SCAN = 512 * 1024  # a sealed `scan --json` document carried whole (without --records)
HEX64 = r"^[0-9a-f]{64}$"
FINGERPRINT = r"^[0-9a-f]{16}$"


def _no_nul(text: str) -> str:
    # PostgreSQL cannot store NUL in text; no honest host sends one.
    if "\x00" in text:
        raise ValueError("contains a NUL character")
    return text


def _bounded_evidence(value: dict[str, Any]) -> dict[str, Any]:
    text = canonical(value)
    if len(text) > MAX_EVIDENCE:
        raise ValueError(f"evidence is {len(text)} bytes as JSON, more than {MAX_EVIDENCE}")
    if "\\u0000" in text:
        raise ValueError("evidence contains a NUL character")
    return value


NoNul = AfterValidator(_no_nul)
Text32 = Annotated[str, Field(max_length=32), NoNul]
Text64 = Annotated[str, Field(max_length=64), NoNul]
Text128 = Annotated[str, Field(max_length=128), NoNul]
LongText = Annotated[str, Field(max_length=MAX_TEXT), NoNul]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Envelope(Strict):
    body: Annotated[str, Field(max_length=1024 * 1024)]
    signature: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]


class FindingIn(Strict):
    surface: Text64
    technique: Text128
    severity: Literal["info", "low", "medium", "high", "critical"]
    subject: LongText
    summary: LongText
    disposition: Text32 = "suspicious"
    attack_id: Text32 | None = None
    evidence: Annotated[dict[str, Any], AfterValidator(_bounded_evidence)] = Field(
        default_factory=dict
    )


class Payload(Strict):
    findings: Annotated[list[FindingIn], Field(max_length=MAX_FINDINGS)] = Field(
        default_factory=list
    )
    gaps: Annotated[int, Field(ge=0, le=100_000)] = 0
    interval: Annotated[int, Field(ge=1, le=86_400)] | None = None
    reason: LongText | None = None
    # The exact text of a sealed `patchguard scan --json` document, as the host's report
    # command read it: text, not a JSON object, so that a document altered into something
    # that no longer parses (a truncation, a dropped line) still arrives to be judged.
    scan: Annotated[str, Field(max_length=MAX_SCAN)] | None = None


class Body(Strict):
    format: Literal["patchguard.fleet/1"]
    host: Annotated[str, Field(pattern=FINGERPRINT)]
    seq: Annotated[int, Field(ge=1, le=2**62)]
    id: Annotated[str, Field(pattern=r"^[0-9a-f]{32}$")]
    time: Annotated[AwareDatetime, Field(strict=False)]
    kind: Literal["report", "heartbeat", "sweep", "finding", "stop", "baseline-rotated"]
    boot_id: Text64 | None = None
    baseline_digest: Annotated[str, Field(pattern=HEX64)] | None = None
    payload: Payload


class EnrolIn(Strict):
    name: Annotated[str, Field(min_length=1, max_length=255), NoNul]
    public_key: Annotated[str, Field(pattern=HEX64)]
    proof: Annotated[str, Field(pattern=r"^[0-9a-f]{128}$")]
