"""TOPS against sequence length from results files of benchmarks/run.py: one PNG per (dtype, causal), one panel per
head dim (rows) and mask density (columns), one line per system. CPU only (matplotlib, Agg). Only the sweep's
shape and random block masks are plotted (the rows of other shapes and the window + sink rows are report.py's
tables), so a run gives at most four PNGs.

    python benchmarks/plot.py benchmarks/results/GPU-DATE.json [more.json ...] [--out DIR] [--metric NAME]

--metric effective_tops (default: the work actually done, 4·D·visible pairs / time, comparable to the hardware's
ceilings across densities) or dense_equiv_tops (4·B·H·N²·D / time, halved when causal).
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from report import LABELS, SWEEP, load_results  # noqa: E402

STYLES = {"sparse_sageattn": ("C0", "o", "-"), "sparse_sageattn_jax": ("C0", "x", "--"),
          "sparse_sageattn_fp8": ("C5", "P", ":"),
          "flex_attention": ("C1", "s", "-"), "sdpa_cudnn": ("C2", "^", "-"), "sdpa_flash": ("C3", "v", "-"),
          "sageattention_1.0.6": ("C4", "D", "-"), "sparse_sageattn_jax_nhd": ("C0", "*", "-."),
          "jax_cudnn": ("C2", "2", "--")}


def plot(records, gpu, out_dir, metric="effective_tops"):
    """Writes the PNGs; returns their paths."""
    paths = []
    good = [r for (key, _), r in records.items()
            if metric in r and key.mask == "random" and (key.batch, key.heads, key.kv_heads) == SWEEP]
    for dtype in sorted({r["dtype"] for r in good}):
        for causal in sorted({r["causal"] for r in good if r["dtype"] == dtype}):
            subset = [r for r in good if r["dtype"] == dtype and r["causal"] == causal]
            head_dims = sorted({r["head_dim"] for r in subset})
            lengths = sorted({r["n"] for r in subset})
            densities = sorted({r["density"] for r in subset}, reverse=True)
            fig, axes = plt.subplots(len(head_dims), len(densities), squeeze=False, sharex=True,
                                     figsize=(3.6 * len(densities), 3.0 * len(head_dims)))
            for i, hd in enumerate(head_dims):
                for j, density in enumerate(densities):
                    ax = axes[i][j]
                    for system, (color, marker, line) in STYLES.items():
                        points = sorted((r["n"], r[metric]) for r in subset
                                        if r["system"] == system and r["head_dim"] == hd and r["density"] == density)
                        if points:
                            ax.plot(*zip(*points), color=color, marker=marker, linestyle=line, label=LABELS[system])
                    ax.set_xscale("log", base=2)
                    ax.set_xticks(lengths, [f"{n // 1024}k" if n >= 1024 else str(n) for n in lengths])
                    ax.set_title(f"hd{hd}, density {density:g}", fontsize=9)
                    ax.grid(True, alpha=0.3)
                    if j == 0:
                        ax.set_ylabel(metric.replace("_tops", " TOPS").replace("_", "-"))
                    if i == len(head_dims) - 1:
                        ax.set_xlabel("sequence length N")
            handles = {}  # one legend for the figure: each system once, whichever panel has it
            for ax in axes.flat:
                for h, label in zip(*ax.get_legend_handles_labels()):
                    handles.setdefault(label, h)
            fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=len(handles), fontsize=8)
            short = "fp16" if dtype == "float16" else "bf16" if dtype == "bfloat16" else dtype
            fig.suptitle(f"{gpu}: {short}, {'causal' if causal else 'not causal'}", fontsize=11)
            fig.tight_layout(rect=(0, 0.06, 1, 0.96))
            path = os.path.join(out_dir, f"tops-{short}-{'causal' if causal else 'full'}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
    return paths


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+")
    p.add_argument("--out", help="folder of the PNGs (default: the first results file's)")
    p.add_argument("--metric", default="effective_tops", choices=("effective_tops", "dense_equiv_tops"))
    args = p.parse_args(argv)
    metas, records, _ = load_results(args.results)
    out_dir = args.out or os.path.dirname(os.path.abspath(args.results[0]))
    os.makedirs(out_dir, exist_ok=True)
    for path in plot(records, metas[0].get("gpu", "?"), out_dir, args.metric):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
