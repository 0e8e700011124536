"""Decoding with an INT8 KV cache in a small Flax nnx causal self-attention layer (GQA: 8 query heads, 2 kv heads,
head dim 64).

The prompt is prefilled with the plain `sparse_sageattn(..., is_causal=True)` while its keys and values fill an
`Int8KVCache`; then each decode step, a `jax.jit`-compiled function with the cache donated (XLA updates it in
place), appends the new token's key and value and attends over the cache. Every output is compared with the same
layer whose attention is float32 `jax.nn.dot_product_attention` over the full keys and values. On a GPU the
kernels run through jax-triton; elsewhere the pure-JAX path (same semantics, a correctness path). --v-format e4m3
keeps the cached values in FP8 e4m3 (about 0.51x a bf16 cache's K+V bytes instead of 0.75x), at e4m3's precision.

    JAX_PLATFORMS=cpu python examples/flax_int8_cache_decode.py [--v-format e4m3]
"""
import argparse
import functools

import jax
import jax.numpy as jnp
from flax import nnx

from sparse_sageattn.jax import cache_append, cache_attend, init_cache, sparse_sageattn


class CausalSelfAttention(nnx.Module):
    """Projections in `dtype` (the kernels' float16 or bfloat16) around one of three attentions: the prefill, a
    decode step over the cache, or the float32 reference over the whole sequence."""

    def __init__(self, features, heads_q, heads_kv, head_dim, dtype, *, rngs):
        self.heads_q, self.heads_kv, self.head_dim, self.dtype = heads_q, heads_kv, head_dim, dtype
        linear = functools.partial(nnx.Linear, use_bias=False, dtype=dtype, rngs=rngs)
        self.query = linear(features, heads_q * head_dim)
        self.key_value = linear(features, 2 * heads_kv * head_dim)
        self.out = linear(heads_q * head_dim, features)

    def project(self, x):
        """x (B, n, features) -> q (B, n, Hq, D) and k, v (B, n, Hkv, D): the "NHD" layout."""
        batch, n, _ = x.shape
        q = self.query(x).reshape(batch, n, self.heads_q, self.head_dim)
        k, v = jnp.split(self.key_value(x).reshape(batch, n, 2 * self.heads_kv, self.head_dim), 2, axis=2)
        return q, k, v

    def merge_heads(self, attended):
        return self.out(attended.reshape(attended.shape[:2] + (-1,)).astype(self.dtype))

    def prefill(self, x, cache):
        q, k, v = self.project(x)
        cache = cache_append(cache, k, v, tensor_layout="NHD")  # the first fill: fixes K's smoothing vector
        return self.merge_heads(sparse_sageattn(q, k, v, is_causal=True, tensor_layout="NHD")), cache

    def decode(self, x, cache):
        q, k, v = self.project(x)
        cache = cache_append(cache, k, v, tensor_layout="NHD")
        return self.merge_heads(cache_attend(cache, q, is_causal=True, tensor_layout="NHD")), cache

    def reference(self, x):
        q, k, v = (t.astype(jnp.float32) for t in self.project(x))
        return self.merge_heads(jax.nn.dot_product_attention(q, k, v, is_causal=True))


def run(batch=2, prompt=200, new_tokens=8, features=256, heads_q=8, heads_kv=2, head_dim=64, capacity=256,
        dtype=jnp.float16, seed=0, v_format="native"):
    """Returns (prefill output, decode outputs (B, new_tokens, features), the reference's outputs at all positions)."""
    layer = CausalSelfAttention(features, heads_q, heads_kv, head_dim, dtype, rngs=nnx.Rngs(seed))
    x = jax.random.normal(jax.random.key(seed + 1), (batch, prompt + new_tokens, features), jnp.float32)
    graphdef, params = nnx.split(layer)

    @jax.jit
    def prefill(params, cache, x):
        return nnx.merge(graphdef, params).prefill(x, cache)

    @functools.partial(jax.jit, donate_argnums=1)  # the cache: the step's output replaces it
    def decode_step(params, cache, x):
        return nnx.merge(graphdef, params).decode(x, cache)

    cache = init_cache(batch, heads_kv, capacity, head_dim, dtype, v_format)
    prefilled, cache = prefill(params, cache, x[:, :prompt])
    decoded = []
    for i in range(prompt, prompt + new_tokens):  # the inputs are given: each step's output is checked alone
        out, cache = decode_step(params, cache, x[:, i:i + 1])
        decoded.append(out)
    assert int(cache.lens.min()) == int(cache.lens.max()) == prompt + new_tokens
    return prefilled, jnp.concatenate(decoded, axis=1), jax.jit(layer.reference)(x)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--v-format", choices=["native", "e4m3"], default="native",
                        help="the cached values: in the layer's dtype, or FP8 e4m3")
    args = parser.parse_args(argv)
    prefilled, decoded, reference = run(v_format=args.v_format)
    prompt = prefilled.shape[1]
    scale = float(jnp.abs(reference).max())
    prefill_diff = float(jnp.abs(prefilled.astype(jnp.float32) - reference[:, :prompt]).max())
    decode_diff = float(jnp.abs(decoded.astype(jnp.float32) - reference[:, prompt:]).max())
    print(f"backend {jax.default_backend()}, {args.v_format} values: {decoded.shape[1]} tokens decoded after a "
          f"{prompt}-token prompt; max |output - float32 reference|: prefill {prefill_diff:.2e}, decode "
          f"{decode_diff:.2e} (outputs up to {scale:.2f})")
    return prefill_diff, decode_diff, scale


if __name__ == "__main__":
    main()
