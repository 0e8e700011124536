"""The speed targets (P1-P6, the JAX call against jax.nn's cuDNN attention), the memory bound and the accuracy
contract, and the README performance table, from results files of benchmarks/run.py.

    python benchmarks/report.py benchmarks/results/GPU-DATE.json [more.json ...] [--n 8192] [--readme README.md]

Prints each target's verdict (PASS / MISS / NO DATA, with the ratios) and the tables. With --readme it rewrites
the text between `<!-- perf-table:start -->` and `<!-- perf-table:end -->` in that file. Several files (parts of a
split grid) merge; a later file's record of the same configuration and system replaces an earlier one. CPU only.
"""
import argparse
import json
import os
import sys
from collections import namedtuple
from dataclasses import dataclass, field

from sparse_sageattn.reference import COS_MIN, REL_L1_MAX  # the contract's accuracy bounds

START_MARKER, END_MARKER = "<!-- perf-table:start -->", "<!-- perf-table:end -->"

OURS, OURS_JAX, FLEX = "sparse_sageattn", "sparse_sageattn_jax", "flex_attention"
OURS_FP8 = "sparse_sageattn_fp8"
SDPA_FLASH, SDPA_CUDNN, SAGE = "sdpa_flash", "sdpa_cudnn", "sageattention_1.0.6"
OURS_JAX_NHD, JAX_CUDNN = "sparse_sageattn_jax_nhd", "jax_cudnn"
PEERS = (FLEX, SDPA_CUDNN, SDPA_FLASH, SAGE)  # the torch peers of the torch call
ALL_SYSTEMS = (OURS, OURS_JAX, OURS_FP8) + PEERS + (OURS_JAX_NHD, JAX_CUDNN)
LABELS = {OURS: "sparse_sageattn", OURS_JAX: "JAX", OURS_FP8: "ours FP8 P.V", FLEX: "FlexAttention",
          SDPA_CUDNN: "SDPA cuDNN", SDPA_FLASH: "SDPA flash", SAGE: "SageAttention 1.0.6", OURS_JAX_NHD: "JAX (NHD)",
          JAX_CUDNN: "jax.nn cuDNN (NHD)"}
SPARSE_DENSITIES = (0.5, 0.25, 0.1)
SWEEP = (2, 32, 32)  # run.py's B, H (= kv heads) of the sweep: other shapes are named in the labels
P1_GOAL = {128: 1.15, 64: 1.05}  # dense N>=8k, against SDPA cuDNN (and the JAX call against jax.nn's cuDNN)
P2_GOAL = 1.3  # sparse N>=8k, against compiled FlexAttention on the identical mask
P4_GOAL = 1.5  # FP8 P.V dense hd128, against SDPA cuDNN
P6_GOAL, P6_SHAPE = 1.0, (8, 2048)  # B=8 N=2048 causal hd128, against SDPA cuDNN
LONG_N = 8192  # P1-P3 count N >= this
# The memory bound is exact bytes; the caching allocator rounds each block up to 512 bytes and the plan
# adds a few small scratch buffers (K's channel sums): 1% of slack keeps that from reading as a miss.
MEMORY_SLACK = 0.01

Key = namedtuple("Key", "n head_dim density causal dtype mask batch heads kv_heads")


def config_key(r):
    """A record's configuration; results files from before the mask and kv-head fields read as random masks, MHA."""
    return Key(r["n"], r["head_dim"], r["density"], r["causal"], r["dtype"], r.get("mask", "random"),
               r.get("batch", SWEEP[0]), r.get("heads", SWEEP[1]), r.get("kv_heads", r.get("heads", SWEEP[2])))


def load_results(paths):
    """(metas, records, skipped) merged over the files; records keyed by (configuration, system)."""
    metas, records, skipped = [], {}, []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        metas.append(data["meta"])
        for r in data["records"]:
            records[(config_key(r), r["system"])] = r
        skipped.extend(data.get("skipped", []))
    return metas, records, skipped


def ms(records, key, system):
    r = records.get((key, system))
    return r.get("ms") if r else None


def _short_dtype(dtype):
    return "fp16" if dtype == "float16" else "bf16" if dtype == "bfloat16" else dtype


def mask_text(key):
    if key.mask == "random":
        return f"d={key.density:g}"
    return f"{key.mask.replace('window', 'win')} d={key.density:.3f}"


