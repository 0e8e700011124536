"""Static block-mask builders for the torch frontend: the definitions of sparse_sageattn.masks, as torch bool
tensors of shape (ceil(Nq/128), ceil(Nk/64)) on `device`. See that module for the exact element-level patterns."""
import torch

from sparse_sageattn import masks as _masks

causal_mask, sliding_window_mask, sink_mask, union_mask = _masks.converted(
    lambda mask, device: torch.from_numpy(mask).to(device))
