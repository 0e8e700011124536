"""The INT8 KV cache's plans: its arrays, appending new tokens, attention over it. Framework-free.

A cache is a dict of arrays named `cache_arrays(v_format)` (append.py says what each holds), all contiguous,
made by the frontends from `cache_buffers`. K is INT8 in every format; V is kept as given (v_format "native") or
as FP8 e4m3 with a power-of-two scale per 64-key block and channel ("e4m3": half the bytes of V).
`make_append_plan` writes the new tokens into them in place (Plan.aliases); `make_attend_plan` is the attention
op's split-KV plan reading the cache's INT8 keys and its values as they are (no pass over K, no quantization of
K: time follows the live blocks).
"""

from .. import configs
from ..attention.plan import fmt_shape, make_plan
from ..attention.prepare import sums_and_lists_kernel
from ..contract import BLOCK_N, FLOAT_DTYPES, LAYOUTS, MAX_HEAD_DIM, cdiv, layout_axes
from ..launch import ArrayDesc, Buffer, Launch, Plan, Ref, contiguous_strides, flat, next_pow2
from .append import advance_lens_kernel, append_kernel

V_FORMATS = ("native", "e4m3")
_ARRAYS = {
    "native": ("k_int8", "k_scale", "k_mean", "k_tail", "v_cache", "lens"),
    "e4m3": ("k_int8", "k_scale", "k_mean", "k_tail", "v_cache", "v_exp", "v_tail", "lens"),
}


def cache_arrays(v_format="native") -> tuple:
    """The names of a cache's arrays in `v_format`, in the order the frontends' ops take them."""
    if v_format not in V_FORMATS:
        raise ValueError(f"KV cache: v_format must be one of {V_FORMATS}, got {v_format!r}")
    return _ARRAYS[v_format]


def updated(name: str) -> str:
    """The append plan's output holding array `name` updated (it aliases the array)."""
    return f"new_{name}"


def attend_arrays(v_format="native") -> tuple:
    """What attention reads of a cache (not the tails)."""
    return tuple(n for n in cache_arrays(v_format) if not n.endswith("_tail"))


def v_format_of(cache: dict) -> str:
    """The format of a cache's dict of arrays: "e4m3" when it holds value exponents."""
    return "e4m3" if "v_exp" in cache else "native"


def cache_buffers(batch, heads_kv, capacity, head_dim, dtype, v_format="native") -> dict:
    """name -> Buffer (zero-filled) of an empty cache of `capacity` tokens (a multiple of 64) per batch row;
    dtype: the keys' and queries' (and, with v_format "native", the values')."""
    if not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in (batch, heads_kv, capacity)):
        raise ValueError(f"KV cache: batch, heads_kv and capacity must be positive ints, got {batch}, {heads_kv}, "
                         f"{capacity}")
    if capacity % BLOCK_N:
        raise ValueError(f"KV cache: capacity must be a multiple of {BLOCK_N} (its quantization block), got {capacity}")
    if not (isinstance(head_dim, int) and 8 <= head_dim <= MAX_HEAD_DIM and head_dim % 8 == 0):
        raise ValueError(f"KV cache: head_dim must be a multiple of 8 between 8 and {MAX_HEAD_DIM}, got {head_dim}")
    if dtype not in FLOAT_DTYPES:
        raise TypeError(f"KV cache: dtype must be float16 or bfloat16, got {dtype}")
    cache_arrays(v_format)
    return _cache_shapes(batch, heads_kv, capacity, head_dim, dtype, v_format)


