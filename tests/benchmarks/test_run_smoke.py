"""The benchmark scripts' --smoke runs end to end in a child process (on CPU: the Triton interpreter, JAX's CPU
path and compiled FlexAttention). run.py: every system's plumbing, the kernel breakdown, FlexAttention's
BlockMask computing the same attention as sparse_sageattn's mask (random and causal window + sink, GQA) against
the float64 reference, and the JAX pair on NHD arrays (jax.nn's cuDNN call unsupported on CPU: a note).
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
    by_shape = {}
    for r in data["records"]:
        by_shape.setdefault((r["batch"], r["heads"], r["kv_heads"], r["mask"]), {})[
            (r["density"], r["causal"], r["system"])] = r
    records = by_shape[(1, 2, 2, "random")]
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

    # the causal window + sink of sparse_sageattn.torch's builders, GQA 2/1: FlexAttention's BlockMask from the
    # same mask computes the same attention (against the float64 reference), and the work counts agree
    (window,) = [records for (b, h, kv, mask), records in by_shape.items() if mask.startswith("window")]
    density = {d for d, _, _ in window}.pop()
    assert 0.5 < density < 0.9 and set(window) == {(density, True, s) for s in (
        "sparse_sageattn", "sparse_sageattn_jax", "flex_attention")}
    for r in window.values():
        assert "error" not in r, r["error"]
        assert r["cosine"] >= 0.9999 and r["kv_heads"] == 1 and r["heads"] == 2, r
        assert abs(r["live_fraction"] - density * 385 / 768) < 1e-3  # density: the share of the causal pairs
    assert set(window[(density, True, "sparse_sageattn")]["kernels_ms"]) == {"sums_and_lists", "quantize",
                                                                               "attention"}

    # the JAX pair on NHD arrays, B=2, GQA 2/1: our call runs; on CPU jax.nn's cuDNN call is recorded as
    # unsupported (a note, not an error); on a GPU it runs
    peer = by_shape[(2, 2, 1, "random")]
    ours_nhd, cudnn = peer[(1.0, True, "sparse_sageattn_jax_nhd")], peer[(1.0, True, "jax_cudnn")]
    assert "error" not in ours_nhd and ours_nhd["cosine"] >= 0.9999 and ours_nhd["ms"] > 0, ours_nhd
    # the NHD sample picks the same rows and heads as the HND one (a mix-up would cost far more than rounding)
    assert abs(ours_nhd["cosine"] - peer[(1.0, True, "sparse_sageattn_jax")]["cosine"]) < 1e-5
    assert "error" not in cudnn, cudnn
    if data["meta"]["device"] == "cpu":
        assert "unsupported" in cudnn and "ms" not in cudnn, cudnn
    else:
        assert cudnn["cosine"] > 0.999 and cudnn["ms"] > 0, cudnn
    assert "error" not in peer[(1.0, True, "sdpa_flash")], peer[(1.0, True, "sdpa_flash")]  # enable_gqa

    report = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), str(path)], capture_output=True, text=True)
    assert report.returncode == 0 and "Accuracy" in report.stdout and ": PASS" in report.stdout
    assert "window 64 + sink 4" in report.stdout
    assert ("1 unsupported by their system" in report.stdout) == (data["meta"]["device"] == "cpu"), report.stdout


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
