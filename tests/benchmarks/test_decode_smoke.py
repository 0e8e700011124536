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

    # the INT8 cache's attend: as accurate, its bytes against bf16 K+V, the cost of a one-token append
    for r in records:
        int8 = r["systems"]["sparse_sageattn_int8_cache"]
        assert int8["status"] == "ok", int8
        assert int8["cosine"] >= COS_MIN and int8["rel_l1"] <= REL_L1_MAX and int8["ms"] > 0
        assert int8["cache_over_bf16_kv"] > 0.75 and int8["append_one_token_ms"] > 0
        assert int8["kv_bytes"] == r["kv_bytes"] * 3 // 4
        jax_int8 = r["systems"].get("sparse_sageattn_jax_int8_cache")
        if jax_int8 is not None:  # the JAX cache over the same arrays: close on CPU, the same bits on CUDA
            assert jax_int8["status"] == "ok", jax_int8
            assert jax_int8["cosine"] >= COS_MIN and jax_int8["ms"] > 0
            assert jax_int8["bitwise_equal_to_torch"] or not on_gpu

    rows = [r["row"] for r in records[:3]]
    expected = [rows[0], rows[0] + "_int8", rows[1], rows[2], rows[2] + "_int8"]  # int8 verdicts at Nq=1
    assert [t["row"] for t in data["targets"]] == expected
    assert all(t["verdict"] in ("PASS", "MISS") and t["limit"] == (0.8 if t["row"].endswith("_int8") else 1.6)
               for t in data["targets"])
    assert stdout.rstrip().splitlines()[-5].startswith("row ")  # the table comes last

    targets = run_decode("--targets", str(path))
    assert "1.6x" in targets and targets.count("PASS") + targets.count("MISS") == 5