def shape_text(key):
    if (key.batch, key.heads, key.kv_heads) == SWEEP:
        return ""
    return f" B={key.batch} H={key.heads}" + (f"/{key.kv_heads}" if key.kv_heads != key.heads else "")


def describe(key):
    return (f"hd{key.head_dim} N={key.n} {mask_text(key)} {'causal' if key.causal else 'full'} "
            f"{_short_dtype(key.dtype)}{shape_text(key)}")


def is_dense(key):
    return key.mask == "random" and key.density == 1.0


def is_short(key):
    return (key.batch, key.n, key.head_dim, key.causal) == (*P6_SHAPE, 128, True) and is_dense(key)


@dataclass
class Verdict:
    name: str
    goal: str
    fmt: object = str  # value -> text
    status: str = "NO DATA"
    points: list = field(default_factory=list)  # (where, value, ok)
    unsupported: list = field(default_factory=list)  # where the peer refused the shape
    note: str = ""

    def judge(self, badness):
        """PASS iff every point is ok; the summary names the worst point (failing first, then by badness)."""
        if self.points:
            self.points.sort(key=lambda p: (p[2], -badness(p[1])))
            bad = sum(not ok for _, _, ok in self.points)
            self.status = "MISS" if bad else "PASS"
            self.note = (f"{len(self.points) - bad}/{len(self.points)} points pass; "
                         f"worst {self.fmt(self.points[0][1])} at {self.points[0][0]}")
        if self.unsupported:
            self.note += ("; " if self.note else "") + f"peer unsupported at {len(self.unsupported)} points"
        return self

    def line(self):
        return f"{self.name} {self.goal}: {self.status}" + (f" -- {self.note}" if self.note else "")


def _ratio_fmt(v):
    return f"{v[0]:.2f}x (goal {v[1]:.2f}x)"


def _speed_verdict(name, goal, records, keys, ours_system, peer_system, goal_of):
    """Points peer time / our time >= goal_of(key) (None: not a point of this target)."""
    v = Verdict(name, goal, _ratio_fmt)
    for key in keys:
        want = goal_of(key)
        if want is None:
            continue
        ours, peer = ms(records, key, ours_system), records.get((key, peer_system))
        if ours and peer and peer.get("ms"):
            v.points.append((describe(key), (peer["ms"] / ours, want), peer["ms"] / ours >= want))
        elif ours and peer and "unsupported" in peer:
            v.unsupported.append(describe(key))
    return v.judge(lambda p: p[1] - p[0])


def _p1_goal(key):
    return P1_GOAL.get(key.head_dim) if is_dense(key) and key.n >= LONG_N else None


