"""Static block-mask builders for the JAX frontend: the definitions of sparse_sageattn.masks, as JAX bool arrays
of shape (ceil(Nq/128), ceil(Nk/64)) (on `device`, else the default one). The lengths are Python ints, so under
jax.jit the mask is a constant. See sparse_sageattn.masks for the exact element-level patterns."""
import jax
import jax.numpy as jnp

from sparse_sageattn import masks as _masks

causal_mask, sliding_window_mask, sink_mask, union_mask = _masks.converted(
    lambda mask, device: jnp.asarray(mask) if device is None else jax.device_put(mask, device))
