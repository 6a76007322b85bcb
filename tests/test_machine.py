"""The host description recorded in cost.json, summary.json and before_after.json."""

from __future__ import annotations

import json

from ssrl_trl.machine import ISA_FLAGS, describe_machine, read_cpuinfo

# Two processor blocks of an x86 /proc/cpuinfo (abridged); the second differs on purpose.
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model\t\t: 143
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx2 fma avx512f avx512_bf16 amx_bf16 amx_tile

processor\t: 1
model name\t: Something Else
flags\t\t: fpu
"""


def test_cpuinfo_gives_the_model_and_the_instruction_sets_that_change_bf16_kernels():
    info = read_cpuinfo(CPUINFO)
    assert info == {
        "cpu_model": "Intel(R) Xeon(R) Platinum 8480+",
        "cpu_family": "6",
        "cpu_model_number": "143",
        "isa_flags": ["amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma"],
    }


def test_a_cpu_without_bf16_instructions_lists_only_what_it_has():
    text = CPUINFO.replace("avx512_bf16 amx_bf16 amx_tile", "").replace("avx512f", "")
    assert read_cpuinfo(text)["isa_flags"] == ["avx2", "fma"]


def test_an_unreadable_or_foreign_cpuinfo_gives_none_not_an_error(tmp_path, monkeypatch):
    assert read_cpuinfo("") == dict.fromkeys(("cpu_model", "cpu_family", "cpu_model_number", "isa_flags"))
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    described = describe_machine(tmp_path / "missing")
    assert described["onednn_max_cpu_isa"] == "AVX2" and described["isa_flags"] is None
    json.dumps(described)  # JSON-ready


def test_describe_machine_reads_the_given_cpuinfo_and_this_hosts_torch(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO)
    described = describe_machine(path)
    assert described["cpu_model"] == "Intel(R) Xeon(R) Platinum 8480+"
    assert described["isa_flags"] == list(ISA_FLAGS)  # the abridged block has every flag, in order
    assert described["logical_cpus"] >= 1 and described["torch_threads"] >= 1 and described["torch"]
