"""The framework-free static mask builders (sparse_sageattn.masks) against a brute-force element-level check:
each pattern written pair by pair from its documented definition, reduced to blocks by "any pair in the block",
and the float64 reference's expansion of the mask (what the kernels compute) checked to hold every allowed pair
and nothing outside the documented block-granular slack."""
import numpy as np
import pytest

from sparse_sageattn import masks
from sparse_sageattn.reference import BLOCK_M, BLOCK_N, attention, visible_pairs

LENGTHS = [(1, 1), (128, 64), (129, 65), (300, 300), (200, 700), (700, 200), (1000, 1000), (0, 5), (5, 0)]
WINDOWS = [1, 63, 64, 100, 128, 500, 5000]


def allowed(n_q, n_k, causal=False, window=None, lookahead=0, sink=0, global_queries=False):
    """bool (Nq, Nk): the union of the patterns, pair by pair, at query positions p = i + Nk - Nq."""
    pos, key = np.arange(n_q)[:, None] + n_k - n_q, np.arange(n_k)[None, :]
    pairs = np.zeros((n_q, n_k), dtype=bool)
    if causal:
        pairs |= key <= pos
    if window is not None:
        pairs |= (key > pos - window) & (key <= pos + lookahead)
    pairs |= key < sink
    if global_queries:
        pairs |= pos < sink
    return pairs


def any_per_block(pairs):
    n_q, n_k = pairs.shape
    n_qb, n_kb = -(-n_q // BLOCK_M), -(-n_k // BLOCK_N)
    padded = np.zeros((n_qb * BLOCK_M, n_kb * BLOCK_N), dtype=bool)
    padded[:n_q, :n_k] = pairs
    return padded.reshape(n_qb, BLOCK_M, n_kb, BLOCK_N).any(axis=(1, 3))


def check_exact(got, pairs):
    assert got.dtype == bool and got.shape == (-(-pairs.shape[0] // BLOCK_M), -(-pairs.shape[1] // BLOCK_N))
    np.testing.assert_array_equal(got, any_per_block(pairs))


@pytest.mark.parametrize("n_q,n_k", LENGTHS)
def test_causal(n_q, n_k):
    check_exact(masks.causal_mask(n_q, n_k), allowed(n_q, n_k, causal=True))


@pytest.mark.parametrize("n_q,n_k", LENGTHS)
def test_causal_full_blocks(n_q, n_k):
    """Full blocks: every real pair causal; the partial ones (live but not full) are where the diagonal runs."""
    pairs = allowed(n_q, n_k, causal=True)
    padded_out = ~any_per_block(~pairs)  # no disallowed pair inside (keys past Nk are not pairs)
    np.testing.assert_array_equal(masks.causal_full_mask(n_q, n_k), padded_out)


@pytest.mark.parametrize("lookahead", [0, 37])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("n_q,n_k", LENGTHS)
def test_sliding_window(n_q, n_k, window, lookahead):
    check_exact(masks.sliding_window_mask(n_q, n_k, window, lookahead),
                allowed(n_q, n_k, window=window, lookahead=lookahead))


@pytest.mark.parametrize("global_queries", [False, True])
@pytest.mark.parametrize("tokens", [0, 1, 64, 130])
@pytest.mark.parametrize("n_q,n_k", LENGTHS)
def test_sink(n_q, n_k, tokens, global_queries):
    check_exact(masks.sink_mask(n_q, n_k, tokens, global_queries),
                allowed(n_q, n_k, sink=tokens, global_queries=global_queries))


PATTERNS = [
    dict(window=100, sink=4),
    dict(window=256, sink=130, global_queries=True),
    dict(causal=True, sink=64),
    dict(causal=True, window=1, lookahead=200),
    dict(window=500, lookahead=37, sink=1, global_queries=True),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: "-".join(f"{k}{v}" for k, v in p.items()))
@pytest.mark.parametrize("n_q,n_k", LENGTHS)
def test_union(n_q, n_k, pattern):
    check_exact(masks.union_mask(n_q, n_k, **pattern), allowed(n_q, n_k, **pattern))


@pytest.mark.parametrize("n_q,n_k", [(300, 300), (200, 700), (700, 200), (1000, 1000)])
def test_reference_sees_every_allowed_pair(n_q, n_k):
    """Through the reference's expansion (block mask to elements, then the causal rule): StreamingLLM's
    causal window + sink keeps every allowed pair, is exact on the causal side, and adds only keys sharing the
    sink's key block or less than a query block plus a key block older than the window."""
    window, sink = 100, 4
    mask = masks.union_mask(n_q, n_k, window=window, sink=sink)
    seen = visible_pairs(1, 1, n_q, n_k, mask, is_causal=True)[0, 0]
    wanted = allowed(n_q, n_k, window=window, sink=sink) & allowed(n_q, n_k, causal=True)
    assert not (wanted & ~seen).any()
    pos, key = np.arange(n_q)[:, None] + n_k - n_q, np.arange(n_k)[None, :]
    extra = seen & ~wanted
    assert not (extra & (key > pos)).any()
    sink_block_end = -(-sink // BLOCK_N) * BLOCK_N
    assert (extra & (key < sink_block_end)).any()  # the slack is real, so the next line tests something
    assert not (extra & (key >= sink_block_end) & (key <= pos - window - (BLOCK_M - 1) - (BLOCK_N - 1))).any()


@pytest.mark.parametrize("n_q,n_k", [(300, 300), (200, 700), (700, 200)])
def test_causal_mask_changes_nothing_under_is_causal(n_q, n_k):
    rng = np.random.default_rng(n_q + n_k)
    q, k, v = rng.standard_normal((1, 1, n_q, 16)), rng.standard_normal((1, 1, n_k, 16)), rng.standard_normal(
        (1, 1, n_k, 16))
    with_mask = attention(q, k, v, masks.causal_mask(n_q, n_k), is_causal=True)
    without = attention(q, k, v, None, is_causal=True)
    for a, b in zip(with_mask, without):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("call,error,words", [
    (lambda: masks.causal_mask(-1, 5), ValueError, "n_q"),
    (lambda: masks.causal_mask(5, 2.0), TypeError, "n_k"),
    (lambda: masks.causal_mask(True, 5), TypeError, "n_q"),
    (lambda: masks.sliding_window_mask(5, 5, 0), ValueError, "window"),
    (lambda: masks.sliding_window_mask(5, 5, None), TypeError, "window"),
    (lambda: masks.sliding_window_mask(5, 5, 3, -1), ValueError, "lookahead"),
    (lambda: masks.sink_mask(5, 5, -2), ValueError, "tokens"),
    (lambda: masks.sink_mask(5, 5, 2, global_queries=1), TypeError, "global_queries"),
    (lambda: masks.union_mask(5, 5), ValueError, "pattern"),
    (lambda: masks.union_mask(5, 5, sink=2, lookahead=3), ValueError, "lookahead"),
    (lambda: masks.union_mask(5, 5, causal=1), TypeError, "causal"),
    (lambda: masks.union_mask(5, 5, sink="4"), TypeError, "sink"),
])
def test_bad_arguments(call, error, words):
    with pytest.raises(error, match=words):
        call()
