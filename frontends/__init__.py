"""sparse_sageattn: block-sparse INT8 attention (SageAttention V1 numerics) in Triton, for PyTorch and JAX.

`from sparse_sageattn import sparse_sageattn` is the PyTorch function (the seed's import path);
`from sparse_sageattn.jax import sparse_sageattn` is the JAX one. Neither framework is imported until used.
"""
__all__ = ["sparse_sageattn"]


def __getattr__(name):
    if name == "sparse_sageattn":
        from .torch import sparse_sageattn

        return sparse_sageattn
    raise AttributeError(f"module 'sparse_sageattn' has no attribute {name!r}")
