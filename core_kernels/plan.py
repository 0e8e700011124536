"""Framework-free launch plan: array descriptions in, validated buffers and kernel launches out.

Both frontends call `make_plan` with the shapes, strides, dtype names and devices of their arrays and get back
the same errors, the same buffers and the same launches (kernel, grid, positional arguments, constexprs, warps,
stages). A frontend then only allocates `plan.buffers` and launches `plan.launches` in order, so torch and JAX
run identical kernels with identical scalars -- which is what makes their outputs bitwise equal.

Integer arithmetic here also accepts torch SymInts: nothing branches on a sequence length except emptiness,
so `torch.compile(dynamic=True)` does not recompile per length.
"""
import math
from dataclasses import dataclass

from . import configs
from .attention import attention_kernel
from .predict import pool_blocks_kernel, select_blocks_kernel
from .prepare import quantize_kernel, sums_and_lists_kernel

FLOAT_DTYPES = ("float16", "bfloat16")
MASK_DTYPES = ("bool", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
LAYOUTS = ("HND", "NHD")
PV_DTYPES = ("fp16", "fp8")
FP8_MIN_CAPABILITY = (8, 9)  # e4m3 tensor-core MMAs: Ada, Hopper and newer
MAX_HEAD_DIM = 256
LOG2E = 1.4426950408889634
# In-tile offsets are int32 (block bases are int64): a tile of BLOCK_M rows must stay below 2**31 elements.
MAX_ROW_STRIDE = (2**31 - 1) // configs.BLOCK_M
MAX_GRID_Y = 65535
# A predicted-mask row lives in registers (a few values per key block): 8192 key blocks = 524288 keys.
MAX_PREDICT_KEY_BLOCKS = 8192


@dataclass(frozen=True)
class ArrayDesc:
    """What the plan needs to know of one array: shape, strides in elements, dtype name, device label."""
    shape: tuple
    strides: tuple
    dtype: str
    device: str = ""


@dataclass(frozen=True)
class Buffer:
    shape: tuple
    dtype: str  # "int8", "uint8" (e4m3 bits), "int32", "float32", or the dtype of q
    fill: float | None = None  # None: every element is written by a launch (allocate uninitialised)


@dataclass(frozen=True)
class Launch:
    """kernel[grid](*inputs, *scalars, *outputs, **constexprs) with num_warps / num_stages.

    inputs and outputs name arrays: "q", "k", "v", "mask_id" or a key of Plan.buffers.
    """
    name: str
    kernel: object
    grid: tuple
    inputs: tuple
    scalars: tuple
    outputs: tuple
    constexprs: dict
    num_warps: int
    num_stages: int


@dataclass(frozen=True)
class Plan:
    buffers: dict
    launches: tuple


def _cdiv(a, b):
    return (a + b - 1) // b


def _flat(*dims):
    """Scratch buffers are 1-D: a symbolic dim that happens to be 1 (one chunk, one block) would make
    torch.compile specialise on it and recompile for longer sequences; the kernels index them flat anyway."""
    size = 1
    for d in dims:
        size = size * d
    return (size,)


def _next_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"sparse_sageattn: {name} must be a bool, got {type(value).__name__}")


def _bhnd_strides(desc: ArrayDesc, layout: str):
    """(batch, head, seq) strides of a 4-D array in the given layout."""
    s = desc.strides
    return (s[0], s[1], s[2]) if layout == "HND" else (s[0], s[2], s[1])


def _mask_strides(mask: ArrayDesc, target: tuple):
    """Strides of `mask` broadcast (numpy rules) to the 4-D `target` shape: 0 along broadcast dims."""
    if len(mask.shape) > 4 or any(
        m != 1 and m != t for m, t in zip(reversed(mask.shape), reversed(target))
    ):
        raise ValueError(
            f"sparse_sageattn: mask_id of shape {_fmt(mask.shape)} is not broadcastable to "
            f"(B, Hq, ceil(Nq/{configs.BLOCK_M}), ceil(Nk/{configs.BLOCK_N})) = {_fmt(target)}"
        )
    pad = 4 - len(mask.shape)
    shape = (1,) * pad + tuple(mask.shape)
    strides = (0,) * pad + tuple(mask.strides)
    return shape, tuple(0 if n == 1 else st for n, st in zip(shape, strides))


