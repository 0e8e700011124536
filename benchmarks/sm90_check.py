"""GPU check of the warp-specialized Gluon attention kernel (core_kernels/attention/kernel_sm90.py) against the
plain-Triton kernel it is a variant of: same plan, same buffers, only the attention launch differs.

Per case: the real plan (make_plan from ArrayDescs of the tensors, return_lse on), its launches run once through
the torch executor (they fill the buffers), then the attention launch of the same call planned with each of
VARIANTS' attention_override (plain Triton with two key blocks a step -- the reference -- or one; the Gluon kernel
with two or one, its warps and maxnreg from the launch table's variant defaults) into fresh outputs. Printed per
variant: max |diff| of out and lse against the first variant, -inf lse positions
equal, NaN-free, cosine / relative L1 of out and max |diff| of lse against the float64 reference on sampled rows,
run-to-run bitwise determinism (two launches), and the kernel alone timed with do_bench (median; TOPS over the
computed blocks, 4*D ops per visible-block pair). The Gluon kernel also runs on a 3-program persistent grid (each
program walks many tiles), which must give the bits of its full grid. A short table comes last; JSON goes to
$OUT/sm90_check.json.

Every case runs in its own child process with a timeout: a barrier bug in a warp-specialized kernel hangs rather
than fails, and must cost that case only.

    python benchmarks/sm90_check.py                  # all cases (about 2-4 minutes on an H200)
    python benchmarks/sm90_check.py --case hd128-dense-fp16 --case small-ragged-bf16
    compute-sanitizer --tool racecheck python benchmarks/sm90_check.py --small   # one small case, no timing,
    compute-sanitizer --tool synccheck python benchmarks/sm90_check.py --small   # in this process
"""
import argparse
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np
import torch
import triton

from sparse_sageattn.core_kernels.attention import kernel_sm90, make_plan
from sparse_sageattn.reference import COS_MIN, LSE_ABS_MAX, REL_L1_MAX, attention, cosine, rel_l1
from sparse_sageattn.torch import _launch

BLOCK_M, BLOCK_N = 128, 64
BIG = dict(batch=2, heads_q=32, heads_kv=32, n_q=8192, n_k=8192)
RAGGED = dict(batch=2, heads_q=4, heads_kv=2, n_q=300, n_k=300)
# name -> shape, head_dim, dtype, mask kind ("none", "half": random (Qb, Kb) at density 0.5, "heads": random
# (Hq, Qb, Kb) with one query block of head 0 empty), is_causal, smooth_k (off: the lse is not shifted)
CASES = {
    "hd128-dense-fp16": dict(**BIG, head_dim=128, dtype="float16", mask="none", causal=False),
    "hd128-causal-fp16": dict(**BIG, head_dim=128, dtype="float16", mask="none", causal=True),
    "hd128-half-fp16": dict(**BIG, head_dim=128, dtype="float16", mask="half", causal=False),
    "hd128-dense-bf16": dict(**BIG, head_dim=128, dtype="bfloat16", mask="none", causal=False),
    "hd128-causal-bf16": dict(**BIG, head_dim=128, dtype="bfloat16", mask="none", causal=True),
    "hd64-dense-fp16": dict(**BIG, head_dim=64, dtype="float16", mask="none", causal=False),
    "hd64-dense-bf16": dict(**BIG, head_dim=64, dtype="bfloat16", mask="none", causal=False),
    "small-ragged-fp16": dict(**RAGGED, head_dim=128, dtype="float16", mask="heads", causal=False),
    "small-ragged-bf16": dict(**RAGGED, head_dim=128, dtype="bfloat16", mask="heads", causal=False),
    "small-ragged-causal-hd64-fp16": dict(**{**RAGGED, "n_q": 200, "n_k": 333}, head_dim=64, dtype="float16",
                                          mask="heads", causal=True, smooth_k=False),
    "small-ragged-causal-hd64-bf16": dict(**{**RAGGED, "n_q": 333, "n_k": 200}, head_dim=64, dtype="bfloat16",
                                          mask="heads", causal=True),
}
SMALL_CASES = ("small-ragged-fp16", "small-ragged-bf16")
# (name, attention_override): the first is the reference the others are diffed against -- the plain Triton kernel
# with two key blocks a step sums in the Gluon kernel's order, so the two differ only where the Gluon kernel's exp2
# runs as a cubic (about one ulp of out)
# and the SMs planned for (None: the device's; the Gluon kernel's persistent grid has that many programs, so 3
# makes each program walk many tiles, empty ones included, even in the small cases: checked, not timed)
VARIANTS = (
    ("triton-kb2", dict(kernel="triton", num_warps=8, num_stages=3, key_blocks_per_step=2), None),
    ("triton-kb1", dict(kernel="triton", num_warps=4, num_stages=3, key_blocks_per_step=1), None),
    ("gluon-kb2", dict(kernel="gluon_sm90", key_blocks_per_step=2), None),
    ("gluon-kb1", dict(kernel="gluon_sm90", key_blocks_per_step=1), None),
    ("gluon-kb2-3-programs", dict(kernel="gluon_sm90", key_blocks_per_step=2), 3),
)
CHILD_TIMEOUT_S = 150


