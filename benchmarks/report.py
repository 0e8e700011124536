"""Targets P1-P5 of the speed work and the README performance table, from results files of benchmarks/run.py.

    python benchmarks/report.py benchmarks/results/GPU-DATE.json [more.json ...] [--n 8192] [--readme README.md]

Prints each target's verdict (PASS / MISS / NO DATA, with the ratios) and the tables. With --readme it rewrites
the text between `<!-- perf-table:start -->` and `<!-- perf-table:end -->` in that file. Several files (parts of a
split grid) merge; a later file's record of the same configuration and system replaces an earlier one. CPU only.
"""
import argparse
import json
import os
import sys
from dataclasses import dataclass, field

from sparse_sageattn.reference import COS_MIN, REL_L1_MAX  # the contract's accuracy bounds

START_MARKER, END_MARKER = "<!-- perf-table:start -->", "<!-- perf-table:end -->"

OURS, OURS_JAX, FLEX = "sparse_sageattn", "sparse_sageattn_jax", "flex_attention"
OURS_FP8 = "sparse_sageattn_fp8"
SDPA_FLASH, SDPA_CUDNN, SAGE = "sdpa_flash", "sdpa_cudnn", "sageattention_1.0.6"
PEERS = (FLEX, SDPA_CUDNN, SDPA_FLASH, SAGE)
LABELS = {OURS: "sparse_sageattn", OURS_JAX: "JAX", OURS_FP8: "ours FP8 P.V", FLEX: "FlexAttention", SDPA_CUDNN: "SDPA cuDNN",
          SDPA_FLASH: "SDPA flash", SAGE: "SageAttention 1.0.6"}
SPARSE_DENSITIES = (0.5, 0.25, 0.1)
# The memory bound is exact bytes; the caching allocator rounds each block up to 512 bytes and the plan
# adds a few small scratch buffers (K's channel sums): 1% of slack keeps that from reading as a miss.
MEMORY_SLACK = 0.01


def config_key(r):
    return r["n"], r["head_dim"], r["density"], r["causal"], r["dtype"]


def load_results(paths):
    """(metas, records, skipped) merged over the files; records keyed by configuration and system."""
    metas, records, skipped = [], {}, []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        metas.append(data["meta"])
        for r in data["records"]:
            records[config_key(r) + (r["system"],)] = r
        skipped.extend(data.get("skipped", []))
    return metas, records, skipped


def ms(records, key, system):
    r = records.get(key + (system,))
    return r.get("ms") if r else None


def describe(key):
    n, hd, density, causal, dtype = key
    return (f"hd{hd} N={n} d={density:g} {'causal' if causal else 'full'} "
            f"{'fp16' if dtype == 'float16' else 'bf16' if dtype == 'bfloat16' else dtype}")


@dataclass
class Verdict:
    name: str
    goal: str
    fmt: object = str  # value -> text
    status: str = "NO DATA"
    points: list = field(default_factory=list)  # (where, value, ok)
    note: str = ""

    def judge(self, badness):
        """PASS iff every point is ok; the summary names the worst point (failing first, then by badness)."""
        if self.points:
            self.points.sort(key=lambda p: (p[2], -badness(p[1])))
            bad = sum(not ok for _, _, ok in self.points)
            self.status = "MISS" if bad else "PASS"
            self.note = (f"{len(self.points) - bad}/{len(self.points)} points pass; "
                         f"worst {self.fmt(self.points[0][1])} at {self.points[0][0]}")
        return self

    def line(self):
        return f"{self.name} {self.goal}: {self.status}" + (f" -- {self.note}" if self.note else "")


