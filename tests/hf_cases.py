"""Shared by the CPU and GPU tests of the HF transformers adapter."""
import inspect

from transformers import AttentionInterface

from sparse_sageattn.torch.transformers import register


def recording(name, mask_id=None):
    """Registers the adapter under `name`, wrapped to record each call's (query, key, value, scaling, output)."""
    register(name, mask_id=mask_id)
    adapter, calls = AttentionInterface()[name], []

    def attention_fn(module, query, key, value, attention_mask, **kwargs):
        out, weights = adapter(module, query, key, value, attention_mask, **kwargs)
        calls.append((query, key, value, kwargs["scaling"], out))
        return out, weights

    AttentionInterface.register(name, attention_fn)
    return calls


def with_cache(model, cache):
    """The keyword that passes a KV cache to model(...): `cache` in transformers 5.x, `past_key_values` before (an
    unknown keyword is swallowed silently, and the step would run without the cache)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}
