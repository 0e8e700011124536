"""sharded_sparse_sageattn on 8 fake CPU devices equals the unsharded call and compiles to HLO with no
collective. The device count must be set before JAX starts, so the check runs in a child process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from sparse_sageattn.jax import sharded_sparse_sageattn

SCRIPT = Path(__file__).with_name("sharding_check.py")


def test_sharded_equals_unsharded_without_collectives():
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
    result = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr[-4000:]
    assert result.returncode == 0, output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    cases = [line for line in lines if "case" in line]
    assert len(cases) == 6, output
    for case in cases:
        # The CPU path on a shard is the same computation on a smaller batch, but XLA CPU may reassociate its fp32
        # reductions (K's mean, row sums) for another shape: differences of an fp16 rounding, never of a wrong
        # shard (that would be O(1)). On CUDA each kernel program is independent of the batch: bitwise.
        assert max(case["out_diff"], case["lse_diff"], case["eager_diff"]) <= 2**-10, case
        assert case["devices"] == 8 and "data" in case["out_spec"] and "model" in case["out_spec"], case
        assert case["collectives"] == [], case
    assert lines[-1]["control_collectives"], "the collective search found nothing in a sharded sum: it is blind"


def test_indivisible_shards_are_refused():
    mesh = jax.sharding.AbstractMesh((2, 3), ("data", "model"))  # the check needs only the axis sizes
    q = jnp.zeros((1, 6, 64, 64), jnp.float16)
    k = jnp.zeros((1, 2, 64, 64), jnp.float16)
    with pytest.raises(ValueError, match=r"the kv head count 2 is not divisible by the 3 devices of head_axis"):
        sharded_sparse_sageattn(mesh, q, k, k, head_axis="model")
    with pytest.raises(ValueError, match=r"the batch 1 is not divisible by the 2 devices of batch_axis"):
        sharded_sparse_sageattn(mesh, q, q, q, batch_axis="data")
    with pytest.raises(TypeError, match=r"q must be float16 or bfloat16"):  # the shared validation, first
        sharded_sparse_sageattn(mesh, q.astype(jnp.float32), q, q, head_axis="model")