def targets(records):
    """The verdicts of P1-P5, the memory bound and the accuracy contract, from merged records."""
    keys = sorted({k[:5] for k in records})
    out = []

    p1 = Verdict("P1", "dense hd128 N>=8k: >= 1.0x SDPA cuDNN", lambda v: f"{v:.2f}x")
    for key in keys:
        n, hd, density, _, _ = key
        ours, peer = ms(records, key, OURS), ms(records, key, SDPA_CUDNN)
        if density == 1.0 and hd == 128 and n >= 8192 and ours and peer:
            p1.points.append((describe(key), peer / ours, peer / ours >= 1.0))
    out.append(p1.judge(lambda v: -v))

    p2 = Verdict("P2", "densities 0.5/0.25/0.1, hd64/128, N>=4k: >= 1.5x compiled FlexAttention",
                 lambda v: f"{v:.2f}x")
    for key in keys:
        n, hd, density, _, _ = key
        ours, peer = ms(records, key, OURS), ms(records, key, FLEX)
        if density in SPARSE_DENSITIES and hd in (64, 128) and n >= 4096 and ours and peer:
            p2.points.append((describe(key), peer / ours, peer / ours >= 1.5))
    out.append(p2.judge(lambda v: -v))

    p3 = Verdict("P3", "t(d)/t(dense) <= d + 0.03 (N>=4k)", lambda v: f"{v[0]:.3f} (limit {v[1] + 0.03:.2f})")
    for key in keys:
        n, hd, density, causal, dtype = key
        ours, dense = ms(records, key, OURS), ms(records, (n, hd, 1.0, causal, dtype), OURS)
        if density in SPARSE_DENSITIES and n >= 4096 and ours and dense:
            p3.points.append((describe(key), (ours / dense, density), ours / dense <= density + 0.03))
    out.append(p3.judge(lambda v: v[0] - v[1]))

    p4 = Verdict("P4", "FP8 P.V mode dense: >= 1.4x SDPA cuDNN, cosine >= 0.9995, rel L1 <= 0.04",
                 lambda v: f"{v[0]:.2f}x, cosine {v[1]:.5f} (e4m3 floor {v[3]:.5f}), rel L1 {v[2]:.4f}")
    for key in keys:
        r, peer = records.get(key + (OURS_FP8,)), ms(records, key, SDPA_CUDNN)
        if key[2] == 1.0 and r and r.get("ms") and peer:
            value = (peer / r["ms"], r["cosine"], r["rel_l1"], r.get("floor_cosine", float("nan")))
            p4.points.append((describe(key), value, value[0] >= 1.4 and value[1] >= 0.9995 and value[2] <= 0.04))
    out.append(p4.judge(lambda v: -v[0]))

    p5q = Verdict("P5", "quantization + block lists <= 5% of end to end at N=8k dense", lambda v: f"{v:.1%}")
    for key in keys:
        r = records.get(key + (OURS,))
        if r and key[0] == 8192 and key[2] == 1.0 and r.get("kernels_ms") and r.get("ms"):
            # every launch but attention: K sums, block lists, quantization (older results name four launches)
            share = sum(t for name, t in r["kernels_ms"].items() if name != "attention") / r["ms"]
            p5q.points.append((describe(key), share, share <= 0.05))
    out.append(p5q.judge(lambda v: v))

    p5j = Verdict("P5", "JAX within +-5% of torch (N>=4k; both timed in groups of calls)",
                  lambda v: f"{v:.3f}x torch's time")
    for key in keys:
        torch_record = records.get(key + (OURS,)) or {}
        # torch timed as JAX is (run.py's time_group) where the results have it; older files: do_bench per call
        ours, jax = torch_record.get("ms_group", torch_record.get("ms")), ms(records, key, OURS_JAX)
        if key[0] >= 4096 and ours and jax:
            p5j.points.append((describe(key), jax / ours, abs(jax / ours - 1) <= 0.05))
    out.append(p5j.judge(lambda v: abs(v - 1)))

    mem = Verdict("Memory", "extra device memory per call <= int8 q, k + scales + block lists (+ fp16 V for bf16)",
                  lambda v: f"{v:.3f}x the bound")
    for key in keys:
        r = records.get(key + (OURS,))
        if r and r.get("extra_mem_bytes") is not None and r.get("mem_bound_bytes"):
            ratio = r["extra_mem_bytes"] / r["mem_bound_bytes"]
            mem.points.append((describe(key), ratio, ratio <= 1 + MEMORY_SLACK))
    out.append(mem.judge(lambda v: v))

    acc = Verdict("Accuracy", f"torch and JAX: cosine >= {COS_MIN}, rel L1 <= {REL_L1_MAX} (float64 reference)",
                  lambda v: f"cosine {v[0]:.6f} rel L1 {v[1]:.4f}")
    for key in keys:
        for system in (OURS, OURS_JAX):
            r = records.get(key + (system,))
            if r and r.get("cosine") is not None:
                acc.points.append((f"{describe(key)} {LABELS[system]}", (r["cosine"], r["rel_l1"]),
                                   r["cosine"] >= COS_MIN and r["rel_l1"] <= REL_L1_MAX))
    out.append(acc.judge(lambda v: -v[0]))
    return out