def validate(q: ArrayDesc, k: ArrayDesc, v: ArrayDesc, mask_id, is_causal, tensor_layout, sm_scale,
             smooth_k, return_lse, pv_dtype="fp16"):
    """Raise ValueError/TypeError naming the argument for anything the kernels do not support."""
    if tensor_layout not in LAYOUTS:
        raise ValueError(f"sparse_sageattn: tensor_layout must be 'HND' or 'NHD', got {tensor_layout!r}")
    if pv_dtype not in PV_DTYPES:
        raise ValueError(f"sparse_sageattn: pv_dtype must be 'fp16' (SageAttention V1's P.V) or 'fp8' (e4m3 P and "
                         f"V, sm_89 and newer), got {pv_dtype!r}")
    _check_flag("is_causal", is_causal)
    _check_flag("smooth_k", smooth_k)
    _check_flag("return_lse", return_lse)
    if sm_scale is not None and (
        isinstance(sm_scale, bool) or not isinstance(sm_scale, (int, float))
        or not math.isfinite(sm_scale) or sm_scale <= 0
    ):
        raise ValueError(f"sparse_sageattn: sm_scale must be a positive finite number or None, got {sm_scale!r}")
    dims = "(B, H, N, D)" if tensor_layout == "HND" else "(B, N, H, D)"
    for name, a in (("q", q), ("k", k), ("v", v)):
        if len(a.shape) != 4:
            raise ValueError(
                f"sparse_sageattn: {name} must have 4 dimensions {dims} for tensor_layout={tensor_layout!r}, "
                f"got shape {_fmt(a.shape)}"
            )
        if a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"sparse_sageattn: {name} must be float16 or bfloat16, got {a.dtype}")
    for name, a in (("k", k), ("v", v)):
        if a.dtype != q.dtype:
            raise TypeError(f"sparse_sageattn: q, k and v must share one dtype, got q {q.dtype} and {name} {a.dtype}")
    for name, a in (("k", k), ("v", v)):
        if a.device != q.device:
            raise ValueError(f"sparse_sageattn: q, k and v must be on one device, got q on {q.device} and "
                             f"{name} on {a.device}")
    b_axis, h_axis, n_axis = (0, 1, 2) if tensor_layout == "HND" else (0, 2, 1)
    for name, a in (("k", k), ("v", v)):
        if a.shape[b_axis] != q.shape[b_axis]:
            raise ValueError(f"sparse_sageattn: {name} has batch {a.shape[b_axis]}, q has {q.shape[b_axis]}")
        if a.shape[3] != q.shape[3]:
            raise ValueError(f"sparse_sageattn: {name} has head_dim {a.shape[3]}, q has {q.shape[3]}")
    if v.shape[n_axis] != k.shape[n_axis]:
        raise ValueError(f"sparse_sageattn: v has {v.shape[n_axis]} keys, k has {k.shape[n_axis]}")
    if v.shape[h_axis] != k.shape[h_axis]:
        raise ValueError(f"sparse_sageattn: v has {v.shape[h_axis]} heads, k has {k.shape[h_axis]}")
    heads_q, heads_kv = q.shape[h_axis], k.shape[h_axis]
    if heads_kv == 0 or heads_q % heads_kv != 0:
        raise ValueError(
            f"sparse_sageattn: q's {heads_q} heads must be a multiple of k's and v's {heads_kv} heads (GQA/MQA)"
        )
    head_dim = q.shape[3]
    if not (8 <= head_dim <= MAX_HEAD_DIM and head_dim % 8 == 0):
        raise ValueError(
            f"sparse_sageattn: head_dim must be a multiple of 8 between 8 and {MAX_HEAD_DIM} (64 and 128 are "
            f"the fast paths), got {head_dim}"
        )
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.strides[3] != 1:
            raise ValueError(
                f"sparse_sageattn: {name} must be contiguous in its last dimension (stride 1), got strides "
                f"{_fmt(a.strides)}"
            )
        if any(abs(s) > MAX_ROW_STRIDE for s in _bhnd_strides(a, tensor_layout)[2:]):
            raise ValueError(f"sparse_sageattn: {name}'s sequence stride must be at most {MAX_ROW_STRIDE}, "
                             f"got strides {_fmt(a.strides)}")
    n_q, n_k = q.shape[n_axis], k.shape[n_axis]
    if _cdiv(n_q, configs.BLOCK_M) > MAX_GRID_Y or _cdiv(n_k, configs.BLOCK_N) > MAX_GRID_Y:
        raise ValueError(
            f"sparse_sageattn: at most {MAX_GRID_Y * configs.BLOCK_M} queries and {MAX_GRID_Y * configs.BLOCK_N} "
            f"keys are supported, got {n_q} and {n_k}"
        )
    if mask_id is not None:
        if mask_id.dtype not in MASK_DTYPES:
            raise TypeError(f"sparse_sageattn: mask_id must be a bool or integer array (nonzero = compute the "
                            f"block), got {mask_id.dtype}")
        if mask_id.device != q.device:
            raise ValueError(f"sparse_sageattn: mask_id must be on q's device {q.device}, got {mask_id.device}")
        _mask_strides(mask_id, (q.shape[b_axis], heads_q, _cdiv(n_q, configs.BLOCK_M), _cdiv(n_k, configs.BLOCK_N)))


