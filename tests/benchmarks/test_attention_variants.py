"""The two scripts that A/B attention-kernel variants: benchmarks/attention_ab.py --smoke through the interpreter,
and benchmarks/ptx_diff.py compiling the two-blocks-per-step variant for sm_90 (Q.K^T must be one N=128 wgmma, and
the SASS of its loop must be found and hold the step's exp2 count)."""
import os
import subprocess
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def test_attention_ab_smoke():
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "attention_ab.py"), "--smoke", "--variant",
                           "key_blocks_per_step=2"], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("key_blocks_per_step=2") == 4, proc.stdout  # dense, causal, half, tenth


def test_attention_ab_smoke_against_a_named_tree():
    """--tree NAME=ROOT: a variant planned and compiled from another source tree's core_kernels (here this one, so
    its out must be the table's bit for bit)."""
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "attention_ab.py"), "--smoke", "--masks", "tenth",
                           "--tree", f"copy={BENCH_DIR.parent}", "--variant", "tree=copy"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if "tree=copy" in line]
    assert len(rows) == 1 and "max|diff|=0.00e+00" in rows[0], proc.stdout


def test_attention_ab_whole_plan_smoke_with_a_named_kernel():
    """--whole-plan (every launch of a plan timed together) and a variant naming its kernel (a string value)."""
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "attention_ab.py"), "--smoke", "--whole-plan", "--masks",
                           "causal", "--variant", "kernel=triton,key_blocks_per_step=2"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert proc.stdout.count("kernel=triton,key_blocks_per_step=2") == 1, proc.stdout


def test_pair_variant_compiles_to_n128_qk_wgmma():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, str(BENCH_DIR / "ptx_diff.py"), "--head-dims", "64", "--attention",
                           "key_blocks_per_step=2", "--sass"], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("hd64")]
    assert len(lines) == 4 and all("m64n128k32.s32.s8.s8" in line and "m64n64k32" not in line for line in lines), \
        proc.stdout
    # The unmasked loop as ptxas compiled it: per thread (4 warps, 128 x 128 scores a step) 128 exp2 for P and one
    # per row it holds (4) for the rescale, all MUFU.EX2; nothing else in the step may call the unit.
    loops = [line for line in proc.stdout.splitlines() if line.strip().startswith("loop SASS:")]
    assert len(loops) == 4 and all(" MUFU.EX2=132 " in line + " " for line in loops), proc.stdout
