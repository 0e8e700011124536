"""The benchmark scripts' --smoke runs end to end in a child process (on CPU: the Triton interpreter, JAX's CPU
path and compiled FlexAttention). run.py: every system's plumbing, the kernel breakdown, and FlexAttention's
BlockMask computing the same attention as sparse_sageattn's mask (causal and not) against the float64 reference.
predict.py: the predicted-mask benchmark's plumbing, and records that say what they measured."""
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def smoke_results(script, tmp_path, pattern="*.json"):
    """Runs benchmarks/<script> --smoke --out tmp_path and returns its one results file, parsed."""
    proc = subprocess.run([sys.executable, str(BENCH_DIR / script), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob(pattern)
    return path, json.loads(path.read_text())


def test_run_smoke(tmp_path):
    path, data = smoke_results("run.py", tmp_path)
    records = {(r["density"], r["causal"], r["system"]): r for r in data["records"]}
    for density in (1.0, 0.5):
        for causal in (False, True):
            for system in ("sparse_sageattn", "sparse_sageattn_jax", "flex_attention"):
                r = records[(density, causal, system)]
                assert "error" not in r, r["error"]
                assert r["cosine"] >= 0.9999 and r["ms"] > 0, (density, causal, system)
            ours = records[(density, causal, "sparse_sageattn")]
            assert set(ours["kernels_ms"]) == {"sums_and_lists", "quantize", "attention"}
            assert 0 < ours["mem_bound_bytes"] <= ours["plan_scratch_bytes"]
        fp8 = records[(1.0, causal, "sparse_sageattn_fp8")]  # dense only
        assert "error" not in fp8, fp8["error"]
        assert fp8["cosine"] >= fp8["floor_cosine"] - 1e-4 and 0.99 < fp8["floor_cosine"] < 0.9999, fp8
    assert (0.5, False, "sparse_sageattn_fp8") not in records
    assert records[(0.5, True, "sparse_sageattn")]["live_fraction"] < 0.5
    report = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), str(path)], capture_output=True, text=True)
    assert report.returncode == 0 and "Accuracy" in report.stdout and ": PASS" in report.stdout


def test_predict_smoke(tmp_path):
    _, data = smoke_results("predict.py", tmp_path, "*-predict.json")
    assert data["meta"]["inputs"].startswith("tests/predict_cases.py local_global")
    assert len(data["records"]) == 6  # 1 length x causal or not x 3 options
    for r in data["records"]:
        assert 0 < r["density"] < 1  # the structured inputs let every option drop blocks
        # the reference and the kernel compare the same rows and heads (a mix-up gives a cosine far below); these
        # sharp structured inputs are not the contract's normal inputs, so its bound (COS_MIN) is not the test
        assert r["dense_cosine"] > 0.999
        assert 0.9 < r["cosine"] < 1  # a prediction that keeps the structure: close to dense, not equal
