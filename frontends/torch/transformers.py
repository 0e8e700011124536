"""Hugging Face transformers adapter: `attn_implementation="sparse_sageattn"` after `register()`.

    from sparse_sageattn.torch.transformers import register
    register()
    model = AutoModelForCausalLM.from_pretrained(name, attn_implementation="sparse_sageattn", dtype=torch.float16)

What transformers' masks become. The kernel's only element-level rule is `is_causal` (query i sees key j iff
j <= i + Nk - Nq, bottom-right aligned), so the mask function registered with the attention function checks, once
per forward, that the model's mask is exactly that rule (or no mask at all) on every query that matters, and
returns None; anything else raises a ValueError saying what to do instead:

- Causal LMs: `is_causal=True` from the attention module. Bottom-right alignment is right for prefill (Nq = Nk)
  and for decoding with the default DynamicCache (Nq < Nk, the last query is the last key).
- Padding, causal models: right padding (each row of `attention_mask` is ones then zeros) is exact: a real token
  never sees a later position, so never a pad; pad positions' outputs differ from eager's and are meaningless
  either way. Left padding, or padding anywhere else (e.g. right-padded batches decoding with a cache), is
  refused: pad keys before a real token would be seen. Use batch size 1 or right padding (prefill / scoring).
- Padding, bidirectional attention: refused (every query would see the pads).
- Sliding-window layers (Mistral-style `config.sliding_window`): exact, and run as plain causal attention, while
  the window covers every key a query is given (sequences up to the window; decoding with a DynamicCache, which
  keeps the window). Refused once the window cuts keys off: the block masks (`sliding_window_mask`) are
  block-granular and would let a query see up to 190 keys older than its window, which is not the model.
- Static caches (`cache_implementation="static"`): exact. Their key buffers have a fixed size with unwritten slots
  past the tokens seen; the mask function hands the attention function the count of written keys (a device
  tensor, no host sync) and the kernel takes it as `kv_lens`: slots past it are never read, and the causal rule
  aligns to it. Shapes stay fixed through a generation, so compiled and CUDA-graph decoding compile once.
- Other mask patterns (packed sequences, chunked attention, image-token overlays, 4D masks given to the model):
  refused.
- While compiling (`torch.compile`), a 2D `attention_mask` cannot be checked without reading its values (a graph
  break): pass `attention_mask=None` (unpadded inputs) to compiled forwards, and keep `use_cache=True`: without a
  cache transformers treats the position ids as possibly packed sequences, a pattern refused above.
- Dropout > 0 (training mode with `attention_dropout`), `output_attentions=True`, softcapping, attention sinks and
  position biases: refused. There is no backward pass yet either (inputs requiring grad raise).

INT8 KV cache: `generate(..., past_key_values=Int8Cache(model.config, max_cache_len))` keeps every layer's K
quantized as it grows (sparse_sageattn.torch.kv_cache.Int8KVCache; `v_format="e4m3"` keeps V in FP8 too, half
its bytes, at the e4m3 format's accuracy): the prompt is attended by the plain call and
fixes each layer's smoothing vector; each later step appends its tokens (at most 128 a step) and attends over the
cache, reading the INT8 keys as they are. Batches must be unpadded (rows advance together); beam search, which
reorders the cache, is not supported.

`mask_id` at registration adds block sparsity on top (an approximation you choose): a tensor broadcastable to
(B, Hq, ceil(Nq/128), ceil(Nk/64)) for every call, or a callable `(q_len, kv_len, device) -> mask_id`, e.g.
`lambda nq, nk, device: union_mask(nq, nk, window=1024, sink=4, device=device)`, since prefill and decoding calls
have different block grids.
"""
import functools

import torch

from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N, PV_DTYPES
from sparse_sageattn.core_kernels.kv_cache import cache_arrays
from sparse_sageattn.torch.attention import sparse_sageattn
from sparse_sageattn.torch.kv_cache import Int8KVCache

__all__ = ["Int8Cache", "register", "sparse_sageattn_attention", "sparse_sageattn_mask"]

_CACHE_TAG = "_sparse_sageattn_int8_cache"  # set on an Int8Cache layer's key tensor: the attention function's cue


