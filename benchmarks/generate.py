"""HF transformers `model.generate` decode throughput: sparse_sageattn's adapter against SDPA's backends.

The model: a randomly initialised LlamaForCausalLM built from a LlamaConfig (no download): 8 layers, hidden 2048,
GQA 16 query / 4 kv heads, head dim 128, intermediate 5632, vocab 32000, fp16 on CUDA. Greedy (do_sample=False),
batch 1, min_new_tokens = max_new_tokens = 64 (EOS never stops early), random prompts of 2048 and 8192 tokens (the
same tokens for every path). One model: the paths switch it with `model.set_attn_implementation`.

Paths (attn_implementation, SDPA backend forced with `torch.nn.attention.sdpa_kernel` around generate):
  sparse_sageattn   attn_implementation="sparse_sageattn" after sparse_sageattn.torch.transformers.register()
  sdpa_cudnn        "sdpa", SDPBackend.CUDNN_ATTENTION forced
  sdpa_flash        "sdpa", SDPBackend.FLASH_ATTENTION forced
  sdpa              "sdpa", torch's own choice
  sdpa_math         "sdpa", SDPBackend.MATH forced: without CUDA the forced backend, sdpa_cudnn and sdpa_flash are
                    then recorded as skipped (a note); on CUDA only with --paths
Caches:
  dynamic           the default DynamicCache
  static            cache_implementation="static" (max_cache_len = prompt + new tokens), as generate runs it: on
                    CUDA generate compiles the decode forward (torch.compile, transformers' CompileConfig defaults:
                    mode "reduce-overhead", fullgraph False); the dynamo state is reset first, so the warm-up
                    includes the compilation; graphs and graph breaks are recorded
  static_eager      the same cache with disable_compile=True
  int8              ours only: past_key_values=sparse_sageattn.torch.transformers.Int8Cache(config, prompt + new
                    tokens), a fresh one per generate call (K kept INT8 as it grows, attention reading it as is)
  ours runs all four by default (no static_eager without CUDA, where static is eager already), SDPA the dynamic
  cache (--sdpa-caches adds the others).

Timing, per (prompt, path, cache): one warm-up generate(new tokens) + generate(1 token) (compilation included),
then --reps repetitions of both, each timed with torch.cuda.synchronize() + time.perf_counter.
  prefill_ms    median of generate(1 token)
  decode_tok_s  (new - 1) / (median generate(new) - median generate(1)): the new - 1 decode steps after prefill
  ratio         decode_tok_s / that of the fastest forced SDPA backend with the dynamic cache at that prompt
Greedy tokens: per record, the number of leading generated tokens equal to sdpa_cudnn's (dynamic cache, same
prompt; the first forced backend that ran when cuDNN did not). Informational: with random weights the logits are
close together and rounding differences flip a token after a few steps.
Results: <out>/generate-<gpu>-<date>.json (environment, configs, raw times), rewritten after every record; targets,
then a table last.

    python benchmarks/generate.py [--out DIR] [--prompts 2048,8192] [--caches ...] [--sdpa-caches ...]   (GPU)
    python benchmarks/generate.py --targets [RESULTS.json]     the targets (and their verdicts from a results file)
    TRITON_INTERPRET=1 python benchmarks/generate.py --smoke --out /tmp/gen_smoke
        a tiny Llama (2 layers, hidden 128, 4 / 2 heads, head dim 64, vocab 256), prompts 40 and 70, 3 new tokens:
        the plumbing end to end (on CPU the kernels run through the Triton interpreter; times mean nothing)
"""
import argparse
import contextlib
import datetime
import gc
import json
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

MODEL = dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=4, head_dim=128, max_position_embeddings=16384)
SMOKE_MODEL = dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=64, max_position_embeddings=1024)
PROMPTS, SMOKE_PROMPTS = (2048, 8192), (40, 70)
NEW_TOKENS, SMOKE_NEW_TOKENS = 64, 3
REPS = 3
SEED = 0
TARGET_RATIO = 1.0  # ours (dynamic cache) decode tokens/s >= 1.0x the fastest forced SDPA backend's
INT8_TARGET_RATIO = 1.2  # ours with the INT8 cache: >= 1.2x