def targets(records):
    """The verdicts of P1-P6, the JAX ratios, the memory bound and the accuracy contract, from merged records."""
    keys = sorted({k for k, _ in records})
    out = [_speed_verdict("P1", "dense N>=8k: >= 1.15x SDPA cuDNN at hd128, >= 1.05x at hd64", records, keys,
                          OURS, SDPA_CUDNN, _p1_goal)]

    def p2_goal(key):
        sparse = key.mask != "random" or key.density in SPARSE_DENSITIES
        return P2_GOAL if sparse and key.head_dim in (64, 128) and key.n >= LONG_N else None

    out.append(_speed_verdict("P2", "densities 0.5/0.25/0.1 and causal window + sink, hd64/128, N>=8k: >= 1.3x "
                              "compiled FlexAttention (identical mask)", records, keys, OURS, FLEX, p2_goal))

    p3 = Verdict("P3", "t(d)/t(dense) <= d + 0.03 (N>=8k)", lambda v: f"{v[0]:.3f} (limit {v[1] + 0.03:.2f})")
    for key in keys:
        ours, dense = ms(records, key, OURS), ms(records, key._replace(density=1.0), OURS)
        if key.mask == "random" and key.density in SPARSE_DENSITIES and key.n >= LONG_N and ours and dense:
            p3.points.append((describe(key), (ours / dense, key.density), ours / dense <= key.density + 0.03))
    out.append(p3.judge(lambda v: v[0] - v[1]))

    out.append(_speed_verdict("P4", "FP8 P.V mode dense hd128: >= 1.5x SDPA cuDNN", records, keys, OURS_FP8,
                              SDPA_CUDNN, lambda k: P4_GOAL if is_dense(k) and k.head_dim == 128 else None))
    p4a = Verdict("P4", "FP8 P.V accuracy, dense: cosine >= 0.9995, rel L1 <= 0.04",
                  lambda v: f"cosine {v[0]:.5f} (e4m3 floor {v[2]:.5f}), rel L1 {v[1]:.4f}")
    for key in keys:
        r = records.get((key, OURS_FP8))
        if is_dense(key) and r and r.get("cosine") is not None:
            value = (r["cosine"], r["rel_l1"], r.get("floor_cosine", float("nan")))
            p4a.points.append((describe(key), value, value[0] >= 0.9995 and value[1] <= 0.04))
    out.append(p4a.judge(lambda v: -v[0]))

    p5q = Verdict("P5", "quantization + block lists <= 5% of end to end at N=8k dense", lambda v: f"{v:.1%}")
    for key in keys:
        r = records.get((key, OURS))
        if r and key.n == 8192 and is_dense(key) and r.get("kernels_ms") and r.get("ms"):
            # every launch but attention: K sums, block lists, quantization (older results name four launches)
            share = sum(t for name, t in r["kernels_ms"].items() if name != "attention") / r["ms"]
            p5q.points.append((describe(key), share, share <= 0.05))
    out.append(p5q.judge(lambda v: v))

    p5j = Verdict("P5", "JAX within +-5% of torch (N>=4k; both timed in groups of calls)",
                  lambda v: f"{v:.3f}x torch's time")
    for key in keys:
        torch_record = records.get((key, OURS)) or {}
        # torch timed as JAX is (run.py's time_group) where the results have it; older files: do_bench per call
        ours, jax = torch_record.get("ms_group", torch_record.get("ms")), ms(records, key, OURS_JAX)
        if key.n >= 4096 and ours and jax:
            p5j.points.append((describe(key), jax / ours, abs(jax / ours - 1) <= 0.05))
    out.append(p5j.judge(lambda v: abs(v - 1)))

    out.append(_speed_verdict("P6", "B=8 N=2048 causal hd128: >= 1.0x SDPA cuDNN", records, keys, OURS,
                              SDPA_CUDNN, lambda k: P6_GOAL if is_short(k) else None))
    out.append(_speed_verdict("JAX P1", "dense N>=8k, NHD: >= 1.15x jax.nn.dot_product_attention(cudnn) at hd128, "
                              ">= 1.05x at hd64", records, keys, OURS_JAX_NHD, JAX_CUDNN, _p1_goal))
    out.append(_speed_verdict("JAX P6", "B=8 N=2048 causal hd128, NHD: >= 1.0x jax.nn.dot_product_attention(cudnn)",
                              records, keys, OURS_JAX_NHD, JAX_CUDNN, lambda k: P6_GOAL if is_short(k) else None))

    mem = Verdict("Memory", "extra device memory per call <= int8 q, k + scales + block lists (+ fp16 V for bf16, TMA descriptors)",
                  lambda v: f"{v:.3f}x the bound")
    for key in keys:
        r = records.get((key, OURS))
        if r and r.get("extra_mem_bytes") is not None and r.get("mem_bound_bytes"):
            ratio = r["extra_mem_bytes"] / r["mem_bound_bytes"]
            mem.points.append((describe(key), ratio, ratio <= 1 + MEMORY_SLACK))
    out.append(mem.judge(lambda v: v))

    acc = Verdict("Accuracy", f"torch and JAX: cosine >= {COS_MIN}, rel L1 <= {REL_L1_MAX} (float64 reference)",
                  lambda v: f"cosine {v[0]:.6f} rel L1 {v[1]:.4f}")
    for key in keys:
        for system in (OURS, OURS_JAX, OURS_JAX_NHD):
            r = records.get((key, system))
            if r and r.get("cosine") is not None:
                acc.points.append((f"{describe(key)} {LABELS[system]}", (r["cosine"], r["rel_l1"]),
                                   r["cosine"] >= COS_MIN and r["rel_l1"] <= REL_L1_MAX))
    out.append(acc.judge(lambda v: -v[0]))
    return out


# ---- tables ---------------------------------------------------------------------------------------------------------

def _cell(records, key, system):
    r = records.get((key, system))
    if r is None:
        return "—"
    return f"{r['ms']:.3f}" if "ms" in r else "unsupported" if "unsupported" in r else "error"


