"""benchmarks/decode.py --smoke end to end in a child process (on CPU: the Triton interpreter, JAX's CPU path, SDPA's
math backend as the peer): every row and system recorded, accuracy against the float64 reference, the window+sink
row's live fraction and proportional time, the targets' verdicts, and `--targets` reading the results file back."""
import json
import os
import subprocess
import sys
from pathlib import Path

from sparse_sageattn.reference import COS_MIN, REL_L1_MAX

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "decode.py"


def run_decode(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_decode_smoke(tmp_path):
    stdout = run_decode("--smoke", "--out", str(tmp_path))
    (path,) = tmp_path.glob("decode-*.json")
    data = json.loads(path.read_text())
    meta, records = data["meta"], data["records"]
    on_gpu = meta["device"] == "cuda"
    assert meta["gpu"] and meta["torch"] and meta["triton"] and meta["date"]
    assert meta["peer"] == ("sdpa_flash" if on_gpu else "sdpa_math")
    assert [(r["n_q"], r["n_k"], r["batch"], bool(r["window"])) for r in records] == [
        (1, 256, 2, False), (16, 256, 2, False), (1, 512, 1, False), (1, 512, 1, True)]

    for r in records:
        s = r["systems"]
        assert r["kv_bytes"] == 2 * r["batch"] * r["heads_kv"] * r["n_k"] * r["head_dim"] * 2  # fp16
        for name in ("sparse_sageattn", meta["peer"]):
            assert s[name]["status"] == "ok", s[name]
            assert s[name]["ms"] > 0 and s[name]["tb_s"] > 0
            assert s[name]["cosine"] >= COS_MIN and s[name]["rel_l1"] <= REL_L1_MAX, (r["label"], name)
        assert r["ratios"][meta["peer"]] == s["sparse_sageattn"]["ms"] / s[meta["peer"]]["ms"]
        assert s["sdpa_cudnn"]["status"] in (("ok", "unsupported") if on_gpu else ("unsupported",))
        kv_lens = s["sparse_sageattn_kv_lens"]
        if meta["kv_lens_supported"]:
            assert kv_lens["status"] == "ok" and kv_lens["bitwise_equal_to_plain"], kv_lens
            assert kv_lens["cosine"] >= COS_MIN
        else:
            assert kv_lens["status"] == "skipped"
        jax = s.get("sparse_sageattn_jax")
        if jax is not None:  # JAX installed: the CPU path is close to the kernels, on CUDA the same bits
            assert jax["status"] == "ok", jax
            assert jax["cosine"] >= COS_MIN and jax["ms"] > 0
            assert isinstance(r["jax_bitwise_equal"], bool)
            assert r["jax_bitwise_equal"] or not on_gpu

    dense, window = records[2], records[3]
    assert window["mask_equals_window_or_sink"]
    # window 128 keys and sink 64 keys of 512: key blocks 0, 6 and 7 of 8
    assert window["live_key_blocks"] == 3 and window["key_blocks"] == 8 and window["live_fraction"] == 3 / 8
    assert window["peer_keys"] == 3 * 64 and window["systems"][meta["peer"]]["kv_bytes"] == window["kv_bytes"] * 3 / 8
    prop = window["proportional"]["sparse_sageattn"]
    assert prop["dense_ms"] == dense["systems"]["sparse_sageattn"]["ms"]
    assert prop["live_fraction_x_dense_ms"] == 3 / 8 * prop["dense_ms"]

    # the INT8 cache's attend: the contract's accuracy against the reference of the values it holds (e4m3 values:
    # recorded apart, against the values as given they sit at the e4m3 format's floor), its bytes against bf16
    # K+V, the cost of a one-token append
    for r in records:
        for name, read_fraction, memory_low in (("int8", 3 / 4, 0.75), ("e4m3", (2 + 1 / 64) / 4, 0.5)):
            cached = r["systems"][f"sparse_sageattn_{name}_cache"]
            assert cached["status"] == "ok", cached
            held = cached if name == "int8" else cached["vs_held_values"]
            assert held["cosine"] >= COS_MIN and held["rel_l1"] <= REL_L1_MAX and cached["ms"] > 0
            assert name == "int8" or cached["cosine"] < held["cosine"]  # the e4m3 format's own error
            assert cached["cache_over_bf16_kv"] > memory_low and cached["append_one_token_ms"] > 0
            assert cached["kv_bytes"] == int(r["kv_bytes"] * read_fraction)
            jax_cached = r["systems"].get(f"sparse_sageattn_jax_{name}_cache")
            if jax_cached is not None:  # the JAX cache over the same arrays: close on CPU, the same bits on CUDA
                assert jax_cached["status"] == "ok", jax_cached
                jax_held = jax_cached if name == "int8" else jax_cached["vs_held_values"]
                assert jax_held["cosine"] >= COS_MIN and jax_cached["ms"] > 0
                assert jax_cached["bitwise_equal_to_torch"] or not on_gpu

    rows = [r["row"] for r in records[:3]]
    formats = ("_native", "_e4m3")
    expected = [rows[0], *(rows[0] + f for f in formats), rows[1], rows[2], *(rows[2] + f for f in formats)]
    assert [t["row"] for t in data["targets"]] == expected  # the caches' verdicts at Nq=1
    limits = {"_native": 0.8, "_e4m3": 1 / 1.7}
    assert all(t["verdict"] in ("PASS", "MISS") and t["limit"] == next(
        (limit for f, limit in limits.items() if t["row"].endswith(f)), 1.6) for t in data["targets"])
    lines = stdout.rstrip().splitlines()
    assert lines[-14].startswith("row ") and lines[-9].startswith("row ")  # the tables come last

    targets = run_decode("--targets", str(path))
    assert "1.6x" in targets and targets.count("PASS") + targets.count("MISS") == 7