def make_plan(q: ArrayDesc, k: ArrayDesc, v: ArrayDesc, mask_id: ArrayDesc | None = None, is_causal=False,
              tensor_layout="HND", sm_scale=None, smooth_k=True, return_lse=False, capability=None, *,
              pv_dtype="fp16", attention_override=None) -> Plan:
    """Validate and resolve one sparse_sageattn call. `capability`: (major, minor) of the GPU, None = interpreter.

    attention_override: fields replacing the table's attention entry (configs.lookup); for benchmarks and tests
    of a variant, never passed by the frontends.
    """
    validate(q, k, v, mask_id, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype)
    pv_fp8 = pv_dtype == "fp8"
    if pv_fp8 and capability is not None and tuple(capability) < FP8_MIN_CAPABILITY:
        raise ValueError(f"sparse_sageattn: pv_dtype='fp8' needs FP8 tensor cores (compute capability 8.9 or newer: "
                         f"Ada, Hopper, Blackwell); this GPU is sm_{capability[0]}{capability[1]}: use pv_dtype='fp16'")
    b_axis, h_axis, n_axis = (0, 1, 2) if tensor_layout == "HND" else (0, 2, 1)
    batch, heads_q, n_q = q.shape[b_axis], q.shape[h_axis], q.shape[n_axis]
    head_dim = int(q.shape[3])  # a constexpr: specialise it even when shapes are symbolic
    heads_kv, n_k = k.shape[h_axis], k.shape[n_axis]
    kv_group = heads_q // heads_kv
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    head_dim_pad = max(32, _next_pow2(head_dim))  # int8 tl.dot needs K >= 32
    cfg = configs.lookup(capability, head_dim_pad, q.dtype, attention_override)
    block_m, block_n = configs.BLOCK_M, configs.BLOCK_N
    n_qb, n_kb = _cdiv(n_q, block_m), _cdiv(n_k, block_n)

    out_shape = (batch, heads_q, n_q, head_dim) if tensor_layout == "HND" else (batch, n_q, heads_q, head_dim)
    lse_shape = (batch, heads_q, n_q) if return_lse else (1,)
    if batch == 0 or heads_q == 0 or n_q == 0 or n_k == 0:
        # Nothing to launch: an empty output, or (no keys) rows that see nothing -- zeros with lse -inf.
        buffers = {"out": Buffer(out_shape, q.dtype, 0.0), "lse": Buffer(lse_shape, "float32", -math.inf)}
        return Plan(buffers, ())

    q_strides = _bhnd_strides(q, tensor_layout)
    k_strides = _bhnd_strides(k, tensor_layout)
    v_strides = _bhnd_strides(v, tensor_layout)
    # 16-byte rows for vector loads; see core_kernels/alignment.py for why this is not left to specialization.
    stride_align = 8 if all(s % 8 == 0 for s in q_strides + k_strides + v_strides) else 1
    q_strides, k_strides, v_strides = (tuple(s // stride_align for s in strides)
                                       for strides in (q_strides, k_strides, v_strides))
    dims = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, STRIDE_ALIGN=stride_align)
    buffers = {}
    launches = []

    def launch(name, kernel, grid, inputs, scalars, outputs, constexprs, kcfg):
        launches.append(Launch(name, kernel, grid, tuple(inputs), tuple(scalars), tuple(outputs), constexprs,
                               kcfg.num_warps, kcfg.num_stages))

    # Block lists: one per (batch, head) the mask distinguishes; a mask broadcast over heads shares one list.
    mask_name, mask_strides, list_b, list_h = "q", (0, 0, 0, 0), 1, 1  # no mask: "q" is an unread pointer
    if mask_id is not None:
        mask_shape, mask_strides = _mask_strides(mask_id, (batch, heads_q, n_qb, n_kb))
        mask_name = "mask_id"
        list_b = batch if mask_shape[0] != 1 else 1
        list_h = heads_q if mask_shape[1] != 1 else 1
    n_chunks = _cdiv(n_k, configs.ROWS_PER_CHUNK)
    chunk_programs = batch * heads_kv * n_chunks if smooth_k or pv_fp8 else 0
    # A buffer its mode does not use is neither written nor read: a one-element slot.
    chunk_partials = _flat(batch * heads_kv, n_chunks, head_dim_pad)
    buffers["k_channel_sums"] = Buffer(chunk_partials if smooth_k else (1,), "float32")
    buffers["v_channel_amax"] = Buffer(chunk_partials if pv_fp8 else (1,), "float32")
    buffers["block_counts"] = Buffer(_flat(list_b * list_h, n_qb, 2), "int32")
    buffers["block_indices"] = Buffer(_flat(list_b * list_h, n_qb, n_kb), "int32")
    launch("sums_and_lists", sums_and_lists_kernel, (chunk_programs + list_b * list_h * n_qb,),
           ["k", "v", mask_name],
           [n_q, n_k, heads_kv, list_h, chunk_programs, *k_strides, *v_strides, *mask_strides],
           ["k_channel_sums", "v_channel_amax", "block_counts", "block_indices"],
           dict(ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, TILE_ROWS=configs.SUMS_TILE_ROWS, **dims, SMOOTH_K=smooth_k,
                PV_FP8=pv_fp8, BLOCK_M=block_m, BLOCK_N=block_n, KB_TILE=configs.KB_TILE,
                HAS_MASK=mask_id is not None, IS_CAUSAL=is_causal),
           cfg.sums_and_lists)

    shift_lse = smooth_k and return_lse
    k_programs, q_programs = batch * heads_kv * n_kb, batch * heads_q * n_qb
    fp8 = dict(PV_FP8=pv_fp8, FP8_SOFTWARE_ROUNDING=capability is None)  # see fp8.py: the interpreter's cast
    buffers["q_int8"] = Buffer(_flat(batch * heads_q, n_qb * block_m, head_dim), "int8")
    buffers["q_scale"] = Buffer(_flat(batch * heads_q, n_qb), "float32")
    buffers["q_row_shift"] = Buffer(_flat(batch * heads_q, n_qb * block_m) if shift_lse else (1,), "float32")
    buffers["k_int8"] = Buffer(_flat(batch * heads_kv, n_kb * block_n, head_dim), "int8")
    buffers["k_scale"] = Buffer(_flat(batch * heads_kv, n_kb), "float32")
    buffers["v_fp8"] = Buffer(_flat(batch * heads_kv, n_kb * block_n, head_dim) if pv_fp8 else (1,), "uint8")
    buffers["v_scale"] = Buffer(_flat(batch * heads_kv, head_dim_pad) if pv_fp8 else (1,), "float32")
    launch("quantize", quantize_kernel, (k_programs + q_programs + (k_programs if pv_fp8 else 0),),
           ["q", "k", "v", "k_channel_sums", "v_channel_amax"],
           [float(sm_scale) * LOG2E, n_q, n_k, heads_q, heads_kv, k_programs, q_programs, *q_strides, *k_strides,
            *v_strides],
           ["q_int8", "q_scale", "q_row_shift", "k_int8", "k_scale", "v_fp8", "v_scale"],
           dict(BLOCK_M=block_m, BLOCK_N=block_n, ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, SMOOTH_K=smooth_k,
                WRITE_ROW_SHIFT=shift_lse, **dims, **fp8),
           cfg.quantize)

    buffers["out"] = Buffer(out_shape, q.dtype)
    buffers["lse"] = Buffer(lse_shape, "float32")
    out_strides = _bhnd_strides(ArrayDesc(out_shape, contiguous_strides(out_shape), q.dtype), tensor_layout)
    out_strides = tuple(s // stride_align for s in out_strides)  # multiples of 8 (D is): exact
    launch("attention", attention_kernel, (batch * heads_q * n_qb,),
           ["q_int8", "q_scale", "k_int8", "k_scale", "v", "v_fp8", "v_scale", "block_counts", "block_indices",
            "q_row_shift"],
           [n_q, n_k, heads_q, kv_group, list_h if list_b != 1 else 0, 1 if list_h != 1 else 0,
            *v_strides, *out_strides],
           ["out", "lse"],
           dict(BLOCK_M=block_m, BLOCK_N=block_n, IS_CAUSAL=is_causal, RETURN_LSE=return_lse,
                SHIFT_LSE=shift_lse, KEY_BLOCKS_PER_STEP=cfg.attention.key_blocks_per_step, **dims, **fp8),
           cfg.attention)
    return Plan(buffers, tuple(launches))


def _check_fraction(name, value):
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not 0.0 < value <= 1.0):
        raise ValueError(f"predict_mask: {name} must be a number in (0, 1] or None, got {value!r}")


