"""benchmarks/report.py, plot.py and run.py's CPU-side parts on a synthetic results file: the targets' verdicts,
the README table and its markers, the plots, the grids and their estimate. Fast, CPU only."""
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH_DIR))

import report  # noqa: E402
import run  # noqa: E402

B, H = 2, 32


def _record(n, hd, density, causal, system, ms, **extra):
    dense = 4 * B * H * n * n * hd / (2 if causal else 1)
    return dict(n=n, head_dim=hd, density=density, causal=causal, dtype="float16", system=system, batch=B, heads=H,
                ms=ms, dense_equiv_ops=dense, effective_ops=dense * density, dense_equiv_tops=dense / ms / 1e9,
                effective_tops=dense * density / ms / 1e9, **extra)


def synthetic():
    """Designed verdicts: P1 MISS (cuDNN 5% faster), P2 PASS (flex 2x slower), P3 PASS, P4 MISS (fast enough, one
    point below the cosine bound), P5 quantization PASS (3%),
    P5 JAX MISS (one point 10% slower), memory PASS, accuracy PASS."""
    records = []
    for n in (4096, 8192):
        for hd in (64, 128):
            dense_ms = 4.0 * (n / 8192) ** 2 * hd / 128
            for density in (1.0, 0.5, 0.25, 0.1):
                ours = dense_ms * (density + 0.01)
                kernels = dict(channel_sums=0.01 * ours, quantize_k=0.01 * ours, quantize_q=0.005 * ours,
                               block_lists=0.005 * ours, attention=0.96 * ours)
                records.append(_record(n, hd, density, False, "sparse_sageattn", ours, cosine=0.99995, rel_l1=0.01,
                                       extra_mem_bytes=1000, mem_bound_bytes=1000, kernels_ms=kernels))
                slow = n == 8192 and hd == 64 and density == 0.1
                records.append(_record(n, hd, density, False, "sparse_sageattn_jax", ours * (1.10 if slow else 1.02),
                                       cosine=0.99995, rel_l1=0.01, extra_mem_bytes=None))
                records.append(_record(n, hd, density, False, "flex_attention", 2 * ours, cosine=1.0, rel_l1=0.0003))
                if density == 1.0:
                    records.append(_record(n, hd, density, False, "sdpa_cudnn", 0.95 * ours, cosine=1.0, rel_l1=3e-4))
                    fp8_cosine = 0.9993 if (n, hd) == (8192, 64) else 0.9996
                    records.append(_record(n, hd, density, False, "sparse_sageattn_fp8", 0.6 * ours,
                                           cosine=fp8_cosine, rel_l1=0.035, floor_cosine=0.9994))
                    records.append(dict(n=n, head_dim=hd, density=density, causal=False, dtype="float16",
                                        system="sageattention_1.0.6", error="RuntimeError: not importable"))
    meta = dict(gpu="NVIDIA H100 80GB HBM3", driver="580.159.04", torch="2.11.0+cu130", triton="3.6.0", jax="0.11.2",
                date="2026-11-26", batch=B, heads=H, n_sets=2)
    return dict(schema=1, meta=meta, records=records, skipped=[])


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "NVIDIA_H100_80GB_HBM3-2026-11-26.json"
    path.write_text(json.dumps(synthetic()))
    return path


def _verdicts(path):
    _, records, _ = report.load_results([path])
    return {(v.name, v.goal.split(":")[0]): v for v in report.targets(records)}


def test_target_verdicts(results):
    v = {name: verdict for (name, _), verdict in _verdicts(results).items() if name != "P5"}
    assert v["P1"].status == "MISS" and "0.95x" in v["P1"].note and len(v["P1"].points) == 1
    assert v["P2"].status == "PASS" and len(v["P2"].points) == 12 and "2.00x" in v["P2"].note
    assert v["P3"].status == "PASS" and len(v["P3"].points) == 12
    # 1.58x cuDNN everywhere; one point under the cosine bound
    assert v["P4"].status == "MISS" and len(v["P4"].points) == 4 and "cosine 0.99930" in v["P4"].note
    assert "1.58x" in v["P4"].note and "hd64 N=8192" in v["P4"].note
    assert v["Memory"].status == "PASS"
    assert v["Accuracy"].status == "PASS" and len(v["Accuracy"].points) == 32
    p5 = [verdict for (name, _), verdict in _verdicts(results).items() if name == "P5"]
    quant, jax = sorted(p5, key=lambda x: "JAX" in x.goal)
    assert quant.status == "PASS" and len(quant.points) == 2 and "3.0%" in quant.note
    assert jax.status == "MISS" and "1.100x" in jax.note and "hd64 N=8192 d=0.1" in jax.note


def test_jax_ratio_uses_torch_timed_in_groups(tmp_path):
    """Where a torch record has ms_group (timed as JAX is), P5's JAX ratio divides by it, not by ms."""
    data = synthetic()
    for r in data["records"]:
        if r["system"] == "sparse_sageattn" and r["density"] == 0.1 and r["n"] == 8192:
            r["ms_group"] = r["ms"] * (1.08 if r["head_dim"] == 64 else 0.9)  # JAX 1.10x / 1.08; 1.02x / 0.9
    path = tmp_path / "grouped.json"
    path.write_text(json.dumps(data))
    (jax,) = [v for (name, _), v in _verdicts(path).items() if name == "P5" and "JAX" in v.goal]
    assert jax.status == "MISS" and "1.133x" in jax.note and "hd128 N=8192 d=0.1" in jax.note
    assert len([p for p in jax.points if not p[2]]) == 1  # the hd64 point now passes: 1.10 / 1.08


