"""A small Flax nnx transformer block whose attention is sparse_sageattn, jitted, next to the same block with
Flax's dense float32 attention under the equivalent element mask.

The block mask is a causal sliding window with a sink: each 128-query block sees its own and the previous
`window_blocks` key blocks of 64, and the first key block. On a GPU the kernels run through jax-triton; elsewhere
the pure-JAX path runs (same semantics, a correctness path).

    python examples/flax_block.py
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sparse_sageattn.jax import attention_fn
from sparse_sageattn.reference import cosine, visible_pairs


def window_and_sink_mask(n, window_blocks):
    """(Qb, Kb) bool block mask: key blocks overlapping the `window_blocks` blocks before each query block, and
    the first key block."""
    q_start = np.arange(-(-n // 128))[:, None] * 128
    k_block = np.arange(-(-n // 64))[None, :]
    return ((k_block + 1) * 64 > q_start - window_blocks * 64) | (k_block == 0)


class Block(nnx.Module):
    """Pre-norm transformer block: causal multi-head attention and an MLP, each with a residual."""

    def __init__(self, features, heads, attention, dtype, *, rngs):
        self.norm1 = nnx.LayerNorm(features, rngs=rngs)
        self.attn = nnx.MultiHeadAttention(num_heads=heads, in_features=features, dtype=dtype, decode=False,
                                           attention_fn=attention, rngs=rngs)
        self.norm2 = nnx.LayerNorm(features, rngs=rngs)
        self.up = nnx.Linear(features, 4 * features, rngs=rngs)
        self.down = nnx.Linear(4 * features, features, rngs=rngs)

    def __call__(self, x):
        x = x + self.attn(self.norm1(x), is_causal=True)
        return x + self.down(nnx.gelu(self.up(self.norm2(x))))


@nnx.jit
def forward(model, x):
    """The block's output and its attention sublayer's (the residual stream hides attention errors)."""
    return model(x), model.attn(model.norm1(x), is_causal=True)


def run(batch=2, n=512, features=256, heads=4, window_blocks=2, seed=0):
    """Returns ((block, attention) of the sparse model, (block, attention) of the dense float32 one)."""
    block_mask = window_and_sink_mask(n, window_blocks)
    sparse = Block(features, heads, functools.partial(attention_fn, block_mask=block_mask), jnp.bfloat16,
                   rngs=nnx.Rngs(seed))

    # The reference: identical parameters (same seed), Flax's own attention in float32 under the element mask.
    dense_mask = jnp.asarray(visible_pairs(1, 1, n, n, block_mask, is_causal=True))

    def dense_attention(query, key, value, **_flax_kwargs):
        return nnx.dot_product_attention(query, key, value, mask=dense_mask)

    dense = Block(features, heads, dense_attention, jnp.float32, rngs=nnx.Rngs(seed))
    x = jax.random.normal(jax.random.key(seed + 1), (batch, n, features), jnp.float32)
    return forward(sparse, x), forward(dense, x)


def main():
    (block, attn), (block_ref, attn_ref) = run()
    print(f"backend {jax.default_backend()}: block output {block.shape}; cosine to the dense float32 model: "
          f"block {cosine(block, block_ref):.6f}, attention sublayer {cosine(attn, attn_ref):.6f}")


if __name__ == "__main__":
    main()
