"""PyTorch frontend: validates, allocates and launches the core kernels through its executor (_launch.py: a custom
op under torch.compile, cached direct launches eagerly); static block-mask builders; a predicted block mask;
FlexAttention BlockMask interop."""
from .attention import sparse_sageattn
from .flex import from_flex_block_mask, to_flex_block_mask
from .masks import causal_mask, sink_mask, sliding_window_mask, union_mask
from .predict import predict_mask

__all__ = [
    "sparse_sageattn", "causal_mask", "sliding_window_mask", "sink_mask", "union_mask", "to_flex_block_mask",
    "from_flex_block_mask", "predict_mask",
]