OURS, SDPA_DEFAULT = "sparse_sageattn", "sdpa"
SDPA_CUDNN, SDPA_FLASH, SDPA_MATH = "sdpa_cudnn", "sdpa_flash", "sdpa_math"
BACKENDS = {SDPA_CUDNN: "CUDNN_ATTENTION", SDPA_FLASH: "FLASH_ATTENTION", SDPA_MATH: "MATH", SDPA_DEFAULT: None}
GPU_PATHS = (SDPA_CUDNN, SDPA_FLASH, SDPA_DEFAULT, OURS)
CPU_PATHS = (SDPA_CUDNN, SDPA_FLASH, SDPA_MATH, SDPA_DEFAULT, OURS)  # the first two recorded as skipped
TOKEN_REFERENCES = (SDPA_CUDNN, SDPA_FLASH, SDPA_MATH)  # the first that ran is the greedy-token reference
CACHES = ("dynamic", "static", "static_eager", "int8")

TARGETS_TEXT = (f"ours (sparse_sageattn, dynamic cache) decode tokens/s >= {TARGET_RATIO}x the fastest forced SDPA "
                f"backend's (sdpa_cudnn, sdpa_flash; dynamic cache) at each prompt length, HF generate, batch 1; "
                f"ours with the INT8 cache >= {INT8_TARGET_RATIO}x")


def forced(path):
    return path in (SDPA_CUDNN, SDPA_FLASH, SDPA_MATH)


def implementation(path):
    return OURS if path == OURS else "sdpa"


def median(xs):
    return statistics.median(xs) if xs else None


class Bench:
    """One model on one device; every framework import happens here (after TRITON_INTERPRET is decided)."""

    def __init__(self, device, model_config, new_tokens, reps):
        import torch
        import transformers
        from transformers import LlamaConfig, LlamaForCausalLM

        from sparse_sageattn.torch.transformers import register

        register()
        self.torch, self.transformers = torch, transformers
        self.device, self.cuda = device, device == "cuda"
        self.new_tokens, self.reps = new_tokens, reps
        self.config = LlamaConfig(**model_config)
        torch.manual_seed(SEED)
        with torch.device(device):  # initialised where it runs
            model = LlamaForCausalLM._from_config(self.config, attn_implementation="sdpa", dtype=torch.float16)
        self.model = model.to(device).eval()
        self.eos = self.config.eos_token_id
        self.n_params = sum(p.numel() for p in self.model.parameters())

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def prompt(self, n):
        gen = self.torch.Generator().manual_seed(SEED + n)
        return self.torch.randint(0, self.config.vocab_size, (1, n), generator=gen).to(self.device)

    def generate_kwargs(self, cache, n_new, prompt_len):
        kwargs = dict(do_sample=False, max_new_tokens=n_new, min_new_tokens=n_new, pad_token_id=self.eos)
        if cache != "dynamic":
            # one buffer size for both calls of a config: generate(1) reuses generate(new)'s shapes
            kwargs.update(cache_implementation="static", max_cache_len=prompt_len + self.new_tokens)
        if cache == "static_eager":
            kwargs["disable_compile"] = True
        if cache == "int8":
            kwargs = dict(kwargs, int8_cache_len=prompt_len + self.new_tokens)
            del kwargs["cache_implementation"], kwargs["max_cache_len"]
        return kwargs

    def timed(self, ids, kwargs, context):
        kwargs = dict(kwargs)
        self.sync()
        start = time.perf_counter()
        if "int8_cache_len" in kwargs:  # a fresh cache per call, made inside the timed region like generate's own
            from sparse_sageattn.torch.transformers import Int8Cache

            kwargs["past_key_values"] = Int8Cache(self.model.config, kwargs.pop("int8_cache_len"))
        with context():
            out = self.model.generate(ids, **kwargs)
        self.sync()
        return time.perf_counter() - start, out

    def run(self, path, cache, prompt_len):
        torch = self.torch
        record = dict(path=path, cache=cache, prompt=prompt_len, new_tokens=self.new_tokens, batch=1,
                      attn_implementation=implementation(path), sdpa_backend=BACKENDS.get(path),
                      compiled=bool(self.cuda and cache == "static"), reps=self.reps)
        if path in (SDPA_CUDNN, SDPA_FLASH) and not self.cuda:
            record.update(status="skipped", reason="no CUDA: a forced GPU backend (sdpa_math stands in)")
            return record
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = BACKENDS.get(path)
        context = (lambda: sdpa_kernel(getattr(SDPBackend, backend))) if backend else contextlib.nullcontext
        ids = self.prompt(prompt_len)
        long_kwargs = self.generate_kwargs(cache, self.new_tokens, prompt_len)
        one_kwargs = self.generate_kwargs(cache, 1, prompt_len)
        record["generate_kwargs"] = {k: v for k, v in long_kwargs.items() if k != "pad_token_id"}
        counters = None
        if record["compiled"]:
            import torch._dynamo
            from torch._dynamo.utils import counters

            torch._dynamo.reset()  # compiles under this config's backend, inside its warm-up
            counters.clear()
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                self.model.set_attn_implementation(implementation(path))
                record["attn_implementation_set"] = self.model.config._attn_implementation
                warm_long, out = self.timed(ids, long_kwargs, context)
                warm_one, _ = self.timed(ids, one_kwargs, context)
                record["warmup_s"] = dict(generate_new=warm_long, generate_1=warm_one)
                if counters is not None:
                    record["dynamo_after_warmup"] = dynamo_stats(counters)
                    record["compiled"] = record["dynamo_after_warmup"]["unique_graphs"] > 0  # what generate did
                tokens = out[0, prompt_len:].tolist()
                times_long, times_one, stable = [], [], True
                for _ in range(self.reps):
                    t, out = self.timed(ids, long_kwargs, context)
                    times_long.append(t)
                    stable &= out[0, prompt_len:].tolist() == tokens
                    times_one.append(self.timed(ids, one_kwargs, context)[0])
            except Exception as e:  # one failing path must not lose the others
                unsupported = forced(path) and "No available kernel" in str(e)
                record.update(status="unsupported" if unsupported else "error",
                              error=f"{type(e).__name__}: {str(e)[:400]}",
                              warnings=sorted({str(w.message)[:300] for w in caught})[:5])
                return record
        if counters is not None:
            record["dynamo_after_reps"] = dynamo_stats(counters)
        gen_ms, prefill_ms = median(times_long) * 1e3, median(times_one) * 1e3
        decode_ms = gen_ms - prefill_ms
        record.update(status="ok", generate_s=times_long, generate_1_s=times_one, generate_ms=gen_ms,
                      prefill_ms=prefill_ms, decode_ms=decode_ms, decode_steps=self.new_tokens - 1,
                      decode_tok_s=(self.new_tokens - 1) / decode_ms * 1e3 if decode_ms > 0 else None,
                      tokens=tokens, tokens_stable_over_reps=stable, eos_in_tokens=self.eos in tokens)
        if self.cuda:
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return record