@functools.cache
def _int8_cache_classes():
    """Int8Cache and its layer, built on first use: transformers is imported only by those who use it."""
    from transformers.cache_utils import Cache, CacheLayerMixin

    class Int8CacheLayer(CacheLayerMixin):
        """One decoder layer's Int8KVCache, created at the first update with the prompt's shapes."""

        def __init__(self, max_cache_len, v_format):
            super().__init__()
            self.max_cache_len = max_cache_len
            self.v_format = v_format
            self.cache = None

        def lazy_initialization(self, key_states, value_states):
            batch, heads_kv, _, head_dim = key_states.shape
            capacity = -(-self.max_cache_len // BLOCK_N) * BLOCK_N
            self.cache = Int8KVCache(batch, heads_kv, capacity, head_dim, key_states.dtype, key_states.device,
                                     self.v_format)
            self.keys, self.values = self.cache.arrays["k_int8"], self.cache.arrays["v_cache"]
            setattr(self.keys, _CACHE_TAG, self.cache)
            self.device = key_states.device
            self.is_initialized = True

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            prompt = self.cache.tokens == 0
            if not prompt and key_states.shape[2] > BLOCK_M:
                raise ValueError(f"Int8Cache: after the prompt at most {BLOCK_M} tokens a step are supported, got "
                                 f"{key_states.shape[2]}")
            self.cache.append(key_states, value_states)
            # the prompt attends to itself with the plain call; later steps to the cache (tagged keys)
            return (key_states, value_states) if prompt else (self.keys, self.values)

        def get_mask_sizes(self, query_length):
            return self.get_seq_length() + query_length, 0

        def get_seq_length(self):
            return self.cache.tokens if self.is_initialized else 0

        def get_max_length(self):
            return self.max_cache_len

        def reset(self):
            if self.is_initialized:
                for t in self.cache.arrays.values():
                    t.zero_()
                self.cache.tokens = 0

        def reorder_cache(self, beam_idx):
            raise NotImplementedError("Int8Cache: beam search (reordering the cache) is not supported")

    class Int8Cache(Cache):
        """A transformers Cache of INT8 KV cache layers, one per decoder layer, each holding up to
        max_cache_len tokens (prompt and generated), V in v_format ("native" or "e4m3")."""

        def __init__(self, config, max_cache_len, v_format="native"):
            if not isinstance(max_cache_len, int) or max_cache_len < 1:
                raise ValueError(f"Int8Cache: max_cache_len must be a positive int, got {max_cache_len!r}")
            cache_arrays(v_format)  # refuses an unknown format now, not at the first layer's update
            text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
            super().__init__(layers=[Int8CacheLayer(max_cache_len, v_format)
                                     for _ in range(text_config.num_hidden_layers)])

    return Int8Cache


def __getattr__(name):
    if name == "Int8Cache":
        return _int8_cache_classes()
    raise AttributeError(name)

# Keyword arguments some models pass to change attention in ways the kernel cannot do; any non-None value is refused.
_UNSUPPORTED = ("softcap", "s_aux", "sinks", "position_bias")


def sparse_sageattn_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                         attention_mask=None, local_size=None, use_vmap=False, device="cpu", **kwargs):
    """transformers' `AttentionMaskInterface` function: returns None when the kernel's rule is the model's mask
    on every query that matters (see the module docstring), else raises a ValueError."""
    from transformers.masking_utils import bidirectional_mask_function, causal_mask_function, sdpa_mask

    if isinstance(q_offset, torch.Tensor) or (kv_offset == 0 and kv_length > q_offset + q_length):
        # a static cache (its q_offset is a tensor once filled; at prefill its buffers are longer than the tokens)
        return _static_cache_lengths(batch_size, q_length, q_offset, kv_offset, mask_function, attention_mask,
                                     local_size, causal_mask_function, device)
    if kv_offset + kv_length != q_offset + q_length:
        raise ValueError(f"sparse_sageattn: keys at positions {kv_offset}..{kv_offset + kv_length - 1} do not end "
                         f"at the last query (position {q_offset + q_length - 1}); the kernel's causal rule is "
                         "bottom-right aligned")
    if mask_function is causal_mask_function:
        causal = True
    elif mask_function is bidirectional_mask_function:
        causal = False
    elif local_size is not None:
        causal = _windowed_pattern(q_length, kv_length, q_offset, kv_offset, mask_function, local_size, use_vmap,
                                   device, sdpa_mask)
    else:
        hint = (" (while compiling without a cache transformers cannot rule out packed sequences: keep "
                "use_cache=True)" if torch.compiler.is_compiling() else "")
        raise ValueError("sparse_sageattn: this model's mask pattern (packed sequences, chunked attention or a "
                         f"mask overlay) is not expressible by the kernel's causal rule{hint}")
    if attention_mask is not None:
        _check_padding(attention_mask[:, :kv_offset + kv_length], causal)
    return None


