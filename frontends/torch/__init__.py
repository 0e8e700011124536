"""PyTorch frontend: validates, allocates and launches the core kernels through a torch.library.triton_op."""
from .attention import sparse_sageattn

__all__ = ["sparse_sageattn"]
