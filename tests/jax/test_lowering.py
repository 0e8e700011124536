"""Lower the jitted JAX function for CUDA (compute capability 80 and 90) on any machine: this runs the full
Triton compile of the real kernels through jax-triton, for every kernel variant (lower_cuda.CASES, and
lower_cuda.PREDICT_CASES for predict_mask).

A process either interprets Triton or compiles it, and this pytest process interprets on a machine without GPU,
so each capability is lowered in a child process without TRITON_INTERPRET.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("lower_cuda.py")
FP8_ERROR = "pv_dtype='fp8' needs FP8 tensor cores"
CAPABILITIES = ("80", "90")


@pytest.fixture(scope="module")
def lowered():
    """capability -> (return code, number of cases, per-case results, output); both children run at once."""
    children = {}
    for capability in CAPABILITIES:
        env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        env.update(JAX_PLATFORMS="cpu", SPARSE_SAGEATTN_COMPUTE_CAPABILITY=capability, SPARSE_SAGEATTN_SM_COUNT="132")
        children[capability] = subprocess.Popen([sys.executable, str(SCRIPT)], env=env, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, text=True)
    results = {}
    for capability, child in children.items():
        stdout, stderr = child.communicate(timeout=900)
        lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        total = next((line["total"] for line in lines if "total" in line), -1)
        cases = [line for line in lines if "case" in line]
        results[capability] = (child.returncode, total, cases, stdout + stderr[-4000:])
    return results


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_every_kernel_variant_lowers_for_cuda(lowered, capability):
    returncode, total, cases, output = lowered[capability]
    assert returncode == 0, output
    assert len(cases) == total and total >= 10, output
    fp8_cases = [c for c in cases if c["kind"] == "lower" and c["case"][11] == "fp8"]
    assert len(fp8_cases) >= 3, output
    # sm_80 has no FP8 tensor cores: the FP8 P.V mode must be refused there, with the reason
    refused = fp8_cases if capability == "80" else []
    assert all(FP8_ERROR in c.get("error", "") for c in refused), refused
    failures = [c for c in cases if "error" in c and c not in refused]
    assert not failures, "\n".join(json.dumps(c) for c in failures)
    for case in (c for c in cases if c not in refused):
        # Only Triton custom calls, one per planned launch: no JAX arithmetic on the data on the CUDA path.
        assert set(case["ops"]) <= {"stablehlo.case", "stablehlo.constant", "stablehlo.custom_call",
                                    "stablehlo.return"}, case
        # Attention: K sums + block lists, Q and K quantization, attention; or for at most 64 queries a head in
        # the fp16 P.V mode, K sums + block lists, split-KV attention and the combine of its splits.
        # predict_mask: pool Q, pool K, select.
        assert case["triton_calls"] == len(case["launches"]), case
        if case["kind"] == "lower_predict":
            expected = ["pool_q", "pool_k", "select"]
        elif case["case"][5] <= 64 and case["case"][11] == "fp16":
            expected = ["sums_and_lists", "split_kv", "combine"]
        else:
            expected = ["sums_and_lists", "quantize", "attention"]
        assert case["launches"] == expected, case


def test_gluon_kernel_lowers_through_the_adapter_with_its_launched_warps(lowered):
    """sm_90 hd128 fp16-P.V calls take the Gluon kernel (the table); jax-triton must compile it as Gluon and launch
    all its warps (12: two consumer warpgroups and a loader, 4 asked for) under the 168-register cap."""
    _, _, cases, output = lowered["90"]
    gluon_cases = [c for c in cases if c.get("attention_kernel") == "attention_sm90_kernel"]
    assert len(gluon_cases) >= 2, output
    for case in gluon_cases:
        assert case["attention_maxnreg"] == 168 and len(case["gluon"]) == 1, case
        (compiled,) = case["gluon"]
        assert compiled["warps"] == 12 and compiled["maxnreg"] == 168 and compiled["reqntid"] == ["384"], case
        assert {"40", "232"} <= set(compiled["setmaxnreg"]), case
        assert compiled["wgmma"] == sorted({"s32.s8.s8", "f32.f16.f16"}), case
        # its descriptor scratch travels as the call's last result, where Triton's hidden parameter sits
        assert case["scratch"] and [str(case["scratch"]), "ui8"] in [list(r) for r in case["last_results"]], case
    _, _, cases_80, _ = lowered["80"]
    assert not any(c.get("attention_kernel") == "attention_sm90_kernel" for c in cases_80)
