"""The attention op's plan: validation and launches of one sparse_sageattn call, framework-free.

Both frontends call `make_plan` with `ArrayDesc`s of q, k, v (and mask_id) and get back the same errors and the
same `Plan`: scratch buffers, three launches bound by parameter name (K sums + block lists, Q/K quantization,
attention), and the outputs ("out", "lse").

Integer arithmetic here also accepts torch SymInts: nothing branches on a sequence length except emptiness,
so `torch.compile(dynamic=True)` does not recompile per length.
"""
import math
from dataclasses import replace

from .. import configs
from ..contract import (BLOCK_M, BLOCK_N, FLOAT_DTYPES, FP8_MIN_CAPABILITY, LAYOUTS, LOG2E, MASK_DTYPES,
                        MAX_HEAD_DIM, PV_DTYPES, bhnd_shape, cdiv, layout_axes)
from ..launch import ArrayDesc, Buffer, Launch, Plan, Ref, contiguous_strides, flat, next_pow2
from . import kernel_sm90
from .combine import combine_kernel
from .kernel import attention_kernel
from .prepare import quantize_kernel, sums_and_lists_kernel
from .split_kv import split_kv_kernel

# The attention kernel variants a table entry may name (configs.AttentionConfig.kernel): each kernel, and what
# says why it refuses a call, (capability, head_dim, head_dim_pad, pv_dtype) -> reasons. The plain Triton
# kernel takes every call.
ATTENTION_KERNELS = {
    "triton": (attention_kernel, lambda capability, head_dim, head_dim_pad, pv_dtype: []),
    "gluon_sm90": (kernel_sm90.attention_sm90_kernel, kernel_sm90.refusals),
}
OUTPUTS = ("out", "lse")
# In-tile offsets are int32 (block bases are int64): a tile of BLOCK_M rows must stay below 2**31 elements.
MAX_ROW_STRIDE = (2**31 - 1) // BLOCK_M
MAX_GRID_Y = 65535


def fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def _check_flag(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"sparse_sageattn: {name} must be a bool, got {type(value).__name__}")


def bhn_strides(desc: ArrayDesc, layout: str):
    """(batch, head, seq) strides of a 4-D array in the given layout."""
    return tuple(desc.strides[axis] for axis in layout_axes(layout))


