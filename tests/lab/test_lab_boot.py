"""Smoke test of the kernel lab, run on the HOST: one boot of the Debian guest through lab/run,
which runs guest_facts.py inside it; the facts the lab promises are asserted here."""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.lab_guest import run_lab

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def facts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    command = ["python3", "/src/tests/lab/guest_facts.py"]
    run = run_lab(tmp_path_factory.mktemp("facts"), (), command, timeout=600)
    assert run.returncode == 0, f"lab/run exited {run.returncode}:\n{run.stderr[-8000:]}"
    result: dict[str, Any] = json.loads(run.stdout)
    assert "errors" not in result, result["errors"]
    return result


def test_guest_runs_the_stock_debian_kernel(facts: dict[str, Any]) -> None:
    assert facts["kernel_release"].startswith("6.1.0-")
    assert facts["kernel_release"].endswith("-amd64")


def test_kaslr_is_in_effect(facts: dict[str, Any]) -> None:
    assert facts["kaslr"], f"_stext at {facts['stext']}: the kernel was not randomized"


def test_kallsyms_has_the_data_symbols(facts: dict[str, Any]) -> None:
    assert facts["has_sys_call_table"]
    assert facts["has_idt_table"]
    assert facts["has_x64_sys_call"]


def test_kcore_and_ebpf_readers_agree_on_stext(facts: dict[str, Any]) -> None:
    assert len(facts["kcore_stext"]) == 32  # 16 bytes, hex
    assert facts["kcore_stext"] == facts["ebpf_stext"]


def test_kprobes_list_and_enabled_functions_are_readable(facts: dict[str, Any]) -> None:
    assert facts["kprobes_list_readable"]
    assert facts["enabled_functions_readable"]


def test_msr_module_gives_dev_cpu_msr(facts: dict[str, Any]) -> None:
    msr = facts["msr"]
    assert msr["dev_cpu0_msr"]
    assert msr["lstar"] and all(lstar == msr["entry_SYSCALL_64"] for lstar in msr["lstar"])
