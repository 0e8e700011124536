"""benchmarks/generate.py --smoke end to end in a child process: a tiny random Llama through HF `model.generate`
(on CPU the kernels run through the Triton interpreter, SDPA's math backend is the forced peer and cuDNN / flash are
recorded as skipped): every path and cache recorded with prefill and decode times, ours with the dynamic, the
static and the INT8 cache, greedy tokens compared with the reference backend, the targets' verdicts, the table last, and
`--targets` reading the results file back."""
import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"
PROMPTS, NEW_TOKENS = (40, 70), 3


def run_generate(*args):
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_generate_smoke(tmp_path):
    stdout = run_generate("--smoke", "--out", str(tmp_path))
    (path,) = tmp_path.glob("generate-*.json")
    data = json.loads(path.read_text())
    meta, records = data["meta"], data["records"]
    on_gpu = meta["device"] == "cuda"
    assert meta["gpu"] and meta["torch"] and meta["transformers"] and meta["triton"] and meta["date"]
    assert meta["smoke"] and meta["prompts"] == list(PROMPTS) and meta["new_tokens"] == NEW_TOKENS
    assert meta["model_config"]["num_hidden_layers"] == 2 and meta["model_config"]["head_dim"] == 64
    slug = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in meta["gpu"]).strip("_")  # NVIDIA_H200
    assert path.name == f"generate-{slug}-{meta['date']}.json"

    forced_peers = ("sdpa_cudnn", "sdpa_flash") if on_gpu else ("sdpa_math",)
    ours_caches = ("dynamic", "static", "static_eager", "int8") if on_gpu else ("dynamic", "static", "int8")
    by_key = {(r["path"], r["cache"], r["prompt"]): r for r in records}
    assert len(by_key) == len(records) == len(meta["configs"]) * len(PROMPTS)
    for prompt in PROMPTS:
        for name in ("sdpa_cudnn", "sdpa_flash"):
            r = by_key[(name, "dynamic", prompt)]
            assert r["status"] in (("ok", "unsupported") if on_gpu else ("skipped",)), r
        ran = [by_key[(p, "dynamic", prompt)] for p in (*forced_peers, "sdpa")]
        ran += [by_key[("sparse_sageattn", c, prompt)] for c in ours_caches]
        for r in ran:
            if r["path"] in forced_peers and r["status"] == "unsupported":
                continue
            assert r["status"] == "ok", r
            assert r["attn_implementation_set"] == r["attn_implementation"]
            assert r["prefill_ms"] > 0 and r["decode_tok_s"] > 0 and r["decode_steps"] == NEW_TOKENS - 1
            assert len(r["generate_s"]) == len(r["generate_1_s"]) == meta["reps"]
            assert r["prefill_ms"] == sorted(r["generate_1_s"])[len(r["generate_1_s"]) // 2] * 1e3
            assert len(r["tokens"]) == NEW_TOKENS and r["tokens_stable_over_reps"]
            assert 0 <= r["leading_tokens_equal"] <= NEW_TOKENS and r["token_reference"] in forced_peers
            assert r["ratio"] > 0 and r["baseline"] in forced_peers
        static = by_key[("sparse_sageattn", "static", prompt)]
        assert static["generate_kwargs"]["cache_implementation"] == "static"
        assert static["generate_kwargs"]["max_cache_len"] == prompt + NEW_TOKENS
        assert static["compiled"] == on_gpu
        int8 = by_key[("sparse_sageattn", "int8", prompt)]
        assert int8["generate_kwargs"]["int8_cache_len"] == prompt + NEW_TOKENS
        assert "cache_implementation" not in int8["generate_kwargs"]
        # the first greedy token comes from the prefill's logits: ours and the reference backend agree on it
        for cache in ours_caches:
            assert by_key[("sparse_sageattn", cache, prompt)]["leading_tokens_equal"] >= 1
        base = by_key[(static["baseline"], "dynamic", prompt)]
        assert base["ratio"] == 1.0

    expected = [(prompt, cache) for prompt in PROMPTS for cache in ("dynamic", "int8")]
    assert [(t["prompt"], t["cache"]) for t in data["targets"]] == expected
    assert all(t["verdict"] in ("PASS", "MISS") and t["limit"] == (1.0 if t["cache"] == "dynamic" else 1.2)
               for t in data["targets"])
    ours = by_key[("sparse_sageattn", "dynamic", PROMPTS[0])]
    assert data["targets"][0]["ratio"] == ours["ratio"]
    assert data["targets"][1]["ratio"] == by_key[("sparse_sageattn", "int8", PROMPTS[0])]["ratio"]
    lines = stdout.rstrip().splitlines()
    assert lines[-len(records) - 1].startswith("path ")  # the table comes last, one line per record

    targets = run_generate("--targets", str(path))
    assert "1.0x" in targets and targets.count("PASS") + targets.count("MISS") == 2 * len(PROMPTS)