def _cache_shapes(batch, heads_kv, capacity, head_dim, dtype, v_format) -> dict:
    """cache_buffers without the checks of Python ints (sizes may be torch SymInts while torch.compile traces)."""
    rows = (batch, heads_kv, capacity, head_dim)
    tail = (batch, heads_kv, BLOCK_N, head_dim)
    buffers = {
        "k_int8": Buffer(rows, "int8", 0),
        "k_scale": Buffer((batch, heads_kv, capacity // BLOCK_N), "float32", 0.0),
        "k_mean": Buffer((batch, heads_kv, head_dim), "float32", 0.0),
        "k_tail": Buffer(tail, dtype, 0.0),
        "v_cache": Buffer(rows if v_format == "native" else (batch, heads_kv, capacity // BLOCK_N, head_dim, BLOCK_N),
                          dtype if v_format == "native" else "uint8", 0),
        "v_exp": Buffer((batch, heads_kv, capacity // BLOCK_N, head_dim), "int8", 0),
        "v_tail": Buffer(tail, dtype, 0.0),
        "lens": Buffer((batch,), "int32", 0),
    }
    return {n: buffers[n] for n in _ARRAYS[v_format]}


def validate_cache(cache: dict, required=None):
    """(batch, heads_kv, capacity, head_dim, dtype, v_format) of a cache's ArrayDescs (its format's arrays, or
    the `required` ones at least); ValueError/TypeError naming the array for anything `cache_buffers` would not
    have made. dtype is None for an e4m3 cache given without its tails (nothing else holds it)."""
    v_format = v_format_of(cache)
    required = cache_arrays(v_format) if required is None else required
    missing = [n for n in required if n not in cache]
    if missing:
        raise ValueError(f"KV cache: missing arrays {missing}")
    k = cache["k_int8"]
    if len(k.shape) != 4:
        raise ValueError(f"KV cache: k_int8 must be (B, Hkv, capacity, D), got shape {fmt_shape(k.shape)}")
    batch, heads_kv, capacity, head_dim = k.shape
    holder = "v_cache" if v_format == "native" else next((n for n in ("k_tail", "v_tail") if n in cache), None)
    dtype = None if holder is None else cache[holder].dtype
    if capacity % BLOCK_N or not 8 <= head_dim <= MAX_HEAD_DIM or head_dim % 8 or dtype not in (*FLOAT_DTYPES, None):
        raise ValueError(f"KV cache: not a cache (capacity a multiple of {BLOCK_N}, head_dim a multiple of 8 up to "
                         f"{MAX_HEAD_DIM}, float16 or bfloat16 values), got k_int8 of shape {fmt_shape(k.shape)} and "
                         f"{holder} of {dtype}")
    expected = _cache_shapes(batch, heads_kv, capacity, head_dim, dtype or FLOAT_DTYPES[0], v_format)
    for name, buf in expected.items():
        if name not in cache:
            continue
        a = cache[name]
        if tuple(a.shape) != tuple(buf.shape) or a.dtype != buf.dtype:
            raise ValueError(f"KV cache: {name} must be {buf.dtype} of shape {fmt_shape(buf.shape)}, got {a.dtype} of "
                             f"shape {fmt_shape(a.shape)}")
        if a.device != k.device:
            raise ValueError(f"KV cache: {name} is on {a.device}, k_int8 on {k.device}")
        contiguous = [1]
        for n in reversed(buf.shape[1:]):
            contiguous.insert(0, contiguous[0] * n)
        if any(n > 1 and s != c for n, s, c in zip(buf.shape, a.strides, contiguous)):
            raise ValueError(f"KV cache: {name} must be contiguous, got strides {fmt_shape(a.strides)}")
    return batch, heads_kv, capacity, head_dim, dtype, v_format


def make_append_plan(k: ArrayDesc, v: ArrayDesc, cache: dict, tensor_layout="HND", first_fill=False) -> Plan:
    """Append the new keys k and values v ((B, Hkv, n, D) for "HND", (B, n, Hkv, D) for "NHD") at each batch
    row's lens. first_fill: the cache is empty (lens is taken as 0) and its smoothing vector becomes the mean of
    these keys. Tokens past the capacity are dropped (lens stops there). Outputs: `updated(name)` of each
    cache array, aliasing it."""
    batch, heads_kv, capacity, head_dim, dtype, v_format = validate_cache(cache)
    if tensor_layout not in LAYOUTS:
        raise ValueError(f"KV cache: tensor_layout must be 'HND' or 'NHD', got {tensor_layout!r}")
    b_axis, h_axis, n_axis = layout_axes(tensor_layout)
    for name, a in (("k", k), ("v", v)):
        expected = (batch, heads_kv, head_dim)
        if len(a.shape) != 4 or (a.shape[b_axis], a.shape[h_axis], a.shape[3]) != expected:
            raise ValueError(f"KV cache: {name} must be (B, Hkv, n, D) in tensor_layout={tensor_layout!r} with "
                             f"(B, Hkv, D) = {fmt_shape(expected)}, got shape {fmt_shape(a.shape)}")
        if a.dtype != dtype:
            raise TypeError(f"KV cache: {name} must have the cache's dtype {dtype}, got {a.dtype}")
        if a.strides[3] != 1:
            raise ValueError(f"KV cache: {name} must be contiguous in its last dimension, got strides "
                             f"{fmt_shape(a.strides)}")
        if a.device != cache["k_int8"].device:
            raise ValueError(f"KV cache: {name} is on {a.device}, the cache on {cache['k_int8'].device}")
    if v.shape[n_axis] != k.shape[n_axis]:
        raise ValueError(f"KV cache: v has {v.shape[n_axis]} tokens, k has {k.shape[n_axis]}")
    if not isinstance(first_fill, bool):
        raise TypeError(f"KV cache: first_fill must be a bool, got {type(first_fill).__name__}")
    n_new = k.shape[n_axis]
    names = cache_arrays(v_format)
    buffers = {updated(n): Buffer(tuple(cache[n].shape), cache[n].dtype) for n in names}
    aliases = {updated(n): n for n in names}
    outputs = tuple(updated(n) for n in names)
    if n_new == 0:
        return Plan(buffers, (), outputs, aliases)  # nothing to write (the frontends return the cache as it is)

    head_dim_pad = max(32, next_pow2(head_dim))
    k_strides = tuple(k.strides[a] for a in (b_axis, h_axis, n_axis))
    v_strides = tuple(v.strides[a] for a in (b_axis, h_axis, n_axis))
    align = 8 if all(s % 8 == 0 for s in k_strides + v_strides) else 1
    k_strides, v_strides = (tuple(s // align for s in st) for st in (k_strides, v_strides))
    launches = []
    n_chunks = cdiv(n_new, configs.ROWS_PER_CHUNK)
    if first_fill:  # the smoothing vector: the new keys' channel sums (the lists half of the launch is empty)
        buffers["k_channel_sums"] = Buffer(flat(batch * heads_kv, n_chunks, head_dim_pad), "float32")
        buffers["unused_lists"] = Buffer((1,), "int32")
        buffers["unused_amax"] = Buffer((1,), "float32")
        cfg = configs.lookup(None, head_dim_pad, dtype)
        launches.append(Launch(
            "k_sums", sums_and_lists_kernel, (batch * heads_kv * n_chunks,),
            dict(k_ptr=Ref("k"), v_ptr=Ref("v"), mask_ptr=Ref("k"), kv_lens_ptr=Ref("k"),
                 n_q=1, n_k=n_new, heads_kv=heads_kv, list_heads=1, chunk_programs=batch * heads_kv * n_chunks,
                 **{f"stride_k{a}": s for a, s in zip("bhn", k_strides)},
                 **{f"stride_v{a}": s for a, s in zip("bhn", v_strides)},
                 stride_mb=0, stride_mh=0, stride_mq=0, stride_mk=0,
                 partial_sums_ptr=Ref("k_channel_sums"), partial_amax_ptr=Ref("unused_amax"),
                 counts_ptr=Ref("unused_lists"), indices_ptr=Ref("unused_lists"),
                 ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, TILE_ROWS=configs.SUMS_TILE_ROWS, HEAD_DIM=head_dim,
                 HEAD_DIM_PAD=head_dim_pad, STRIDE_ALIGN=align, SMOOTH_K=True, PV_FP8=False,
                 BLOCK_M=128, BLOCK_N=BLOCK_N, KB_TILE=configs.KB_TILE, HAS_MASK=False, IS_CAUSAL=False,
                 HAS_KV_LENS=False),
            ("k_channel_sums", "unused_amax", "unused_lists"), cfg.sums_and_lists.num_warps,
            cfg.sums_and_lists.num_stages))
    append_blocks = cdiv(n_new, BLOCK_N) + 1
    e4m3 = v_format == "e4m3"
    if not e4m3:  # the e4m3 arrays' parameters: one-element slots, never read or written
        buffers.update({updated(n): Buffer((1,), "int8") for n in ("v_exp", "v_tail")})
    launches.append(Launch(
        "append", append_kernel, (batch * heads_kv * append_blocks,),
        dict(k_ptr=Ref("k"), v_ptr=Ref("v"), partial_sums_ptr=Ref("k_channel_sums" if first_fill else "k"),
             lens_ptr=Ref("lens"),
             **{f"cache_{n}_ptr": Ref(n) for n in ("k_int8", "k_scale", "k_mean", "k_tail")},
             cache_v_ptr=Ref("v_cache"), cache_v_exp_ptr=Ref("v_exp" if e4m3 else "k"),
             cache_v_tail_ptr=Ref("v_tail" if e4m3 else "k"),
             n_new=n_new, capacity=capacity, heads_kv=heads_kv,
             **{f"stride_k{a}": s for a, s in zip("bhn", k_strides)},
             **{f"stride_v{a}": s for a, s in zip("bhn", v_strides)},
             **{f"{n}_ptr": Ref(updated(n)) for n in ("k_int8", "k_scale", "k_mean", "k_tail", "v_exp", "v_tail")},
             v_cache_ptr=Ref(updated("v_cache")),
             BLOCK_N=BLOCK_N, HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, APPEND_BLOCKS=append_blocks,
             ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, FIRST_FILL=first_fill, STRIDE_ALIGN=align, V_E4M3=e4m3),
        tuple(updated(n) for n in ("k_int8", "k_scale", "k_mean", "k_tail", "v_cache", "v_exp", "v_tail")), 4, 1))
    launches.append(Launch(
        "advance_lens", advance_lens_kernel, (1,),
        dict(cache_lens_ptr=Ref("lens"), n_new=n_new, capacity=capacity, batch=batch, lens_ptr=Ref(updated("lens")),
             BLOCK_B=next_pow2(batch), FIRST_FILL=first_fill),
        (updated("lens"),), 1, 1))
    return Plan(buffers, tuple(launches), outputs, aliases)


def make_attend_plan(q: ArrayDesc, cache: dict, mask_id: ArrayDesc | None = None, is_causal=False,
                     tensor_layout="HND", sm_scale=None, return_lse=False, capability=None, *, num_sms=None,
                     split_kv_override=None) -> Plan:
    """Attention of q ((B, Hq, Nq, D) or (B, Nq, Hq, D), Nq <= 128) over the cache's first lens[b] tokens, with
    sparse_sageattn's mask_id / is_causal (aligned to lens) / sm_scale / return_lse. The plan's arrays are named
    as the attention op's: q, k (the cache's k_int8), v (v_cache), mask_id, kv_lens (lens), k_scale, k_mean,
    and for an e4m3 cache v_exp. The out has q's dtype.
    split_kv_override: as make_plan's (benchmarks of a variant; the frontends never pass it)."""
    batch, heads_kv, capacity, head_dim, dtype, v_format = validate_cache(cache, attend_arrays(v_format_of(cache)))
    if dtype is not None and q.dtype != dtype:
        raise TypeError(f"sparse_sageattn: q must have the cache's dtype {dtype}, got {q.dtype}")
    v = cache["v_cache"]
    if v_format == "e4m3":  # the attention plan's (B, Hkv, C, D) view: each block's base is where it starts
        rows = (batch, heads_kv, capacity, head_dim)
        v = ArrayDesc(rows, contiguous_strides(rows), v.dtype, v.device)
    return make_plan(q, cache["k_int8"], v, mask_id, is_causal, tensor_layout, sm_scale, True,
                     return_lse, capability, kv_lens=cache["lens"], num_sms=num_sms,
                     split_kv_override=split_kv_override, kv_layout="HND", k_scale=cache["k_scale"],
                     k_mean=cache["k_mean"], v_exp=cache.get("v_exp"))