def make_inputs(spec, device, seed=0):
    gen = torch.Generator(device).manual_seed(seed)
    dtype = getattr(torch, spec["dtype"])
    b, hq, hk, nq, nk, d = (spec[k] for k in ("batch", "heads_q", "heads_kv", "n_q", "n_k", "head_dim"))
    q = torch.randn(b, hq, nq, d, generator=gen, device=device).to(dtype)
    k = (torch.randn(b, hk, nk, d, generator=gen, device=device) + 0.5).to(dtype)  # a mean for smooth_k to remove
    v = torch.randn(b, hk, nk, d, generator=gen, device=device).to(dtype)
    n_qb, n_kb = -(-nq // BLOCK_M), -(-nk // BLOCK_N)
    mask = None
    if spec["mask"] == "half":
        mask = torch.rand(n_qb, n_kb, generator=gen, device=device) < 0.5
    elif spec["mask"] == "heads":
        mask = torch.rand(hq, n_qb, n_kb, generator=gen, device=device) < 0.6
        mask[0, 0] = False  # rows that see nothing: zeros, lse -inf
    return q, k, v, mask


def fresh_outputs(env):
    """A copy of env whose out/lse are NaN-filled new tensors (an element the kernel does not write shows)."""
    env = dict(env)
    for name in ("out", "lse"):
        env[name] = torch.full_like(env[name], float("nan"))
    return env


def lse_diff(a, b):
    """max |a - b| over positions finite in both, and whether the -inf positions agree."""
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    same_inf = bool(torch.equal(fa, fb) and torch.equal(a[~fa], b[~fb]))
    both = fa & fb
    diff = (a[both] - b[both]).abs().max().item() if both.any() else 0.0
    return diff, same_inf


def reference_sample(spec, q, k, v, mask):
    """float64 reference on sampled query rows of batch 0 and its first heads (a full group of the GQA)."""
    group = spec["heads_q"] // spec["heads_kv"]
    hk = min(2, spec["heads_kv"])
    hq = hk * group
    rows = np.unique(np.linspace(0, spec["n_q"] - 1, min(spec["n_q"], 96)).astype(int))
    m = None
    if mask is not None:
        m = mask.cpu().numpy()
        if m.ndim == 3:
            m = m[:hq]
    as64 = lambda x, h: x[:1, :h].double().cpu().numpy()  # noqa: E731
    out, lse = attention(as64(q, hq), as64(k, hk), as64(v, hk), m, spec["causal"], rows=rows)
    return hq, rows, out, lse


def check_case(name, timed=True, device="cuda"):
    spec = CASES[name]
    q, k, v, mask = make_inputs(spec, device)
    arrays = {"q": q, "k": k, "v": v, "mask_id": mask}
    descs = [_launch.describe(x) for x in (q, k, v)] + [None if mask is None else _launch.describe(mask)]

    def plan_with(override=None, num_sms=None):
        return make_plan(*descs, is_causal=spec["causal"], smooth_k=spec.get("smooth_k", True), return_lse=True,
                         capability=torch.cuda.get_device_capability(device), attention_override=override,
                         num_sms=num_sms or torch.cuda.get_device_properties(device).multi_processor_count)

    plan = plan_with()
    env = _launch.allocate(plan, arrays, device)
    for step in plan.launches:
        _launch.launch(step, env)
    torch.cuda.synchronize()
    counts = env["block_counts"].view(-1, -(-spec["n_q"] // BLOCK_M), 2)
    live = counts[..., 0].sum().item() * (spec["batch"] * spec["heads_q"] // counts.shape[0])
    ops = 4 * spec["head_dim"] * live * BLOCK_M * BLOCK_N
    hq, rows, ref_out, ref_lse = reference_sample(spec, q, k, v, mask)
    base = None  # the first variant's outputs
    full_grid = None  # the Gluon kernel's (two blocks a step) on the device's SMs

    records = []
    for variant, override, num_sms in VARIANTS:
        rec = dict(case=name, variant=variant, **{k: spec[k] for k in ("head_dim", "dtype", "mask", "causal")},
                   n_q=spec["n_q"], n_k=spec["n_k"], heads_q=spec["heads_q"], heads_kv=spec["heads_kv"])
        try:
            variant_plan = plan_with(override, num_sms)
            step = variant_plan.launches[-1]
            # the variant's own scratch (the Gluon kernel's descriptors), which the table's plan may not hold
            env.update((n, t) for n, t in _launch.allocate(variant_plan, {}, device).items() if n not in env)
            run = _launch.launch
            rec.update(key_blocks_per_step=step.constexprs["KEY_BLOCKS_PER_STEP"], **step.options)
            e1, e2 = fresh_outputs(env), fresh_outputs(env)
            compiled = run(step, e1)
            run(step, e2)
            torch.cuda.synchronize()
            md = getattr(compiled, "metadata", None)
            rec.update(launched_warps=getattr(md, "num_warps", None), shared=getattr(md, "shared", None),
                       n_regs=getattr(compiled, "n_regs", None), n_spills=getattr(compiled, "n_spills", None))
            out, lse = e1["out"], e1["lse"]
            base = base or {"out": out.clone(), "lse": lse.clone()}
            if num_sms is not None:  # the grid changes which program runs a tile, never its arithmetic
                rec["bitwise_vs_full_grid"] = bool(
                    torch.equal(out.view(torch.int16), full_grid["out"].view(torch.int16))
                    and torch.equal(lse.view(torch.int32), full_grid["lse"].view(torch.int32)))
            elif step.kernel is kernel_sm90.attention_sm90_kernel and step.constexprs["KEY_BLOCKS_PER_STEP"] == 2:
                full_grid = {"out": out.clone(), "lse": lse.clone()}
            rec["nan_free"] = not bool(torch.isnan(out).any() or torch.isnan(lse).any())
            rec["deterministic"] = bool(torch.equal(out.view(torch.int16), e2["out"].view(torch.int16))
                                        and torch.equal(lse.view(torch.int32), e2["lse"].view(torch.int32)))
            rec["max_diff_out_vs_first"] = (out.float() - base["out"].float()).abs().nan_to_num(float("inf")).max().item()
            rec["max_diff_lse_vs_first"], rec["lse_inf_same_as_first"] = lse_diff(lse, base["lse"])
            idx = torch.as_tensor(rows, device=out.device)
            sample = out[:1, :hq].index_select(2, idx).double().cpu().numpy()
            rec["cosine"], rec["rel_l1"] = cosine(sample, ref_out), rel_l1(sample, ref_out)
            rec["max_diff_lse_vs_ref"], rec["lse_inf_same_as_ref"] = lse_diff(
                lse[:1, :hq].index_select(2, idx).double().cpu(), torch.from_numpy(ref_lse))
            rec["within_bounds"] = bool(rec["cosine"] >= COS_MIN and rec["rel_l1"] <= REL_L1_MAX
                                        and rec["max_diff_lse_vs_ref"] <= LSE_ABS_MAX and rec["lse_inf_same_as_ref"])
            rec["programs"] = step.grid[0]
            if timed and num_sms is None:
                rec["ms"] = triton.testing.do_bench(lambda: run(step, e1), warmup=25, rep=100, return_mode="median")
                rec["tops"] = ops / rec["ms"] / 1e9
        except Exception as exc:  # one failing variant must not hide the others
            rec["error"] = f"{type(exc).__name__}: {exc}"[-3000:]
            traceback.print_exc()
        print(json.dumps(rec), flush=True)
        records.append(rec)
    return records


def run_child(name):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", name]
    t0 = time.time()
    try:
        child = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-2000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return [dict(case=name, variant="*", error=f"timed out after {CHILD_TIMEOUT_S} s (a hang?) {tail}")]
    recs = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or not recs:
        recs.append(dict(case=name, variant="*", error=f"child exit {child.returncode}: {child.stderr[-3000:]}"))
    for r in recs:
        if "error" in r:
            print(f"[{name} / {r['variant']}] {r['error']}", flush=True)
    print(f"[{name}] {time.time() - t0:.1f} s", flush=True)
    return recs


def table(records):
    head = (f"{'case':<30} {'variant':<20} {'ms':>8} {'TOPS':>6} {'x_first':>8} {'|d out|':>9} {'|d lse|':>9} "
            f"{'cos':>9} {'relL1':>7} {'det':>4} {'ok':>3}")
    lines = [head, "-" * len(head)]
    ms_triton = {r["case"]: r.get("ms") for r in records if r["variant"] == VARIANTS[0][0]}
    for r in records:
        if "error" in r:
            lines.append(f"{r['case']:<30} {r['variant']:<20} ERROR {r['error'].splitlines()[0][:80] if r['error'] else ''}")
            continue
        ms, base = r.get("ms"), ms_triton.get(r["case"])
        speed = f"{base / ms:8.3f}" if ms and base else f"{'':8}"
        timing = f"{ms:8.3f} {r['tops']:6.0f}" if ms else f"{'':8} {'':6}"
        ok = r["nan_free"] and r["within_bounds"] and r["lse_inf_same_as_first"] and r.get("bitwise_vs_full_grid", True)
        lines.append(f"{r['case']:<30} {r['variant']:<20} {timing} {speed} {r['max_diff_out_vs_first']:9.2e} "
                     f"{r['max_diff_lse_vs_first']:9.2e} {r['cosine']:9.6f} {r['rel_l1']:7.4f} "
                     f"{'yes' if r['deterministic'] else 'NO':>4} {'yes' if ok else 'NO':>3}")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--small", action="store_true", help="the small cases only, in this process, untimed "
                   "(for compute-sanitizer)")
    p.add_argument("--case", action="append", default=[], choices=sorted(CASES), help="run only these cases")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    assert torch.cuda.is_available(), "needs a CUDA GPU (sm_90)"
    if args.child:
        check_case(args.child)
        return 0
    gpu = f"{torch.cuda.get_device_name()} cc={torch.cuda.get_device_capability()}"
    print(gpu, "triton", triton.__version__, "torch", torch.__version__, flush=True)
    print(f"kernel_sm90: consumers={kernel_sm90.CONSUMER_WARPGROUPS} loader_warps={kernel_sm90.LOADER_WARPS} "
          f"stages={kernel_sm90.RING_STAGES} maxnreg={kernel_sm90.MAXNREG} consumer_regs={kernel_sm90.CONSUMER_REGS} "
          f"loader_regs={kernel_sm90.LOADER_REGS}", flush=True)
    records = []
    if args.small:
        for name in args.case or SMALL_CASES:
            records += check_case(name, timed=False)
    else:
        for name in args.case or CASES:
            records += run_child(name)
    print()
    print(table(records))
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "sm90_check.json"), "w") as f:
            json.dump(dict(gpu=gpu, triton=triton.__version__, records=records), f, indent=1)
    bad = [r for r in records if "error" in r or not (r["nan_free"] and r["within_bounds"] and r["deterministic"])]
    print(f"\n{len(records) - len(bad)} of {len(records)} records pass" + (f"; failing: "
          f"{sorted({(r['case'], r['variant']) for r in bad})}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
