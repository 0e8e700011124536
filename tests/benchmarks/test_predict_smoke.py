"""benchmarks/predict.py --smoke in a child process (on CPU: the real kernels through the Triton interpreter): the
predicted-mask benchmark's plumbing, and a results file whose records say what they measured."""
import json
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def test_smoke_run(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "predict.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (path,) = tmp_path.glob("*-predict.json")
    data = json.loads(path.read_text())
    assert data["meta"]["inputs"].startswith("tests/predict_cases.py local_global")
    assert len(data["records"]) == 6  # 1 length x causal or not x 3 options
    for r in data["records"]:
        assert 0 < r["density"] < 1  # the structured inputs let every option drop blocks
        # the reference and the kernel compare the same rows and heads (a mix-up gives a cosine far below); these
        # sharp structured inputs are not the contract's normal inputs, so its bound (COS_MIN) is not the test
        assert r["dense_cosine"] > 0.999
        assert 0.9 < r["cosine"] < 1  # a prediction that keeps the structure: close to dense, not equal
