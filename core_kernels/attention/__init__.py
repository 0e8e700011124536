"""The attention op: block-sparse INT8 attention (kernel.py), the launches before it (prepare.py: K sums and
block lists, Q/K quantization, built from quantize.py, block_lists.py and fp8.py), and its plan (plan.py)."""
from .plan import OUTPUTS, make_plan, validate

__all__ = ["OUTPUTS", "make_plan", "validate"]
