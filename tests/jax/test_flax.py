"""The Flax attention_fn adapter in nnx.MultiHeadAttention and linen.MultiHeadDotProductAttention, its refusals,
and examples/flax_block.py (a jitted nnx transformer block using it)."""
import functools
import importlib.util
from pathlib import Path

import flax.linen as linen
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sparse_sageattn.jax import attention_fn, sparse_sageattn
from sparse_sageattn.reference import cosine

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "flax_block.py"
BATCH, N, HEADS, HEAD_DIM = 2, 256, 4, 32


def qkv(seed=0, n_k=N, dtype=jnp.bfloat16):
    keys = jax.random.split(jax.random.key(seed), 3)
    return [jax.random.normal(key, (BATCH, n, HEADS, HEAD_DIM), dtype) for key, n in zip(keys, (N, n_k, n_k))]


def test_adapter_is_sparse_sageattn_in_nhd():
    q, k, v = qkv()
    block_mask = jnp.asarray(np.random.default_rng(0).random((HEADS, 2, 4)) < 0.5).at[:, :, 0].set(True)
    fn = functools.partial(attention_fn, block_mask=block_mask)
    expected = sparse_sageattn(q, k, v, block_mask, True, "NHD")
    assert np.array_equal(fn(q, k, v, is_causal=True), expected)
    # a concrete dense mask that is block-structured is turned into the same block mask
    dense = np.repeat(np.repeat(np.asarray(block_mask), 128, axis=1), 64, axis=2)[None]
    assert np.array_equal(attention_fn(q, k, v, mask=dense, is_causal=True), expected)
    # both: the two masks are combined
    half = np.ones((1, 1, N, N), bool)
    half[..., 128:] = False
    both = sparse_sageattn(q, k, v, jnp.logical_and(block_mask, jnp.arange(4) < 2), False, "NHD")
    assert np.array_equal(fn(q, k, v, mask=half), both)


def test_nnx_multi_head_attention_jitted():
    block_mask = np.ones((2, 4), bool)
    block_mask[1, 0] = False
    layer = nnx.MultiHeadAttention(num_heads=HEADS, in_features=64, dtype=jnp.bfloat16, decode=False,
                                   attention_fn=functools.partial(attention_fn, block_mask=block_mask),
                                   rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (BATCH, N, 64))
    out = nnx.jit(lambda layer, x: layer(x, is_causal=True))(layer, x)
    assert out.shape == (BATCH, N, 64) and np.isfinite(np.asarray(out, np.float32)).all()
    # the same layer with Flax's own attention under the equivalent element mask
    rows, cols = np.arange(N)[:, None], np.arange(N)[None, :]
    dense = np.repeat(np.repeat(block_mask, 128, 0), 64, 1) & (cols <= rows)
    layer.attention_fn = lambda q, k, v, **_: nnx.dot_product_attention(q, k, v, mask=jnp.asarray(dense))
    assert cosine(out, layer(x)) >= 0.999  # bf16 Q/K/V/out projections around the INT8 attention


def test_linen_multi_head_dot_product_attention():
    fn = functools.partial(attention_fn, is_causal=True)  # linen does not pass is_causal: bind it
    module = linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=64, dtype=jnp.float16,
                                                attention_fn=fn)
    x = jax.random.normal(jax.random.key(2), (BATCH, N, 64))
    params = module.init(jax.random.key(3), x)
    out = jax.jit(module.apply)(params, x)
    reference = linen.MultiHeadDotProductAttention(num_heads=HEADS, qkv_features=64, dtype=jnp.float16)
    ref = reference.apply(params, x, mask=linen.make_causal_mask(jnp.ones((BATCH, N))))
    assert out.shape == (BATCH, N, 64) and cosine(out, ref) >= 0.999


def test_kv_prefix_mask_becomes_kv_lens():
    """A traced decode-cache mask (a prefix of the keys per batch row) is the same call as kv_lens."""
    q, k, v = qkv(4, n_k=300)
    q = q[:, :1]
    lens = jnp.asarray([300, 77], jnp.int32)
    fn = jax.jit(functools.partial(attention_fn, kv_prefix_mask=True))
    prefix = (jnp.arange(300) < lens[:, None])[:, None, None, :]  # (B, 1, 1, Nk), as linen's decode builds it
    assert np.array_equal(fn(q, k, v, mask=prefix), sparse_sageattn(q, k, v, None, False, "NHD", kv_lens=lens))
    # no mask (linen's init pass): every key
    assert np.array_equal(fn(q, k, v), sparse_sageattn(q, k, v, None, False, "NHD"))


def test_linen_decode_with_its_cache():
    """linen's decode=True: one token a step into its preallocated cache, jitted; the attention_fn reads the
    cache's mask as kv_lens. Against the same module with Flax's own attention (fp16 projections around both)."""
    fn = functools.partial(attention_fn, kv_prefix_mask=True)
    make = functools.partial(linen.MultiHeadDotProductAttention, num_heads=HEADS, qkv_features=64, dtype=jnp.float16,
                             decode=True)
    ours, flax_own = make(attention_fn=fn), make()
    x = jax.random.normal(jax.random.key(5), (BATCH, 40, 64))
    variables = ours.init(jax.random.key(6), x)  # the cache holds 40 positions
    params, cache = variables["params"], variables["cache"]
    ref_cache = cache

    @functools.partial(jax.jit, static_argnums=0)
    def step(module, cache, token):
        out, updated = module.apply({"params": params, "cache": cache}, token, mutable=["cache"])
        return out, updated["cache"]

    for i in range(12):
        out, cache = step(ours, cache, x[:, i:i + 1])
        ref, ref_cache = step(flax_own, ref_cache, x[:, i:i + 1])
        assert cosine(out, ref) >= 0.999, i
    assert int(cache["cache_index"]) == 12


def test_refusals_are_clear():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="dropout is not supported"):
        attention_fn(q, k, v, dropout_rate=0.1, deterministic=False)
    attention_fn(q, k, v, dropout_rate=0.1, deterministic=True)  # no dropout happens: accepted
    rows, cols = np.arange(N)[:, None], np.arange(N)[None, :]
    with pytest.raises(ValueError, match=r"mask is not block-structured.*query block 0, key block 0"):
        attention_fn(q, k, v, mask=(cols <= rows)[None, None])
    with pytest.raises(ValueError, match="traced dense mask"):
        jax.jit(lambda m: attention_fn(q, k, v, mask=m))(jnp.ones((1, 1, N, N), bool))
    with pytest.raises(ValueError, match="mask of shape"):
        attention_fn(q, k, v, mask=np.ones((3, 1, N, N), bool))
    with pytest.raises(ValueError, match="sow_weights"):
        attention_fn(q, k, v, module=object())
    with pytest.raises(TypeError, match="dtype=jnp.bfloat16"):
        attention_fn(*qkv(dtype=jnp.float32))
    assert attention_fn(*qkv(dtype=jnp.float32), dtype=jnp.float16).dtype == jnp.float16


def test_example_flax_block():
    spec = importlib.util.spec_from_file_location("flax_block", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    (block, attn), (block_ref, attn_ref) = example.run(batch=1, n=384, features=128, heads=2)
    assert block.shape == (1, 384, 128)
    assert cosine(attn, attn_ref) >= 0.999  # bf16 projections around the INT8 attention
    assert cosine(block, block_ref) >= 0.9999
