#!/usr/bin/env bash
# On the GPU machine (device tool): install the carried jax-triton wheel and this package, then run the GPU tests
# and the demo. Usage: bash tests/run_gpu.sh [pytest args...]   (carry .whl)
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 || echo "editable install failed"
export XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, jax; print('torch', torch.__version__, 'triton', triton.__version__, 'jax', jax.__version__)"
python3 -m pytest -q -rs "$@" 2>&1 | tee ${OUT:-/tmp}/pytest_gpu.log | tail -40
status=${PIPESTATUS[0]}
python3 examples/demo.py
exit $status