# ---- tables ---------------------------------------------------------------------------------------------------------

def _cell(records, key, system):
    r = records.get(key + (system,))
    if r is None:
        return "—"
    return f"{r['ms']:.3f}" if "ms" in r else "error"


def _pick_n(records, n):
    lengths = sorted({k[0] for k in records})
    if n is not None or not lengths:
        return n
    return 8192 if 8192 in lengths else lengths[len(lengths) // 2]


def time_table(records, n, dtype="float16"):
    """Median ms at one N and dtype, every head dim / causality / density, every system; speed-up vs best peer."""
    systems = [s for s in (OURS, OURS_JAX, OURS_FP8) + PEERS if any(k[5] == s for k in records)]
    head = ["head dim", "causal", "density"] + [LABELS[s] for s in systems] + ["best peer / ours", "cosine (ours)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    keys = sorted({k[:5] for k in records if k[0] == n and k[4] == dtype},
                  key=lambda k: (-k[1], k[3], -k[2]))
    for key in keys:
        ours = ms(records, key, OURS)
        peers = [ms(records, key, s) for s in PEERS if ms(records, key, s)]
        speed = f"{min(peers) / ours:.2f}×" if ours and peers else "—"
        r = records.get(key + (OURS,)) or {}
        cos = f"{r['cosine']:.5f}" if r.get("cosine") is not None else "—"
        row = [str(key[1]), "yes" if key[3] else "no", f"{key[2]:g}"]
        lines.append("| " + " | ".join(row + [_cell(records, key, s) for s in systems] + [speed, cos]) + " |")
    return "\n".join(lines)


def tops_table(records, head_dim=128, dtype="float16", causal=False):
    """Dense-equivalent TOPS against N at density 1 (4·B·H·N²·D / time)."""
    systems = [s for s in (OURS, OURS_JAX, OURS_FP8) + PEERS if any(k[5] == s for k in records)]
    lengths = sorted({k[0] for k in records if k[1:5] == (head_dim, 1.0, causal, dtype)})
    if not lengths:
        return ""
    lines = ["| system | " + " | ".join(f"N={n}" for n in lengths) + " |", "|" + "---|" * (len(lengths) + 1)]
    for s in systems:
        cells = []
        for n in lengths:
            r = records.get((n, head_dim, 1.0, causal, dtype, s)) or {}
            cells.append(f"{r['dense_equiv_tops']:.0f}" if "dense_equiv_tops" in r else "—")
        lines.append(f"| {LABELS[s]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def provenance(metas, paths):
    m = metas[0]
    files = ", ".join(f"`benchmarks/results/{os.path.basename(p)}`" for p in paths)
    return (f"{m.get('gpu')} (driver {m.get('driver')}), torch {m.get('torch')}, triton {m.get('triton')}, "
            f"jax {m.get('jax')}, jax-triton {m.get('jax-triton')}, {m.get('date')}; B={m.get('batch')}, "
            f"H={m.get('heads')}. Medians of `triton.testing.do_bench`, end to end (quantization and block lists "
            f"included), inputs rotated over {m.get('n_sets')} random sets. From {files} by `benchmarks/report.py`.")


def markdown(metas, records, paths, n=None, verdicts=None):
    n = _pick_n(records, n)
    verdicts = verdicts if verdicts is not None else targets(records)
    parts = [provenance(metas, paths), "",
             f"Milliseconds at N={n}, fp16 (— not run; speed-up: the fastest peer's time over ours):", "",
             time_table(records, n)]
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
    errors = [r for r in records.values() if "error" in r]
    if errors or skipped:
        print(f"{len(errors)} records with errors, {len(skipped)} configurations skipped (see the results files)")
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
