"""Static block masks from lengths alone: the one definition behind the torch and JAX builders (numpy, no data).

Each builder returns a bool array (ceil(Nq/128), ceil(Nk/64)) -- a `mask_id` for sparse_sageattn. The mask is
block-granular: a (128 query x 64 key) block is live if ANY (query, key) pair inside it is allowed by the pattern,
so every allowed pair is computed, and so are the other pairs of a live block (the kernel's only element-level
rule is `is_causal`).

Positions follow the causal convention of the contract (bottom-right aligned): query i sits at position
p = i + Nk - Nq of the key sequence, so with Nq == Nk query i is token i, and in decoding the last query is the
last key. Element-level patterns, for query position p and key j:
  causal            j <= p
  sliding window    p - window < j <= p + lookahead   (the `window` most recent keys including its own, plus
                    `lookahead` keys ahead for a two-sided window)
  sink              j < tokens                        (every query sees the first keys: an attention sink)
    global_queries  also p < tokens                   (those queries see every key: Longformer-style global tokens)
`union_mask` is the union of the chosen patterns (a block is live if any pattern makes it live).
"""
import functools

import numpy as np

from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N


def _count(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def _block_ranges(n_q, n_k):
    """Per query block its first and last position (column vectors), per key block its first and last key."""
    n_q, n_k = _count(n_q, "n_q"), _count(n_k, "n_k")
    rows = np.arange(-(-n_q // BLOCK_M)) * BLOCK_M
    keys = np.arange(-(-n_k // BLOCK_N)) * BLOCK_N
    shift = n_k - n_q
    first_pos, last_pos = rows[:, None] + shift, np.minimum(rows + BLOCK_M, n_q)[:, None] - 1 + shift
    return first_pos, last_pos, keys[None, :], np.minimum(keys + BLOCK_N, n_k)[None, :] - 1


def causal_mask(n_q, n_k):
    """Blocks holding a pair with j <= p. With is_causal=True it changes nothing (the kernel already skips the
    rest); it is for intersecting other masks, counting density or handing to FlexAttention."""
    _, last_pos, first_key, _ = _block_ranges(n_q, n_k)
    return first_key <= last_pos


def causal_full_mask(n_q, n_k):
    """Blocks whose EVERY pair has j <= p: inside them a causal element rule changes nothing (FlexAttention's
    "full" blocks under a causal mask_mod). Only keys below Nk count: each kernel bounds the key tail itself."""
    first_pos, _, _, last_key = _block_ranges(n_q, n_k)
    return last_key <= first_pos


def sliding_window_mask(n_q, n_k, window, lookahead=0):
    """Blocks holding a pair with p - window < j <= p + lookahead.

    The upper edge is exact only with is_causal=True and lookahead=0 (the kernel then applies j <= p per
    element); the lower edge is block-granular: a query may also see up to 127 + 63 keys older than its window
    (keys sharing a live block with an allowed pair). Every key inside the window is always seen.
    """
    window, lookahead = _count(window, "window"), _count(lookahead, "lookahead")
    if window == 0:
        raise ValueError("window must be >= 1 (a query's window includes its own position)")
    first_pos, last_pos, first_key, last_key = _block_ranges(n_q, n_k)
    # The windows of a block's queries overlap, so together they cover one interval of keys.
    return (first_key <= last_pos + lookahead) & (last_key > first_pos - window)


def sink_mask(n_q, n_k, tokens, global_queries=False):
    """Blocks holding a pair with j < tokens (or, with global_queries, p < tokens). Block-granular: every query
    also sees the rest of the sink's last key block (up to 63 keys), global queries their whole query block."""
    tokens = _count(tokens, "tokens")
    if not isinstance(global_queries, (bool, np.bool_)):
        raise TypeError(f"global_queries must be a bool, got {type(global_queries).__name__}")
    first_pos, _, first_key, _ = _block_ranges(n_q, n_k)
    live = np.broadcast_to(first_key < tokens, (first_pos.shape[0], first_key.shape[1]))
    return live | (first_pos < tokens) if global_queries else live.copy()


def union_mask(n_q, n_k, *, causal=False, window=None, lookahead=0, sink=0, global_queries=False):
    """The union of the chosen patterns: `causal`, a sliding `window` (with `lookahead`), `sink` tokens (with
    `global_queries`). E.g. StreamingLLM: union_mask(n, n, window=4096, sink=4) with is_causal=True."""
    if not isinstance(causal, (bool, np.bool_)):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if not causal and window is None and not sink:
        raise ValueError("union_mask: choose at least one pattern (causal=True, window=... or sink=...)")
    sink = _count(sink, "sink")
    if window is None and lookahead:
        raise ValueError("lookahead needs a window")
    first_pos, _, first_key, _ = _block_ranges(n_q, n_k)
    live = np.zeros((first_pos.shape[0], first_key.shape[1]), dtype=bool)
    if causal:
        live |= causal_mask(n_q, n_k)
    if window is not None:
        live |= sliding_window_mask(n_q, n_k, window, lookahead)
    if sink or global_queries:
        live |= sink_mask(n_q, n_k, sink, global_queries)
    return live


def converted(to_array):
    """The four public builders, each returning `to_array(numpy_mask, device)` and taking a keyword `device`:
    how a frontend offers them as its own arrays without restating them."""
    def convert(builder):
        @functools.wraps(builder)
        def framework_builder(*args, device=None, **kwargs):
            return to_array(builder(*args, **kwargs), device)
        return framework_builder
    return tuple(convert(b) for b in (causal_mask, sliding_window_mask, sink_mask, union_mask))
