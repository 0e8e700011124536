#!/usr/bin/env bash
# On the GPU machine (device tool, carry .whl, timeout_s 600): install the carried wheels (jax-triton,
# sageattention) and this package, run the benchmark suite, then plots and the targets report, all under $OUT
# (results JSON, run.log, report.txt, PNGs: at most 7 files come back).
# Usage: bash benchmarks/run_gpu.sh --quick        (any run.py arguments; --out is set here)
set -uo pipefail
out=${OUT:-/tmp/bench_out}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
# run.py keeps to its time budget (480 s from its start; a later --budget-s wins) and rewrites its JSON after
# every configuration; the hard stop (SIGINT: it writes what it has) leaves room for the plots and the report.
timeout -s INT -k 15 520 python3 benchmarks/run.py --budget-s 480 --out "$out" "$@" 2>&1 | tee "$out/run.log"
status=${PIPESTATUS[0]}
results=$(ls -t "$out"/*.json 2>/dev/null | head -1)
if [ -n "$results" ]; then
  python3 benchmarks/plot.py "$results" --out "$out" || echo "plots failed"
  python3 benchmarks/report.py "$results" --verbose > "$out/report.txt" 2>&1
  python3 benchmarks/report.py "$results"
fi
exit $status