def _static_cache_lengths(batch_size, q_length, q_offset, kv_offset, mask_function, attention_mask, local_size,
                          causal_mask_function, device):
    """A static cache: q_offset tokens (a device tensor, or 0 at prefill) are in the buffers before this call's
    q_length, so the first q_offset + q_length keys exist once the layer has written its own. Returned as
    kv_lens, int32 (B,), on the device."""
    if mask_function is not causal_mask_function or local_size is not None or kv_offset != 0:
        raise ValueError("sparse_sageattn: with a static cache only plain causal attention is supported (no sliding "
                         "window, bidirectional or overlaid masks); use the default DynamicCache")
    # generate() may hand back the counts this function returned (its precomputed mask); only a padding mask is read
    if attention_mask is not None and attention_mask.dtype != torch.int32:
        _check_padding(attention_mask, True)
    if isinstance(q_offset, torch.Tensor):
        return (q_offset.reshape(1) + q_length).to(torch.int32).repeat(batch_size)
    return torch.full((batch_size,), q_offset + q_length, dtype=torch.int32, device=device)


def _windowed_pattern(q_length, kv_length, q_offset, kv_offset, mask_function, window, use_vmap, device, sdpa_mask):
    # A window is exact only while it cuts nothing: the oldest key given must be inside the last query's window.
    if kv_offset <= q_offset + q_length - 1 - window:
        raise ValueError(
            f"sparse_sageattn: the sliding window ({window} tokens) cuts keys off (keys from position {kv_offset}, "
            f"queries up to {q_offset + q_length - 1}); block masks would add up to 190 older keys per query. Use "
            f"sequences of at most {window} tokens, decode with a DynamicCache, or another attn_implementation")
    if torch.compiler.is_compiling():
        raise ValueError("sparse_sageattn: sliding-window layers cannot be checked while compiling (the check "
                         "reads the mask's values); run them uncompiled")
    # The window cuts nothing, so the pattern should be plain causal (or full, for bidirectional windows); evaluate
    # it on this call's grid (at most window x window) rather than trust the function's identity.
    grid = dict(batch_size=1, q_length=q_length, kv_length=kv_length, q_offset=q_offset, kv_offset=kv_offset,
                allow_is_causal_skip=False, device=device)
    pattern = sdpa_mask(mask_function=mask_function, use_vmap=use_vmap, **grid)
    if pattern.all():
        return False
    from transformers.masking_utils import causal_mask_function

    if torch.equal(pattern, sdpa_mask(mask_function=causal_mask_function, **grid)):
        return True
    raise ValueError("sparse_sageattn: this model's windowed mask pattern is neither causal nor full attention")


def _check_padding(padding, causal):
    if torch.compiler.is_compiling():
        raise ValueError("sparse_sageattn: attention_mask can't be checked while compiling (it reads the mask's "
                         "values); pass attention_mask=None (unpadded inputs) to compiled forwards")
    if bool(padding.all()):
        return
    if not causal:
        raise ValueError("sparse_sageattn: attention_mask has padding, and in bidirectional attention every query "
                         "would see the pads; use unpadded batches (e.g. batch size 1)")
    lengths = padding.sum(-1, keepdim=True)
    right_padded = torch.arange(padding.shape[-1], device=padding.device) < lengths
    if not torch.equal(padding, right_padded):
        raise ValueError("sparse_sageattn: attention_mask has padding before real tokens (left padding, or a "
                         "right-padded batch decoding with a cache); the kernel would let real tokens see those "
                         "pads. Pad on the right for prefill / scoring, or use batch size 1")


