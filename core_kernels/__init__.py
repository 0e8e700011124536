"""The only kernels of sparse_sageattn, written in Triton. Imports triton and the standard library only."""
from triton.runtime.interpreter import InterpretedFunction

from . import configs
from .plan import ArrayDesc, Buffer, Launch, Plan, make_plan, make_predict_plan, validate, validate_predict
from .attention import attention_kernel

# True when TRITON_INTERPRET=1 was set before these kernels were decorated: they then run on CPU arrays.
INTERPRETED = isinstance(attention_kernel, InterpretedFunction)

__all__ = [
    "ArrayDesc", "Buffer", "Launch", "Plan", "make_plan", "validate", "make_predict_plan", "validate_predict",
    "configs", "INTERPRETED",
]