def _pick_n(records, n):
    lengths = sorted({k.n for k, _ in records if (k.batch, k.heads, k.kv_heads) == SWEEP})
    if n is not None or not lengths:
        return n
    return 8192 if 8192 in lengths else lengths[len(lengths) // 2]


def _systems_of(records, keys, candidates=ALL_SYSTEMS):
    keys = set(keys)
    return [s for s in candidates if any((k, s) in records for k in keys)]


def _best_peer(records, key):
    ours = ms(records, key, OURS)
    peers = [ms(records, key, s) for s in PEERS if ms(records, key, s)]
    return f"{min(peers) / ours:.2f}×" if ours and peers else "—"


def _cosine(records, key):
    r = records.get((key, OURS)) or {}
    return f"{r['cosine']:.5f}" if r.get("cosine") is not None else "—"


def _mask_cell(key):
    if key.mask == "random":
        return f"{key.density:g}"
    return f"{key.mask.replace('+', ' + ').replace('window', 'window ').replace('sink', 'sink ')} ({key.density:.3f})"


def time_table(records, n, dtype="float16"):
    """Median ms at one N and dtype on the sweep's shape: every head dim / causality / mask, every system that ran
    there; speed-up vs the best torch peer."""
    keys = sorted({k for k, _ in records if k.n == n and k.dtype == dtype and (k.batch, k.heads, k.kv_heads) == SWEEP},
                  key=lambda k: (-k.head_dim, k.causal, k.mask != "random", -k.density))
    if not keys:
        return ""
    systems = _systems_of(records, keys, (OURS, OURS_JAX, OURS_FP8) + PEERS)
    if not systems:  # only the JAX pair ran here: jax_table has it
        return ""
    head = ["head dim", "causal", "density"] + [LABELS[s] for s in systems] + ["best peer / ours", "cosine (ours)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        row = [str(key.head_dim), "yes" if key.causal else "no", _mask_cell(key)]
        lines.append("| " + " | ".join(row + [_cell(records, key, s) for s in systems]
                                       + [_best_peer(records, key), _cosine(records, key)]) + " |")
    return "\n".join(lines)


def shapes_table(records):
    """The rows off the sweep's shape (B=8 N=2048, B=1 N=32k GQA, ...): ms per system."""
    keys = sorted({k for k, _ in records if (k.batch, k.heads, k.kv_heads) != SWEEP},
                  key=lambda k: (k.n, -k.batch, -k.head_dim, k.dtype, k.mask != "random", -k.density))
    if not keys:
        return ""
    systems = _systems_of(records, keys, (OURS, OURS_JAX, OURS_FP8) + PEERS)
    if not systems:
        return ""
    head = ["B", "H (q/kv)", "N", "head dim", "dtype", "causal", "density"] + [LABELS[s] for s in systems] + [
        "best peer / ours", "cosine (ours)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        row = [str(key.batch), f"{key.heads}/{key.kv_heads}", str(key.n), str(key.head_dim), _short_dtype(key.dtype),
               "yes" if key.causal else "no", _mask_cell(key)]
        lines.append("| " + " | ".join(row + [_cell(records, key, s) for s in systems]
                                       + [_best_peer(records, key), _cosine(records, key)]) + " |")
    return "\n".join(lines)


def jax_table(records):
    """Our JAX call against jax.nn.dot_product_attention(implementation="cudnn"), both on the same NHD arrays."""
    keys = sorted({k for k, s in records if s == JAX_CUDNN},
                  key=lambda k: (k.n, -k.batch, -k.head_dim, k.dtype, k.causal))
    if not keys:
        return ""
    head = ["B", "H (q/kv)", "N", "head dim", "dtype", "causal", LABELS[OURS_JAX_NHD], LABELS[JAX_CUDNN],
            "jax.nn cuDNN / ours", "cosine (ours)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        ours, peer = ms(records, key, OURS_JAX_NHD), ms(records, key, JAX_CUDNN)
        mine = records.get((key, OURS_JAX_NHD)) or {}
        row = [str(key.batch), f"{key.heads}/{key.kv_heads}", str(key.n), str(key.head_dim), _short_dtype(key.dtype),
               "yes" if key.causal else "no", _cell(records, key, OURS_JAX_NHD), _cell(records, key, JAX_CUDNN),
               f"{peer / ours:.2f}×" if ours and peer else "—",
               f"{mine['cosine']:.5f}" if mine.get("cosine") is not None else "—"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def tops_table(records, head_dim=128, dtype="float16", causal=False):
    """Dense-equivalent TOPS against N at density 1 on the sweep's shape (4·B·H·N²·D / time)."""
    keys = [k for k, _ in records if (k.head_dim, k.density, k.causal, k.dtype, k.mask) ==
            (head_dim, 1.0, causal, dtype, "random") and (k.batch, k.heads, k.kv_heads) == SWEEP]
    lengths = sorted({k.n for k in keys})
    if not lengths:
        return ""
    systems = _systems_of(records, keys, (OURS, OURS_JAX, OURS_FP8) + PEERS)
    lines = ["| system | " + " | ".join(f"N={n}" for n in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for s in systems:
        cells = []
        for n in lengths:
            r = records.get((Key(n, head_dim, 1.0, causal, dtype, "random", *SWEEP), s)) or {}
            cells.append(f"{r['dense_equiv_tops']:.0f}" if "dense_equiv_tops" in r else "—")
        lines.append(f"| {LABELS[s]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(metas, paths):
    m = metas[0]
    files = ", ".join(f"`benchmarks/results/{os.path.basename(p)}`" for p in paths)
    return (f"{m.get('gpu')} (driver {m.get('driver')}), torch {m.get('torch')}, triton {m.get('triton')}, "
            f"jax {m.get('jax')}, jax-triton {m.get('jax-triton')}, {m.get('date')}; B={m.get('batch')}, "
            f"H={m.get('heads')} unless a table says otherwise. Medians of `triton.testing.do_bench`, end to end "
            f"(quantization and block lists included), inputs rotated over {m.get('n_sets')} random sets; JAX timed "
            f"in groups of calls. From {files} by `benchmarks/report.py`.")


def markdown(metas, records, paths, n=None, verdicts=None):
    n = _pick_n(records, n)
    verdicts = verdicts if verdicts is not None else targets(records)
    parts = [provenance(metas, paths)]
    for dtype in ("float16", "bfloat16"):
        table = time_table(records, n, dtype)
        if table:
            parts += ["", f"Milliseconds at N={n}, {_short_dtype(dtype)} (— not run; density: of the random block "
                      "mask, or the causal work a window + sink mask leaves; speed-up: the fastest torch peer's time "
                      "over ours):", "", table]
    shapes = shapes_table(records)
    if shapes:
        parts += ["", "Other shapes (milliseconds):", "", shapes]
    jax = jax_table(records)
    if jax:
        parts += ["", "The JAX call against `jax.nn.dot_product_attention(q, k, v, implementation=\"cudnn\")`, "
                  "both on the same NHD arrays (milliseconds):", "", jax]
    tops = tops_table(records)
    if tops:
        parts += ["", "Dense-equivalent TOPS, hd128, fp16, dense, not causal:", "", tops]
    parts += ["", "Targets (ratios within this run):", ""] + [f"- {v.line()}" for v in verdicts]
    return "\n".join(parts)


def replace_between_markers(text, content):
    start, end = text.find(START_MARKER), text.find(END_MARKER)
    if start < 0 or end < start:
        raise ValueError(f"the markers {START_MARKER} ... {END_MARKER} are missing or out of order")
    return text[:start + len(START_MARKER)] + "\n" + content + "\n" + text[end:]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results files of benchmarks/run.py")
    p.add_argument("--n", type=int, help="sequence length of the main table (default 8192 if measured)")
    p.add_argument("--readme", help="rewrite the perf table between the markers of this file")
    p.add_argument("--verbose", action="store_true", help="every point of every target")
    args = p.parse_args(argv)
    metas, records, skipped = load_results(args.results)
    verdicts = targets(records)
    for v in verdicts:
        print(v.line())
        if args.verbose:
            for where, value, ok in v.points:
                print(f"    {'ok  ' if ok else 'MISS'} {where}: {v.fmt(value)}")
            for where in v.unsupported:
                print(f"    n/a  {where}: the peer refused the shape (recorded as unsupported)")
    errors = [r for r in records.values() if "error" in r]
    unsupported = [r for r in records.values() if "unsupported" in r]
    if errors or skipped or unsupported:
        print(f"{len(errors)} records with errors, {len(unsupported)} unsupported by their system, {len(skipped)} "
              f"configurations skipped (see the results files)")
    text = markdown(metas, records, args.results, args.n, verdicts)
    print("\n" + text)
    if args.readme:
        with open(args.readme) as f:
            readme = f.read()
        with open(args.readme, "w") as f:
            f.write(replace_between_markers(readme, text))
        print(f"\nrewrote the perf table in {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