def validate_predict(q: ArrayDesc, k: ArrayDesc, cdf_threshold, topk, is_causal, tensor_layout, sm_scale):
    """Raise ValueError/TypeError naming the argument; q and k are checked as sparse_sageattn checks them."""
    validate(q, k, k, None, is_causal, tensor_layout, sm_scale, True, False)
    _check_fraction("cdf_threshold", cdf_threshold)
    _check_fraction("topk", topk)
    if (cdf_threshold is None) == (topk is None):
        raise ValueError("predict_mask: give exactly one of cdf_threshold and topk")
    n_k = k.shape[2 if tensor_layout == "HND" else 1]
    if _cdiv(n_k, configs.BLOCK_N) > MAX_PREDICT_KEY_BLOCKS:
        raise ValueError(f"predict_mask: k may hold at most {MAX_PREDICT_KEY_BLOCKS * configs.BLOCK_N} keys, "
                         f"got {n_k}")


def make_predict_plan(q: ArrayDesc, k: ArrayDesc, cdf_threshold=None, topk=None, is_causal=False,
                      tensor_layout="HND", sm_scale=None) -> Plan:
    """Validate and resolve one predict_mask call: buffer "mask", int8 (B, Hq, ceil(Nq/128), ceil(Nk/64)).

    Launches: pool Q blocks, pool K blocks (per kv head: GQA query heads share them), select per query block.
    See core_kernels/predict.py for the rule.
    """
    validate_predict(q, k, cdf_threshold, topk, is_causal, tensor_layout, sm_scale)
    b_axis, h_axis, n_axis = (0, 1, 2) if tensor_layout == "HND" else (0, 2, 1)
    batch, heads_q, n_q = q.shape[b_axis], q.shape[h_axis], q.shape[n_axis]
    heads_kv, n_k = k.shape[h_axis], k.shape[n_axis]
    head_dim = int(q.shape[3])
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    block_m, block_n = configs.BLOCK_M, configs.BLOCK_N
    n_qb, n_kb = _cdiv(n_q, block_m), _cdiv(n_k, block_n)
    mask_shape = (batch, heads_q, n_qb, n_kb)
    if batch == 0 or heads_q == 0 or n_q == 0 or n_k == 0:
        return Plan({"mask": Buffer(mask_shape, "int8", 0)}, ())

    q_strides, k_strides = _bhnd_strides(q, tensor_layout), _bhnd_strides(k, tensor_layout)
    stride_align = 8 if all(s % 8 == 0 for s in q_strides + k_strides) else 1  # see alignment.py
    q_strides, k_strides = (tuple(s // stride_align for s in strides) for strides in (q_strides, k_strides))
    pool = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=max(16, _next_pow2(head_dim)), STRIDE_ALIGN=stride_align)
    pool_cfg = configs.PREDICT_POOL
    kb_pad = max(16, _next_pow2(int(n_kb)))
    select_cfg = configs.predict_select(kb_pad)
    buffers = {
        "pooled_q": Buffer(_flat(batch * heads_q, n_qb, head_dim), "float32"),
        "pooled_k": Buffer(_flat(batch * heads_kv, head_dim, n_kb), "float32"),
        "mask": Buffer(mask_shape, "int8"),
    }
    launches = (
        Launch("pool_q", pool_blocks_kernel, (batch * heads_q, n_qb), ("q",),
               (n_q, heads_q, *q_strides, head_dim, 1), ("pooled_q",), dict(BLOCK_ROWS=block_m, **pool),
               pool_cfg.num_warps, pool_cfg.num_stages),
        Launch("pool_k", pool_blocks_kernel, (batch * heads_kv, n_kb), ("k",),
               (n_k, heads_kv, *k_strides, 1, n_kb), ("pooled_k",), dict(BLOCK_ROWS=block_n, **pool),
               pool_cfg.num_warps, pool_cfg.num_stages),
        Launch("select", select_blocks_kernel, (batch * heads_q, n_qb), ("pooled_q", "pooled_k"),
               (float(sm_scale) * LOG2E, float(topk if cdf_threshold is None else cdf_threshold), n_q, n_k,
                heads_q, heads_q // heads_kv),
               ("mask",),
               dict(HEAD_DIM=head_dim, KB_PAD=kb_pad, KEY_BITS=30 + kb_pad.bit_length() - 1, BLOCK_M=block_m,
                    BLOCK_N=block_n, IS_CAUSAL=is_causal, TOPK=cdf_threshold is None),
               select_cfg.num_warps, select_cfg.num_stages),
    )
    return Plan(buffers, launches)


def contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc = acc * n
    return tuple(reversed(strides))

