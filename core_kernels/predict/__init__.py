"""The predict_mask op: a SpargeAttn-style block mask from q and k (kernels.py), and its plan (plan.py)."""
from .plan import OUTPUTS, make_plan, validate

__all__ = ["OUTPUTS", "make_plan", "validate"]
