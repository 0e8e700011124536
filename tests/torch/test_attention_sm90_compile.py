"""The warp-specialized Gluon attention kernel (core_kernels/attention/kernel_sm90.py) compiles for sm_90 on any
machine, for every variant it supports, and its PTX holds what it is named for.

Gluon does not run in the interpreter, and this pytest process interprets on a machine without GPU, so the
compile runs in a child process without TRITON_INTERPRET (compile_sm90.py: the real plan with the Gluon variant,
triton.compile for sm_90 including ptxas). Nothing numeric is checked here: that
needs the GPU (benchmarks/sm90_check.py).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("compile_sm90.py")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    child = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    header = next((line for line in lines if "total" in line), {})
    output = child.stdout[-6000:] + child.stderr[-4000:]
    return child.returncode, header, lines, output


def test_child_ran(compiled):
    returncode, header, lines, output = compiled
    assert returncode == 0, output
    cases = [line for line in lines if "case" in line]
    assert len(cases) == header.get("total", -1) and len(cases) >= 6, output


def test_every_supported_variant_compiles(compiled):
    from sparse_sageattn.core_kernels.attention import kernel_sm90 as k

    _, _, lines, output = compiled
    cases = [line for line in lines if "case" in line]
    failures = [c for c in cases if "error" in c]
    assert not failures, "\n".join(json.dumps(c)[:3000] for c in failures)
    # both V dtypes x both head dims x causal on/off x lse on/off are covered
    assert {(c["case"][0], c["case"][1]) for c in cases} == {(d, h) for d in ("float16", "bfloat16") for h in (64, 128)}
    assert {c["case"][2] for c in cases} == {False, True} and {c["case"][3] for c in cases} == {False, True}
    warps = k.NUM_WARPS + 4 * (k.CONSUMER_WARPGROUPS - 1) + k.LOADER_WARPS
    for c in cases:
        assert c["wgmma_s8"] > 0, c  # Q.K^T: wgmma.mma_async ... .s32.s8.s8
        assert c["wgmma_f16"] > 0, c  # P.V: wgmma.mma_async ... .f32.f16.f16
        assert c["wgmma_other"] == [], c  # no bf16 / fp8 MMA: bf16 V is converted to fp16 first
        assert k.LOADER_REGS in c["setmaxnreg"] and k.CONSUMER_REGS in c["setmaxnreg"], c
        assert c["mbarrier"] > 0 and c["mbarrier_expect_tx"] > 0 and c["cp_async"] == 0, c
        # Q and K always by TMA, through descriptors the program builds once; fp16 V with 16-byte rows by TMA too:
        # all of V in one 4-d descriptor, or with kv_lens the program's head cut at its valid keys (2-d)
        v_tma = len(c["case"]) < 9 or not c["case"][8]  # the plan's fp16 copy of bf16 V has 16-byte rows
        kv_lens = len(c["case"]) > 9 and c["case"][9]
        assert c["tma_loads"] > 0 and c["tensormap_replace"] == (3 if v_tma else 2), c
        assert (c["tma_loads_4d"] > 0) == (v_tma and not kv_lens), c
        assert c["global_scratch_size"] == 128 * c["tensormap_replace"] <= k.DESCRIPTOR_SCRATCH_BYTES, c
        assert c["num_warps"] == warps and c["reqntid"] == 32 * warps, c
        if c["ptxas_spills"] is not None:  # the register budgets of the partitions hold: nothing spills
            assert c["ptxas_spills"]["stack"] == 0 and c["ptxas_spills"]["local"] == 0, c


def test_unsupported_variants_are_refused_at_compile_time(compiled):
    _, header, lines, output = compiled
    refused = [line for line in lines if "refused_case" in line]
    assert len(refused) == header.get("refused_total", -1), output
    assert all(r["refused"] for r in refused), "\n".join(json.dumps(r) for r in refused)
