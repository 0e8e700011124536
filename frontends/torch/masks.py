"""Static block-mask builders for the torch frontend: the definitions of sparse_sageattn.masks, as torch bool
tensors of shape (ceil(Nq/128), ceil(Nk/64)) on `device`. See that module for the exact element-level patterns."""
import torch

from sparse_sageattn import masks as _masks


def _tensor(mask, device):
    return torch.from_numpy(mask).to(device)


def causal_mask(n_q, n_k, *, device=None):
    return _tensor(_masks.causal_mask(n_q, n_k), device)


def sliding_window_mask(n_q, n_k, window, lookahead=0, *, device=None):
    return _tensor(_masks.sliding_window_mask(n_q, n_k, window, lookahead), device)


def sink_mask(n_q, n_k, tokens, global_queries=False, *, device=None):
    return _tensor(_masks.sink_mask(n_q, n_k, tokens, global_queries), device)


def union_mask(n_q, n_k, *, causal=False, window=None, lookahead=0, sink=0, global_queries=False, device=None):
    return _tensor(_masks.union_mask(n_q, n_k, causal=causal, window=window, lookahead=lookahead, sink=sink,
                                     global_queries=global_queries), device)


# One definition, one docstring.
for _name in ("causal_mask", "sliding_window_mask", "sink_mask", "union_mask"):
    globals()[_name].__doc__ = getattr(_masks, _name).__doc__