def sparse_sageattn_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                              mask_id=None, pv_dtype="fp16", **kwargs):
    """transformers' `AttentionInterface` function: query (B, Hq, Nq, D), key / value (B, Hkv, Nk, D) in, returns
    (attn_output (B, Nq, Hq, D), None). GQA goes to the kernel as is (no repeat_kv). attention_mask: None, or from
    a static cache the written keys per batch row (int32 (B,), the mask function's), passed on as kv_lens."""
    int8_cache = getattr(key, _CACHE_TAG, None)
    kv_lens = None
    if (isinstance(attention_mask, torch.Tensor) and attention_mask.dtype == torch.int32
            and tuple(attention_mask.shape) == (query.shape[0],)):
        kv_lens, attention_mask = attention_mask, None
    if attention_mask is not None:
        raise ValueError(
            f"sparse_sageattn: attention_mask must be None here, got a {type(attention_mask).__name__}: a "
            "precomputed (4D) mask, or a model that builds its own masks, cannot be expressed by the kernel; the "
            "mask function registered by sparse_sageattn.torch.transformers.register() checks and drops 2D masks")
    if dropout:
        raise ValueError(f"sparse_sageattn: dropout={dropout} is not supported (inference only); call "
                         "model.eval() or set attention_dropout=0")
    if kwargs.get("output_attentions"):
        raise ValueError("sparse_sageattn: output_attentions=True is not supported (the kernel never forms the "
                         "attention weights); use attn_implementation='eager' for them")
    for name in _UNSUPPORTED:
        if kwargs.get(name) is not None:
            raise ValueError(f"sparse_sageattn: {name} is not supported by the kernel")
    is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
    if callable(mask_id):
        mask_id = mask_id(query.shape[2], key.shape[2], query.device)
    if int8_cache is not None:  # a decoding step over an Int8Cache layer: (B, Hq, Nq, D) in, as the cache holds
        if pv_dtype != "fp16":
            raise ValueError("sparse_sageattn: an Int8Cache is attended with pv_dtype='fp16'")
        out = int8_cache.attend(query, mask_id=mask_id, is_causal=bool(is_causal), sm_scale=scaling)
        return out.transpose(1, 2), None
    # (B, H, N, D) views in, read as NHD without a copy, so the output comes out (B, Nq, Hq, D) as transformers
    # expects.
    out = sparse_sageattn(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), mask_id=mask_id,
                          is_causal=bool(is_causal), tensor_layout="NHD", kv_lens=kv_lens, sm_scale=scaling,
                          pv_dtype=pv_dtype)
    return out, None


def register(name="sparse_sageattn", mask_id=None, pv_dtype="fp16"):
    """Registers the attention function and its mask function under `name` in transformers' `AttentionInterface`
    and `AttentionMaskInterface`, so `attn_implementation=name` works in `from_pretrained` / `from_config`.

    Registering both matters: without a mask function transformers passes attention_mask=None and padding would be
    dropped silently. `mask_id`: None (dense), a tensor, or a callable `(q_len, kv_len, device) -> mask_id`.
    `pv_dtype`: as in sparse_sageattn ("fp8": e4m3 P.V, sm_89 and newer)."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register: name must be a non-empty string, got {name!r}")
    if pv_dtype not in PV_DTYPES:
        raise ValueError(f"register: pv_dtype must be one of {PV_DTYPES}, got {pv_dtype!r}")
    if mask_id is not None and not (callable(mask_id) or isinstance(mask_id, torch.Tensor)):
        raise TypeError(f"register: mask_id must be None, a torch.Tensor or a callable, got {type(mask_id).__name__}")
    from transformers import AttentionInterface, AttentionMaskInterface

    def attention(module, query, key, value, attention_mask, **kwargs):
        return sparse_sageattn_attention(module, query, key, value, attention_mask, mask_id=mask_id,
                                         pv_dtype=pv_dtype, **kwargs)

    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, sparse_sageattn_mask)