def aligned_strides(*stride_groups):
    """STRIDE_ALIGN and the strides in its units: 8 when every stride is a multiple of 8 (16-byte rows for vector
    loads; see core_kernels/alignment.py for why this is not left to specialization), else 1."""
    align = 8 if all(s % 8 == 0 for group in stride_groups for s in group) else 1
    return align, [tuple(s // align for s in group) for group in stride_groups]


def _mask_strides(mask: ArrayDesc, target: tuple):
    """Strides of `mask` broadcast (numpy rules) to the 4-D `target` shape: 0 along broadcast dims."""
    if len(mask.shape) > 4 or any(
        m != 1 and m != t for m, t in zip(reversed(mask.shape), reversed(target))
    ):
        raise ValueError(
            f"sparse_sageattn: mask_id of shape {fmt_shape(mask.shape)} is not broadcastable to "
            f"(B, Hq, ceil(Nq/{BLOCK_M}), ceil(Nk/{BLOCK_N})) = {fmt_shape(target)}"
        )
    pad = 4 - len(mask.shape)
    shape = (1,) * pad + tuple(mask.shape)
    strides = (0,) * pad + tuple(mask.strides)
    return shape, tuple(0 if n == 1 else st for n, st in zip(shape, strides))


def choose_attention(candidates, capability, head_dim, head_dim_pad, pv_dtype):
    """The first table candidate that serves pv_dtype and whose kernel states no reason to refuse the call."""
    reasons = []
    for cfg in candidates:
        why = [] if pv_dtype in cfg.pv_dtypes else [f"serves pv_dtype {cfg.pv_dtypes}"]
        why += ATTENTION_KERNELS[cfg.kernel][1](capability, head_dim, head_dim_pad, pv_dtype)
        if not why:
            return cfg
        reasons.append(f"{cfg.kernel}: " + ", ".join(why))
    raise ValueError("sparse_sageattn: no attention kernel takes this call (" + "; ".join(reasons) + ")")


def validate(q: ArrayDesc, k: ArrayDesc, v: ArrayDesc, mask_id, is_causal, tensor_layout, sm_scale,
             smooth_k, return_lse, pv_dtype="fp16", kv_lens: ArrayDesc | None = None, kv_layout=None,
             k_int8=False, v_e4m3=False):
    """Raise ValueError/TypeError naming the argument for anything the kernels do not support.

    kv_layout: k's and v's layout when it is not q's; k_int8: k holds an INT8 cache's keys (kv_cache/), v_e4m3:
    v its e4m3 values."""
    kv_layout = tensor_layout if kv_layout is None else kv_layout
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
    for name, a, layout in (("q", q, tensor_layout), ("k", k, kv_layout), ("v", v, kv_layout)):
        if len(a.shape) != 4:
            dims = "(B, H, N, D)" if layout == "HND" else "(B, N, H, D)"
            raise ValueError(
                f"sparse_sageattn: {name} must have 4 dimensions {dims} for tensor_layout={layout!r}, "
                f"got shape {fmt_shape(a.shape)}"
            )
        if name == "k" and k_int8:
            if a.dtype != "int8":
                raise TypeError(f"sparse_sageattn: an INT8 cache's keys must be int8, got {a.dtype}")
        elif name == "v" and v_e4m3:
            if a.dtype != "uint8":
                raise TypeError(f"sparse_sageattn: an e4m3 cache's values must be uint8 (e4m3 bits), got {a.dtype}")
        elif a.dtype not in FLOAT_DTYPES:
            raise TypeError(f"sparse_sageattn: {name} must be float16 or bfloat16, got {a.dtype}")
    for name, a in (("k", k), ("v", v))[2 if v_e4m3 else 1 if k_int8 else 0:]:
        if a.dtype != q.dtype:
            raise TypeError(f"sparse_sageattn: q, k and v must share one dtype, got q {q.dtype} and {name} {a.dtype}")
    for name, a in (("k", k), ("v", v)):
        if a.device != q.device:
            raise ValueError(f"sparse_sageattn: q, k and v must be on one device, got q on {q.device} and "
                             f"{name} on {a.device}")
    b_axis, h_axis, n_axis = layout_axes(tensor_layout)
    kb_axis, kh_axis, kn_axis = layout_axes(kv_layout)
    for name, a in (("k", k), ("v", v)):
        if a.shape[kb_axis] != q.shape[b_axis]:
            raise ValueError(f"sparse_sageattn: {name} has batch {a.shape[kb_axis]}, q has {q.shape[b_axis]}")
        if a.shape[3] != q.shape[3]:
            raise ValueError(f"sparse_sageattn: {name} has head_dim {a.shape[3]}, q has {q.shape[3]}")
    if v.shape[kn_axis] != k.shape[kn_axis]:
        raise ValueError(f"sparse_sageattn: v has {v.shape[kn_axis]} keys, k has {k.shape[kn_axis]}")
    if v.shape[kh_axis] != k.shape[kh_axis]:
        raise ValueError(f"sparse_sageattn: v has {v.shape[kh_axis]} heads, k has {k.shape[kh_axis]}")
    heads_q, heads_kv = q.shape[h_axis], k.shape[kh_axis]
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
    for name, a, layout in (("q", q, tensor_layout), ("k", k, kv_layout), ("v", v, kv_layout)):
        if a.strides[3] != 1:
            raise ValueError(
                f"sparse_sageattn: {name} must be contiguous in its last dimension (stride 1), got strides "
                f"{fmt_shape(a.strides)}"
            )
        if any(abs(s) > MAX_ROW_STRIDE for s in bhn_strides(a, layout)[2:]):
            raise ValueError(f"sparse_sageattn: {name}'s sequence stride must be at most {MAX_ROW_STRIDE}, "
                             f"got strides {fmt_shape(a.strides)}")
    n_q, n_k = q.shape[n_axis], k.shape[kn_axis]
    if cdiv(n_q, BLOCK_M) > MAX_GRID_Y or cdiv(n_k, BLOCK_N) > MAX_GRID_Y:
        raise ValueError(
            f"sparse_sageattn: at most {MAX_GRID_Y * BLOCK_M} queries and {MAX_GRID_Y * BLOCK_N} "
            f"keys are supported, got {n_q} and {n_k}"
        )
    if mask_id is not None:
        if mask_id.dtype not in MASK_DTYPES:
            raise TypeError(f"sparse_sageattn: mask_id must be a bool or integer array (nonzero = compute the "
                            f"block), got {mask_id.dtype}")
        if mask_id.device != q.device:
            raise ValueError(f"sparse_sageattn: mask_id must be on q's device {q.device}, got {mask_id.device}")
        _mask_strides(mask_id, (q.shape[b_axis], heads_q, cdiv(n_q, BLOCK_M), cdiv(n_k, BLOCK_N)))
    if kv_lens is not None:
        if kv_lens.dtype != "int32":
            raise TypeError(f"sparse_sageattn: kv_lens must be an int32 array (valid keys per batch row), got "
                            f"{kv_lens.dtype}")
        if tuple(kv_lens.shape) != (q.shape[b_axis],):
            raise ValueError(f"sparse_sageattn: kv_lens must have shape (B,) = ({q.shape[b_axis]},), got "
                             f"{tuple(kv_lens.shape)}")
        if q.shape[b_axis] > 1 and kv_lens.strides[0] != 1:
            raise ValueError(f"sparse_sageattn: kv_lens must be contiguous, got stride {kv_lens.strides[0]}")
        if kv_lens.device != q.device:
            raise ValueError(f"sparse_sageattn: kv_lens must be on q's device {q.device}, got {kv_lens.device}")


def _plan(buffers, launches) -> Plan:
    """The plan of these launches, with the buffers one of them reads or writes (a launch left out leaves its
    scratch unused: no executor allocates it, and none is ever read unwritten)."""
    used = {a.name for step in launches for a in step.args.values() if isinstance(a, Ref)}
    return Plan({n: b for n, b in buffers.items() if n in used or n in OUTPUTS}, tuple(launches), OUTPUTS)


def make_plan(q: ArrayDesc, k: ArrayDesc, v: ArrayDesc, mask_id: ArrayDesc | None = None, is_causal=False,
              tensor_layout="HND", sm_scale=None, smooth_k=True, return_lse=False, capability=None, *,
              pv_dtype="fp16", kv_lens: ArrayDesc | None = None, num_sms=None, attention_override=None,
              split_kv_override=None, kv_layout=None, k_scale: ArrayDesc | None = None,
              k_mean: ArrayDesc | None = None, v_exp: ArrayDesc | None = None) -> Plan:
    """Validate and resolve one sparse_sageattn call. `capability`: (major, minor) of the GPU, None = interpreter;
    `num_sms`: its SM count, which sizes the split-KV grid (None: configs.INTERPRETER_SMS) and the persistent
    Gluon kernel's (None: a program a tile).

    kv_lens: int32 (B,), valid keys per batch row (keys at or past it never contribute; causal aligns to it).
    Calls of at most configs.SPLIT_KV_MAX_QUERIES queries a head in the fp16 P.V mode take the split-KV kernel
    (split_kv.py), the others the table's attention kernel.
    attention_override: fields replacing the table's attention entry (configs.lookup); split_kv_override:
    fields of configs.SplitKVConfig and "splits" (the split count), forcing the split-KV kernel. For
    benchmarks and tests of a variant, never passed by the frontends.
    kv_layout, k_scale, k_mean: attention over an INT8 KV cache (kv_cache/plan.py validates its arrays and calls
    this): k is its int8 keys, k_scale / k_mean its block scales and smoothing vector, in kv_layout; the
    split-KV kernel reads them as they are (no K sums, no quantization of K). v_exp: v holds an e4m3 cache's
    values, v_exp their scale exponents per block and channel.
    """
    k_int8, v_e4m3 = k_scale is not None, v_exp is not None
    validate(q, k, v, mask_id, is_causal, tensor_layout, sm_scale, smooth_k, return_lse, pv_dtype, kv_lens,
             kv_layout, k_int8, v_e4m3)
    kv_layout = tensor_layout if kv_layout is None else kv_layout
    pv_fp8 = pv_dtype == "fp8"
    if pv_fp8 and capability is not None and tuple(capability) < FP8_MIN_CAPABILITY:
        raise ValueError(f"sparse_sageattn: pv_dtype='fp8' needs FP8 tensor cores (compute capability 8.9 or newer: "
                         f"Ada, Hopper, Blackwell); this GPU is sm_{capability[0]}{capability[1]}: use pv_dtype='fp16'")
    b_axis, h_axis, n_axis = layout_axes(tensor_layout)
    batch, heads_q, n_q = q.shape[b_axis], q.shape[h_axis], q.shape[n_axis]
    head_dim = int(q.shape[3])  # a constexpr: specialise it even when shapes are symbolic
    heads_kv, n_k = k.shape[layout_axes(kv_layout)[1]], k.shape[layout_axes(kv_layout)[2]]
    kv_group = heads_q // heads_kv
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    head_dim_pad = max(32, next_pow2(head_dim))  # int8 tl.dot needs K >= 32
    cfg = configs.lookup(capability, head_dim_pad, q.dtype, pv_dtype, attention_override)
    attention_cfg = choose_attention(cfg.attention, capability, head_dim, head_dim_pad, pv_dtype)
    n_qb, n_kb = cdiv(n_q, BLOCK_M), cdiv(n_k, BLOCK_N)

    out_shape = bhnd_shape(batch, heads_q, n_q, head_dim, tensor_layout)
    lse_shape = (batch, heads_q, n_q) if return_lse else (1,)
    if batch == 0 or heads_q == 0 or n_q == 0 or n_k == 0:
        # Nothing to launch: an empty output, or (no keys) rows that see nothing -- zeros with lse -inf.
        buffers = {"out": Buffer(out_shape, q.dtype, 0.0), "lse": Buffer(lse_shape, "float32", -math.inf)}
        return Plan(buffers, (), OUTPUTS)

    # bf16 V in the fp16 P.V mode: converted to fp16 once, in the quantize launch; attention reads that copy
    v_to_fp16 = q.dtype == "bfloat16" and not pv_fp8
    v_fp16_shape = (batch * heads_kv, n_kb * BLOCK_N, head_dim)
    v_fp16_strides = (heads_kv * v_fp16_shape[1] * head_dim, v_fp16_shape[1] * head_dim, head_dim)
    out_strides = bhn_strides(ArrayDesc(out_shape, contiguous_strides(out_shape), q.dtype), tensor_layout)
    stride_align, (q_strides, k_strides, v_strides, v_fp16_strides, out_strides) = aligned_strides(
        bhn_strides(q, tensor_layout), bhn_strides(k, kv_layout), bhn_strides(v, kv_layout),
        v_fp16_strides, out_strides)

    def strides(prefix, values):
        return {f"stride_{prefix}{axis}": s for axis, s in zip("bhn", values)}

    dims = dict(HEAD_DIM=head_dim, HEAD_DIM_PAD=head_dim_pad, STRIDE_ALIGN=stride_align)
    fp8 = dict(PV_FP8=pv_fp8, FP8_SOFTWARE_ROUNDING=capability is None)  # see fp8.py: the interpreter's cast
    blocks = dict(BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N)

    # Block lists: one per (batch, head) the mask distinguishes; a mask broadcast over heads shares one list.
    # kv_lens gives each batch row its own lists. An array a call lacks is bound to q, never read.
    mask_ref, mask_strides, list_b, list_h = Ref("q"), (0, 0, 0, 0), 1, 1
    if mask_id is not None:
        mask_shape, mask_strides = _mask_strides(mask_id, (batch, heads_q, n_qb, n_kb))
        mask_ref = Ref("mask_id")
        list_b = batch if mask_shape[0] != 1 else 1
        list_h = heads_q if mask_shape[1] != 1 else 1
    if kv_lens is not None:
        list_b = batch
    lengths = dict(kv_lens_ptr=Ref("kv_lens" if kv_lens is not None else "q"), HAS_KV_LENS=kv_lens is not None)
    n_chunks = cdiv(n_k, configs.ROWS_PER_CHUNK)
    chunk_programs = batch * heads_kv * n_chunks if (smooth_k and not k_int8) or pv_fp8 else 0
    # A buffer its mode does not use is neither written nor read: a one-element slot.
    chunk_partials = flat(batch * heads_kv, n_chunks, head_dim_pad)
    shift_lse = smooth_k and return_lse
    split_path = k_int8 or split_kv_override is not None or (
        not pv_fp8 and attention_override is None and n_q <= configs.SPLIT_KV_MAX_QUERIES)
    # Without a block mask the split-KV kernel forms its (one query block's) list itself: no lists launched.
    list_programs = 0 if split_path and mask_id is None else list_b * list_h * n_qb
    shared = {
        "k_channel_sums": Buffer(chunk_partials if smooth_k and not k_int8 else (1,), "float32"),
        "v_channel_amax": Buffer(chunk_partials if pv_fp8 else (1,), "float32"),
        "block_counts": Buffer(flat(list_b * list_h, n_qb, 2) if list_programs else (1,), "int32"),
        "block_indices": Buffer(flat(list_b * list_h, n_qb, n_kb) if list_programs else (1,), "int32"),
        "out": Buffer(out_shape, q.dtype),
        "lse": Buffer(lse_shape, "float32"),
    }
    sums_and_lists = Launch(
        "sums_and_lists", sums_and_lists_kernel, (chunk_programs + list_programs,),
        dict(k_ptr=Ref("k"), v_ptr=Ref("v"), mask_ptr=mask_ref, **lengths,
             n_q=n_q, n_k=n_k, heads_kv=heads_kv, list_heads=list_h, chunk_programs=chunk_programs,
             **strides("k", k_strides), **strides("v", v_strides),
             **{f"stride_m{axis}": s for axis, s in zip("bhqk", mask_strides)},
             partial_sums_ptr=Ref("k_channel_sums"), partial_amax_ptr=Ref("v_channel_amax"),
             counts_ptr=Ref("block_counts"), indices_ptr=Ref("block_indices"),
             ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, TILE_ROWS=configs.SUMS_TILE_ROWS, **dims,
             SMOOTH_K=smooth_k and not k_int8, PV_FP8=pv_fp8, **blocks, KB_TILE=configs.KB_TILE,
             HAS_MASK=mask_id is not None, IS_CAUSAL=is_causal),
        ("k_channel_sums", "v_channel_amax", "block_counts", "block_indices"),
        cfg.sums_and_lists.num_warps, cfg.sums_and_lists.num_stages)

    if split_path:
        if pv_fp8 or n_q > BLOCK_M:
            raise ValueError("sparse_sageattn: the split-KV kernel (split_kv_override, INT8 caches) takes fp16 "
                             f"P.V and at most {BLOCK_M} queries")
        base_cfg = cfg.split_kv_e4m3 if v_e4m3 else cfg.split_kv_int8 if k_int8 else cfg.split_kv
        fields = {f: v for f, v in (split_kv_override or {}).items() if f != "splits"}
        if "num_warps" in fields:  # an override's warp count is the launch's, for every tile height
            fields.setdefault("narrow_num_warps", None)
        split_cfg = replace(base_cfg, **fields)
        # Heads share a tile when they share a block list, as many of the kv group as fit 128 rows.
        heads_per_program = max((g for g in range(1, min(kv_group, 16) + 1)
                                 if kv_group % g == 0 and g * n_q <= BLOCK_M), default=1) if list_h == 1 else 1
        block_rows = 16  # tl.dot's smallest M
        while block_rows < heads_per_program * n_q:
            block_rows *= 2
        programs = batch * heads_kv * (kv_group // heads_per_program)
        sms = configs.INTERPRETER_SMS if num_sms is None else num_sms
        splits = (split_kv_override or {}).get("splits") or min(
            split_cfg.max_splits, n_kb, max(1, sms * split_cfg.programs_per_sm // programs))
        partial_rows = batch * heads_q * splits * n_q
        split_buffers = {
            "partial_out": Buffer(flat(partial_rows, head_dim) if splits > 1 else (1,), "float32"),
            "partial_lse": Buffer((partial_rows,) if splits > 1 else (1,), "float32"),
        }
        split_kv = Launch(
            "split_kv", split_kv_kernel, (programs * splits,),
            dict(q_ptr=Ref("q"), k_ptr=Ref("k"), v_ptr=Ref("v"),
                 partial_sums_ptr=Ref("k_channel_sums" if smooth_k and not k_int8 else "q"),
                 counts_ptr=Ref("block_counts" if list_programs else "q"),
                 indices_ptr=Ref("block_indices" if list_programs else "q"), **lengths,
                 k_scale_ptr=Ref("k_scale" if k_int8 else "q"), k_mean_ptr=Ref("k_mean" if k_int8 else "q"),
                 v_exp_ptr=Ref("v_exp" if v_e4m3 else "q"),
                 q_pre_scale=float(sm_scale) * LOG2E, n_q=n_q, n_k=n_k, heads_q=heads_q, kv_group=kv_group,
                 list_stride_b=list_h if list_b != 1 else 0, list_stride_h=1 if list_h != 1 else 0,
                 **strides("q", q_strides), **strides("k", k_strides), **strides("v", v_strides),
                 **strides("o", out_strides), out_ptr=Ref("out"), lse_ptr=Ref("lse"),
                 partial_out_ptr=Ref("partial_out"), partial_lse_ptr=Ref("partial_lse"),
                 BLOCK_ROWS=block_rows, BLOCK_N=BLOCK_N, HEADS_PER_PROGRAM=heads_per_program, SPLITS=splits,
                 ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, SMOOTH_K=smooth_k, IS_CAUSAL=is_causal,
                 RETURN_LSE=return_lse, SHIFT_LSE=shift_lse, **dims, K_INT8=k_int8, V_E4M3=v_e4m3,
                 DENSE_LIST=list_programs == 0),
            ("out", "lse", "partial_out", "partial_lse"), split_cfg.warps(block_rows, programs * splits, sms),
            split_cfg.num_stages)
        prepare = (sums_and_lists,) if chunk_programs + list_programs else ()  # an INT8 cache, no mask: nothing
        if splits == 1:
            return _plan({**shared, **split_buffers}, (*prepare, split_kv))
        combine = Launch(
            "combine", combine_kernel, (batch * heads_q * n_q,),
            dict(partial_out_ptr=Ref("partial_out"), partial_lse_ptr=Ref("partial_lse"), n_rows=n_q,
                 heads=heads_q, **strides("o", out_strides), out_ptr=Ref("out"), lse_ptr=Ref("lse"),
                 SPLITS=splits, SPLITS_PAD=next_pow2(splits), RETURN_LSE=return_lse, **dims),
            ("out", "lse"), cfg.combine.num_warps, cfg.combine.num_stages)
        return _plan({**shared, **split_buffers}, (*prepare, split_kv, combine))

    buffers = {
        **shared,
        "q_int8": Buffer(flat(batch * heads_q, n_qb * BLOCK_M, head_dim), "int8"),
        "q_scale": Buffer(flat(batch * heads_q, n_qb), "float32"),
        "q_row_shift": Buffer(flat(batch * heads_q, n_qb * BLOCK_M) if shift_lse else (1,), "float32"),
        "k_int8": Buffer(flat(batch * heads_kv, n_kb * BLOCK_N, head_dim), "int8"),
        "k_scale": Buffer(flat(batch * heads_kv, n_kb), "float32"),
        "v_fp8": Buffer(flat(batch * heads_kv, n_kb * BLOCK_N, head_dim) if pv_fp8 else (1,), "uint8"),
        "v_scale": Buffer(flat(batch * heads_kv, head_dim_pad) if pv_fp8 else (1,), "float32"),
        "v_fp16": Buffer(flat(*v_fp16_shape) if v_to_fp16 else (1,), "float16"),
    }

    k_programs, q_programs = batch * heads_kv * n_kb, batch * heads_q * n_qb
    quantize = Launch(
        "quantize", quantize_kernel, (k_programs + q_programs + (k_programs if pv_fp8 or v_to_fp16 else 0),),
        dict(q_ptr=Ref("q"), k_ptr=Ref("k"), v_ptr=Ref("v"), partial_sums_ptr=Ref("k_channel_sums"),
             partial_amax_ptr=Ref("v_channel_amax"), **lengths,
             q_pre_scale=float(sm_scale) * LOG2E, n_q=n_q, n_k=n_k, heads_q=heads_q, heads_kv=heads_kv,
             k_programs=k_programs, q_programs=q_programs,
             **strides("q", q_strides), **strides("k", k_strides), **strides("v", v_strides),
             q_int8_ptr=Ref("q_int8"), q_scale_ptr=Ref("q_scale"), q_row_shift_ptr=Ref("q_row_shift"),
             k_int8_ptr=Ref("k_int8"), k_scale_ptr=Ref("k_scale"), v_fp8_ptr=Ref("v_fp8"), v_scale_ptr=Ref("v_scale"),
             v_fp16_ptr=Ref("v_fp16"),
             **blocks, ROWS_PER_CHUNK=configs.ROWS_PER_CHUNK, SMOOTH_K=smooth_k, WRITE_ROW_SHIFT=shift_lse,
             **dims, **fp8, V_TO_FP16=v_to_fp16),
        ("q_int8", "q_scale", "q_row_shift", "k_int8", "k_scale", "v_fp8", "v_scale", "v_fp16"),
        cfg.quantize.num_warps, cfg.quantize.num_stages)

    attention_kernel_fn = ATTENTION_KERNELS[attention_cfg.kernel][0]
    attention_programs = batch * heads_q * n_qb  # one program a (batch, head, query block) tile
    descriptor_scratch, persistent = None, {}
    if attention_kernel_fn is kernel_sm90.attention_sm90_kernel:
        # Persistent: a program an SM (one fits: its shared memory), each walking tiles program id + k * programs,
        # so a program's set-up and epilogue overlap the loads of its next tile; programs past the tiles exit.
        # Not min(tiles, SMs): a comparison of symbolic shapes would guard a torch.compile graph on it. With
        # kv_lens a program a tile (its V descriptor is cut at one batch row's valid keys). It builds its TMA
        # descriptors in global scratch.
        if kv_lens is None and num_sms is not None:
            attention_programs = num_sms
        persistent = dict(batch=batch)
        descriptor_scratch = "descriptor_scratch"
        buffers[descriptor_scratch] = Buffer((attention_programs * kernel_sm90.DESCRIPTOR_SCRATCH_BYTES,), "uint8")
    attention = Launch(
        "attention", attention_kernel_fn, (attention_programs,),
        dict(q_int8_ptr=Ref("q_int8"), q_scale_ptr=Ref("q_scale"), k_int8_ptr=Ref("k_int8"),
             k_scale_ptr=Ref("k_scale"), v_ptr=Ref("v_fp16" if v_to_fp16 else "v"), v_fp8_ptr=Ref("v_fp8"),
             v_scale_ptr=Ref("v_scale"),
             counts_ptr=Ref("block_counts"), indices_ptr=Ref("block_indices"), row_shift_ptr=Ref("q_row_shift"),
             **lengths, n_q=n_q, n_k=n_k, heads_q=heads_q, kv_group=kv_group,
             list_stride_b=list_h if list_b != 1 else 0, list_stride_h=1 if list_h != 1 else 0,
             **strides("v", v_fp16_strides if v_to_fp16 else v_strides), **strides("o", out_strides), **persistent,
             out_ptr=Ref("out"), lse_ptr=Ref("lse"),
             **blocks, IS_CAUSAL=is_causal, RETURN_LSE=return_lse, SHIFT_LSE=shift_lse,
             KEY_BLOCKS_PER_STEP=attention_cfg.key_blocks_per_step, **dims, **fp8),
        ("out", "lse"), attention_cfg.num_warps, attention_cfg.num_stages, attention_cfg.maxnreg, descriptor_scratch)
    return Plan(buffers, (sums_and_lists, quantize, attention), OUTPUTS)