def test_verdicts_turn_with_the_numbers(tmp_path):
    data = synthetic()
    for r in data["records"]:
        if r["system"] == "sdpa_cudnn":
            r["ms"] *= 1.2  # now ours is faster than cuDNN
        if r["system"] == "sparse_sageattn" and r["density"] == 0.25 and r["n"] == 4096 and r["head_dim"] == 128:
            r["ms"] *= 2  # t(0.25)/t(dense) = 0.52 > 0.28
        if r["system"] == "sparse_sageattn" and r["density"] == 1.0:
            r["extra_mem_bytes"] = 1100
    path = tmp_path / "r.json"
    path.write_text(json.dumps(data))
    v = _verdicts(path)
    assert v[("P1", "dense hd128 N>=8k")].status == "PASS"
    p3 = v[("P3", "t(d)/t(dense) <= d + 0.03 (N>=4k)")]
    assert p3.status == "MISS" and "hd128 N=4096 d=0.25" in p3.note and "limit 0.28" in p3.note
    assert v[("Memory", "extra device memory per call <= int8 q, k + scales + block lists (+ fp16 V for bf16)")].status == "MISS"


def test_table_and_readme_markers(results, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n\n{report.START_MARKER}\n(not measured yet)\n{report.END_MARKER}\n\nafter\n")
    assert report.main([str(results), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith("\n\nafter\n")
    inside = text.split(report.START_MARKER)[1].split(report.END_MARKER)[0]
    assert "(not measured yet)" not in inside
    assert "NVIDIA H100 80GB HBM3 (driver 580.159.04)" in inside
    row = next(line for line in inside.splitlines() if line.startswith("| 128 | no | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    # ours, JAX, ours FP8, flex, cuDNN, sage (error); best peer / ours = cuDNN's 0.95; cosine
    assert cells[3:] == ["4.040", "4.121", "2.424", "8.080", "3.838", "error", "0.95×", "0.99995"]
    assert "- P1 dense hd128 N>=8k: >= 1.0x SDPA cuDNN: MISS" in inside
    assert "| sparse_sageattn | N=4096 | N=8192 |" not in inside  # the TOPS table is per system, N in columns
    assert "| system | N=4096 | N=8192 |" in inside
    assert report.main([str(results), "--readme", str(readme)]) == 0
    assert readme.read_text() == text  # idempotent


def test_readme_without_markers_is_refused():
    with pytest.raises(ValueError, match="markers"):
        report.replace_between_markers("no markers here", "table")


def test_plots(results, tmp_path):
    pytest.importorskip("matplotlib")
    import plot

    assert plot.main([str(results), "--out", str(tmp_path)]) == 0
    png = tmp_path / "tops-fp16-full.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["tops-fp16-full.png"]


def test_quick_grid_fits_its_budget_and_serves_the_targets():
    grid = run.quick_grid()
    assert run.estimate_total(grid) <= run.QUICK_BUDGET_S
    first = grid[0]
    assert (first.n, first.head_dim, first.density, first.causal, first.dtype) == (8192, 128, 1.0, False, "float16")
    assert run.SDPA_CUDNN in first.systems and first.breakdown
    for n in (4096, 8192, 16384):  # P2's points, every density and head dim, with FlexAttention
        for hd in (64, 128):
            for d in (0.5, 0.25, 0.1):
                c = next(c for c in grid if (c.n, c.head_dim, c.density, c.causal, c.dtype) ==
                         (n, hd, d, False, "float16"))
                assert run.FLEX in c.systems and run.OURS_JAX in c.systems
    assert any(c.dtype == "bfloat16" for c in grid)
    assert len(run.full_grid()) == 6 * 2 * 4 * 2 * 2


def test_dry_run_lists_and_estimates(capsys):
    assert run.main(["--quick", "--dry-run", "--seq-lens", "8192", "--dtypes", "float16"]) == 0
    out = capsys.readouterr().out
    assert "16 configurations, estimated" in out and "hd128 N=8192 d=1 full fp16" in out


def test_masks_and_work_counts():
    gen = torch.Generator().manual_seed(0)
    mask = run.exact_density_mask(0.25, 2, 3, 1024, gen, "cpu")
    assert mask.shape == (2, 3, 8, 16) and (mask.sum(-1) == 4).all()
    c = run.Config(1024, 64, 1.0, True, "float16", (), False)
    assert run.effective_ops(c, None, 2, 3) == 4 * 64 * 2 * 3 * 1024 * 1025 // 2
    assert run.dense_equiv_ops(c, 2, 3) == 4 * 2 * 3 * 1024 * 1024 * 64 / 2
    full = run.Config(1024, 64, 0.25, False, "float16", (), False)
    assert run.effective_ops(full, mask, 2, 3) == 4 * 64 * 2 * 3 * 1024 * 256
