"""Where a kernel's warps stall, from Nsight Compute's source page: warp-stall PC samples summed per partition of a
warp-specialized kernel (the SASS between two setmaxnreg instructions is one partition's code), per opcode and per
stall reason, and the instructions with the most samples.

GPU:  ncu --clock-control none --kernel-name regex:attention_sm90 --launch-count 1 --set full -o R \\
          python3 benchmarks/attention_ab.py --seq-lens 2048 --batch 8 --masks causal --launch-once
      ncu -i R.ncu-rep --page source --csv --print-source sass > R.csv
      python3 benchmarks/ncu_stalls.py R.csv [--names 2=worker,7=default,4=loader]
A kernel without setmaxnreg is one region (0).
"""
import argparse
import collections
import csv

SAMPLES = "Warp Stall Sampling (All Samples)"


def read(path):
    """[(region, sass text, samples, {stall reason: samples})] in address order."""
    rows = list(csv.reader(open(path, newline="")))
    at = next(i for i, r in enumerate(rows) if "Source" in (c.strip() for c in r) and SAMPLES in (c.strip() for c in r))
    head = [c.strip() for c in rows[at]]
    src, samples = head.index("Source"), head.index(SAMPLES)
    reasons = [i for i, c in enumerate(head) if c.startswith("stall_") and "Not Issued" not in c]
    region, out = 0, []
    for r in rows[at + 1:]:
        if len(r) <= max(src, samples):
            continue
        text = r[src].strip()
        if "SETMAXREG" in text:
            region += 1
        try:
            n = float(r[samples] or 0)
        except ValueError:
            continue
        out.append((region, text, n, {head[i][len("stall_"):]: float(r[i] or 0) for i in reasons}))
    return out


def opcode(text):
    words = text.split()
    word = words[1] if words and words[0].startswith("@") and len(words) > 1 else (words[0] if words else "?")
    return word.split(".")[0]


def summarize(data, names=None, top=20):
    """Lines of text: each region's share of all samples with its top opcodes and stall reasons, its share on
    global stores (STG) and loads (LDG), then the `top` instructions."""
    names = names or {}
    total = sum(n for _, _, n, _ in data) or 1.0
    lines = [f"samples: {total:.0f}"]
    for region in sorted({d[0] for d in data}):
        rows = [d for d in data if d[0] == region]
        here = sum(n for _, _, n, _ in rows)
        if here / total < 0.005:
            continue
        ops, why = collections.Counter(), collections.Counter()
        for _, text, n, reasons in rows:
            ops[opcode(text)] += n
            why.update(reasons)
        label = names.get(region, f"region {region}")
        lines.append(f"{label}: {here / total:.1%} of all samples")
        lines.append("  opcodes: " + " ".join(f"{o}={c / here:.1%}" for o, c in ops.most_common(12)))
        lines.append("  stalls:  " + " ".join(f"{k}={v / here:.0%}" for k, v in why.most_common(9)))
        lines.append(f"  STG {ops['STG'] / here:.1%}, LDG {ops['LDG'] / here:.1%} of its samples")
    lines.append(f"top {top} instructions (share of all samples, region, SASS):")
    for region, text, n, _ in sorted(data, key=lambda d: -d[2])[:top]:
        lines.append(f"  {n / total:6.2%} {names.get(region, region)} {text[:80]}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("csv", help="ncu --page source --csv --print-source sass output")
    p.add_argument("--names", default="", help="region labels, e.g. 2=worker,7=default,4=loader")
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args(argv)
    names = {int(k): v for k, v in (item.split("=", 1) for item in args.names.split(",") if item)}
    print("\n".join(summarize(read(args.csv), names, args.top)))


if __name__ == "__main__":
    main()
