"""The only kernels of sparse_sageattn, written in Triton. Imports triton and the standard library only.

  contract.py   the contract's constants (block sizes, LOG2E, E4M3_MAX, layouts, dtypes), each once
  launch.py     the generic plan layer: ArrayDesc, Buffer, Ref, Launch (arguments bound by name), Plan
  configs.py    the one static table of launch configurations
  alignment.py  a device helper every op's kernels share
  attention/    the sparse_sageattn op: kernels and plan
  predict/      the predict_mask op: kernels and plan
  kv_cache/     the INT8 KV cache op: append kernel and the plans of appending and of attention over it
"""
from triton.runtime.interpreter import InterpretedFunction

from . import attention, configs, contract, kv_cache, predict
from .launch import ArrayDesc, Buffer, Launch, Plan, Ref, contiguous_strides, global_scratch_bytes

# True when TRITON_INTERPRET=1 was set before these kernels were decorated: they then run on CPU arrays.
INTERPRETED = isinstance(attention.plan.attention_kernel, InterpretedFunction)

__all__ = [
    "ArrayDesc", "Buffer", "Launch", "Plan", "Ref", "contiguous_strides", "global_scratch_bytes", "attention",
    "kv_cache", "predict", "configs", "contract", "INTERPRETED",
]
