"""benchmarks/run.py --smoke end to end in a child process (on CPU: the Triton interpreter, JAX's CPU path and
compiled FlexAttention): every system's plumbing, the kernel breakdown, and FlexAttention's BlockMask computing the
same attention as sparse_sageattn's mask (causal and not) against the float64 reference."""
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def test_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "run.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("*.json")
    data = json.loads(path.read_text())
    records = {(r["density"], r["causal"], r["system"]): r for r in data["records"]}
    for density in (1.0, 0.5):
        for causal in (False, True):
            for system in ("sparse_sageattn", "sparse_sageattn_jax", "flex_attention"):
                r = records[(density, causal, system)]
                assert "error" not in r, r["error"]
                assert r["cosine"] >= 0.9999 and r["ms"] > 0, (density, causal, system)
            ours = records[(density, causal, "sparse_sageattn")]
            assert set(ours["kernels_ms"]) == {"channel_sums", "quantize_k", "quantize_q", "block_lists", "attention"}
            assert 0 < ours["mem_bound_bytes"] <= ours["plan_scratch_bytes"]
    assert records[(0.5, True, "sparse_sageattn")]["live_fraction"] < 0.5
    report = subprocess.run([sys.executable, str(BENCH_DIR / "report.py"), str(path)], capture_output=True, text=True)
    assert report.returncode == 0 and "Accuracy" in report.stdout and ": PASS" in report.stdout