def dynamo_stats(counters):
    return dict(unique_graphs=counters["stats"]["unique_graphs"],
                graph_breaks=sum(counters["graph_break"].values()),
                graph_break_reasons=sorted(counters["graph_break"])[:5])


# ---- summaries ----------------------------------------------------------------------------------------------------

def ok(records, **match):
    return [r for r in records if r["status"] == "ok" and all(r[k] == v for k, v in match.items())]


def baseline(records, prompt):
    """The fastest forced SDPA backend with the dynamic cache at this prompt: (path, tokens/s), or (None, None)."""
    rows = [r for r in ok(records, prompt=prompt, cache="dynamic") if forced(r["path"]) and r["decode_tok_s"]]
    best = max(rows, key=lambda r: r["decode_tok_s"], default=None)
    return (best["path"], best["decode_tok_s"]) if best else (None, None)


def leading_equal(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def add_summaries(records):
    """Ratios to the fastest forced backend and greedy tokens against the reference, per record."""
    for prompt in sorted({r["prompt"] for r in records}):
        base_path, base_tok_s = baseline(records, prompt)
        refs = {r["path"]: r for r in ok(records, prompt=prompt, cache="dynamic")}
        ref = next((refs[p] for p in TOKEN_REFERENCES if p in refs), None)
        for r in records:
            if r["prompt"] != prompt or r["status"] != "ok":
                continue
            r["baseline"] = base_path
            r["ratio"] = r["decode_tok_s"] / base_tok_s if base_tok_s and r["decode_tok_s"] else None
            if ref is not None:
                r["token_reference"] = ref["path"]
                r["leading_tokens_equal"] = leading_equal(r["tokens"], ref["tokens"])


def target_verdicts(records):
    verdicts = []
    for prompt in sorted({r["prompt"] for r in records}):
        base_path, base_tok_s = baseline(records, prompt)
        for cache, limit in (("dynamic", TARGET_RATIO), ("int8", INT8_TARGET_RATIO)):
            found = list(ok(records, path=OURS, cache=cache, prompt=prompt))
            if cache != "dynamic" and not found:
                continue  # the INT8 cache was not run
            ours = next(iter(found), {}).get("decode_tok_s")
            ratio = ours / base_tok_s if ours and base_tok_s else None
            verdicts.append(dict(prompt=prompt, cache=cache, ours_tok_s=ours, baseline=base_path,
                                 baseline_tok_s=base_tok_s, ratio=ratio, limit=limit,
                                 verdict="NO DATA" if ratio is None else "PASS" if ratio >= limit else "MISS"))
    return verdicts


def print_targets(data=None):
    print("Target: " + TARGETS_TEXT)
    if data is None:
        return
    gpu = data["meta"].get("gpu")
    for v in data.get("targets") or target_verdicts(data["records"]):
        detail = ("" if v["ratio"] is None else
                  f" {v['ours_tok_s']:.1f} / {v['baseline_tok_s']:.1f} tok/s = {v['ratio']:.2f}x ({v['baseline']})")
        print(f"  prompt {v['prompt']:<6} {v.get('cache', 'dynamic'):<8} {v['verdict']:<7}{detail} ({gpu})")


def fmt(value, spec, missing="—"):
    return missing if value is None else format(value, spec)


def print_table(records, new_tokens):
    print("ratio: decode tok/s over the fastest forced SDPA backend's (dynamic cache) at that prompt; tokens=ref: "
          f"leading greedy tokens equal to the first of {', '.join(TOKEN_REFERENCES)} that ran (dynamic cache)")
    print(f"{'path':<16} {'cache':<13} {'prompt':>6} {'prefill ms':>10} {'decode tok/s':>12} {'ratio':>6} "
          f"{'tokens=ref':>10}")
    for r in records:
        if r["status"] != "ok":
            print(f"{r['path']:<16} {r['cache']:<13} {r['prompt']:>6} {r['status']:>10}")
            continue
        same = r.get("leading_tokens_equal")
        print(f"{r['path']:<16} {r['cache']:<13} {r['prompt']:>6} {r['prefill_ms']:10.2f} "
              f"{fmt(r['decode_tok_s'], '12.1f'):>12} {fmt(r.get('ratio'), '.2f'):>6} "
              f"{'—' if same is None else f'{same}/{new_tokens}':>10}")


# ---- the command --------------------------------------------------------------------------------------------------

def int_list(text):
    return tuple(int(x) for x in text.split(",") if x)


def cache_list(text):
    caches = tuple(x for x in text.split(",") if x)
    bad = [c for c in caches if c not in CACHES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown cache(s) {bad}; choose from {CACHES}")
    return caches


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="the tiny model, prompts 40 and 70, 3 new tokens (CPU too)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    p.add_argument("--prompts", type=int_list, default=None,
                   help=f"prompt lengths, comma-separated (default {','.join(map(str, PROMPTS))}; "
                        f"--smoke {','.join(map(str, SMOKE_PROMPTS))})")
    p.add_argument("--new-tokens", type=int, default=None,
                   help=f"new tokens per generate (default {NEW_TOKENS}; --smoke {SMOKE_NEW_TOKENS})")
    p.add_argument("--reps", type=int, default=REPS, help="timed repetitions per config, after one warm-up")
    p.add_argument("--paths", default=None, help="comma-separated subset of the paths (default: all of the device)")
    p.add_argument("--caches", type=cache_list, default=None,
                   help="ours' caches (default dynamic,static,static_eager,int8; without CUDA dynamic,static,int8)")
    p.add_argument("--sdpa-caches", type=cache_list, default=("dynamic",), help="the SDPA paths' caches")
    p.add_argument("--targets", nargs="?", const="", metavar="RESULTS.json",
                   help="print the targets (with a results file: the verdicts in it) and exit")
    args = p.parse_args(argv)
    if args.new_tokens is not None and args.new_tokens < 2:
        p.error("--new-tokens must be at least 2 (decode time is generate(new) - generate(1))")
    if args.reps < 1:
        p.error("--reps must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.targets is not None:
        print_targets(json.loads(Path(args.targets).read_text()) if args.targets else None)
        return 0
    import torch

    cuda = torch.cuda.is_available()
    if not cuda:
        if not args.smoke:
            print("no CUDA device: only --smoke runs here", file=sys.stderr)
            return 2
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before the kernels' import
    import transformers
    import triton
    from transformers.generation import CompileConfig

    from run import environment, results_path, write_json

    device = "cuda" if cuda else "cpu"
    model_config = SMOKE_MODEL if args.smoke else MODEL
    prompts = sorted(args.prompts or (SMOKE_PROMPTS if args.smoke else PROMPTS))
    new_tokens = args.new_tokens or (SMOKE_NEW_TOKENS if args.smoke else NEW_TOKENS)
    device_paths = GPU_PATHS if cuda else CPU_PATHS
    paths = device_paths if args.paths is None else tuple(x for x in args.paths.split(",") if x)
    unknown = [x for x in paths if x not in GPU_PATHS + CPU_PATHS]
    if unknown:
        print(f"unknown path(s) {unknown}; choose from {sorted(set(GPU_PATHS + CPU_PATHS))}", file=sys.stderr)
        return 2
    ours_caches = args.caches or (CACHES if cuda else ("dynamic", "static", "int8"))
    configs = [(p, c) for p in paths for c in (ours_caches if p == OURS else args.sdpa_caches)]

    notes = []
    if not cuda:
        notes.append(f"no CUDA: {SDPA_CUDNN} and {SDPA_FLASH} are skipped, {SDPA_MATH} (SDPBackend.MATH) is the forced "
                     "backend; static is eager (generate compiles only on accelerators); the kernels run through the "
                     "Triton interpreter: times check the plumbing only")
    bench = Bench(device, model_config, new_tokens, args.reps)
    meta = environment(torch, triton, device)
    meta.update(transformers=transformers.__version__, date=datetime.date.today().isoformat(),
                argv=sys.argv[1:] if argv is None else list(argv), smoke=args.smoke, model="LlamaForCausalLM",
                model_config=model_config, initializer_range=bench.config.initializer_range, parameters=bench.n_params,
                dtype="float16", batch=1, prompts=prompts, new_tokens=new_tokens, reps=args.reps, warmups=1,
                greedy=True, min_new_tokens=new_tokens, seed=SEED, eos_token_id=bench.eos,
                configs=[dict(path=p, cache=c) for p, c in configs],
                compile_config={k: v if isinstance(v, (bool, int, float, str, type(None))) else str(v)
                                for k, v in CompileConfig().to_dict().items()},
                timing="torch.cuda.synchronize + time.perf_counter around model.generate; prefill = median "
                       "generate(1 token); decode tok/s = (new - 1) / (median generate(new) - median generate(1))",
                notes=notes)
    os.makedirs(args.out, exist_ok=True)
    name = os.path.basename(results_path(args.out, meta["gpu"], "", meta["date"]))  # <gpu>-<date>.json
    path = os.path.join(args.out, "generate-" + name)
    data = dict(schema=1, meta=meta, records=[], targets=[])
    print(f"{meta['gpu']} | torch {meta['torch']} | transformers {meta['transformers']} | triton {meta['triton']} | "
          f"Llama {model_config['num_hidden_layers']}L hidden {model_config['hidden_size']} "
          f"Hq={model_config['num_attention_heads']} Hkv={model_config['num_key_value_heads']} "
          f"D={model_config['head_dim']} fp16 | prompts {prompts} | {new_tokens} new tokens -> {path}", flush=True)
    for note in notes:
        print(f"  note: {note}", flush=True)

    start = time.monotonic()
    for prompt in prompts:  # ascending, so no config inherits a longer static cache from an earlier one
        for p, c in configs:
            record = bench.run(p, c, prompt)
            data["records"].append(record)
            cell = (f"prefill {record['prefill_ms']:.2f} ms, decode {fmt(record['decode_tok_s'], '.1f')} tok/s"
                    if record["status"] == "ok" else record["status"])
            print(f"[{time.monotonic() - start:5.0f}s] {p:<16} {c:<13} prompt {prompt:<6} {cell}", flush=True)
            write_json(path, data)
    add_summaries(data["records"])
    data["targets"] = target_verdicts(data["records"])
    data["meta"]["elapsed_s"] = round(time.monotonic() - start, 1)
    write_json(path, data)

    for r in data["records"]:
        if r["status"] in ("error", "unsupported"):
            print(f"{r['status']}: {r['path']} {r['cache']} prompt {r['prompt']}: {r['error'][:300]}")
        for key in ("dynamo_after_warmup", "dynamo_after_reps"):
            if key in r:
                print(f"{r['path']} {r['cache']} prompt {r['prompt']} {key}: {r[key]['unique_graphs']} graphs, "
                      f"{r[key]['graph_breaks']} graph breaks")
    print(f"wrote {path}")
    print_targets(data)
    print_table(data["records"], new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
