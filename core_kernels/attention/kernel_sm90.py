"""Warp-specialized, persistent Gluon variant of kernel.py's `attention_kernel` for Hopper (sm_90): same contract,
same parameters (names, order, constexprs) plus `batch`, same numerics (INT8 Q.K^T with int32 accumulation scaled
by q_scale * k_scale in the log2 domain, exp2 online softmax, fp16 P.V with fp32 accumulation; rows that see
nothing -> zeros and lse = -inf), but for a quarter of an unmasked step's exp2, which runs as a cubic on the FMA
units (_exp2_poly: relative error 7.5e-5). A tile is kernel.py's program: (batch * head, query block).

Structure (FA3's shape; TMA without host descriptors, so the JAX launch feeds it as the torch one does):
  - persistent grid: the plan launches a program an SM (one fits, by its shared memory); program p runs tiles
    p, p + programs, ... in _tile_coords' order (heads in order, each head's last query blocks first, odd rounds
    backwards), so its set-up is paid once and a tile's epilogue overlaps the loads of the next. With kv_lens
    the plan launches a program a tile instead (the V descriptor is then cut at that tile's valid keys).
  - the program builds its TMA descriptors once (tma.make_tensor_descriptor) in the global scratch its launch
    passes: Triton's hidden global-scratch parameter, DESCRIPTOR_SCRATCH_BYTES a program (the plan allocates it;
    the torch executor hands it to Triton's launcher, the JAX executor passes it as the last array, which lands
    in that parameter's slot). A host-built descriptor cannot reach a jax-triton launch; this one does. One
    descriptor covers every tile's quantized Q, one every head's K blocks, one all of V ([batch, kv heads, keys,
    head dim], so rows past a head's keys arrive as zeros).
  - loader partition (LOADER_WARPS warps): per tile, its Q (into one of two Q slots, the one the tile before
    last freed), then its block list (entries [0, live), one or two 64-key blocks per step,
    KEY_BLOCKS_PER_STEP) into a ring of RING_STAGES shared-memory slots, each one K tile (int8) and one V tile
    (fp16), NVMMA-swizzled for wgmma; the ring's positions run on across tiles. Q, K, and fp16 V with
    16-byte-aligned rows (STRIDE_ALIGN == 8) go by TMA (rows out of bounds arrive as zeros); V rows of unknown
    alignment, or bf16 V (the plan hands this kernel the fp16 copy it makes, so only a caller binding it by hand
    does that), are loaded into registers, converted to fp16 and stored (fp16 is what the P.V MMA takes).
    mbarriers: `ready[s]` (the slot is filled: the loader's expect of the TMA bytes, plus one plain arrive after
    the register path's stores and proxy fence), `empty[s]` (every consumer is done), `q_ready[t]` / `q_empty[t]`
    (a Q slot is filled / every consumer has read it for its tile's last Q.K^T).
  - CONSUMER_WARPGROUPS (2) consumer warpgroups (the default partition and one 4-warp worker), each on
    BLOCK_M / CONSUMER_WARPGROUPS query rows of every tile: s8 wgmma Q.K^T (Q in shared memory, K viewed
    K-major), the scale and mask (unmasked list entries [0, full), then the masked ones with the key-tail and
    bottom-right causal element mask), exp2 online softmax, fp16 wgmma P.V with P in registers, then its own
    epilogue (out, lse). A step issues its Q.K^T before the previous step's P.V and runs its softmax while that
    P.V is in flight. The block indices and K scales a step needs are read one step ahead (their latency off the
    critical path).
Registers: every partition asks for its own budget with setmaxnreg (worker_num_regs); the kernel must be launched
with num_warps=NUM_WARPS and maxnreg=MAXNREG, or every partition keeps the compiler's maximum and the warpgroups
do not fit together (three 128-thread warpgroups: 504 registers a thread in all, 168 each at launch).

Supported: PV_FP8=False, HEAD_DIM == HEAD_DIM_PAD in (64, 128), KEY_BLOCKS_PER_STEP 1 or 2, fp16 and bf16 V and
out, IS_CAUSAL, RETURN_LSE / SHIFT_LSE, any block list (masks), GQA, STRIDE_ALIGN 1 or 8.
Refused at compile time (gl.static_assert, so a plan can never bind them silently): PV_FP8 (its e4m3 P.V needs
V^T K-major and the per-channel rescale: not written here), a padded head dim (HEAD_DIM != HEAD_DIM_PAD: the
int8 and fp16 wgmma tiles here are the head dim itself), head dims other than 64/128 (256 does not fit the
registers of a 64-row warpgroup's fp32 accumulator plus scores), block sizes other than the contract's (128, 64),
a launch with num_warps != NUM_WARPS. FP8_SOFTWARE_ROUNDING only matters with PV_FP8 and is ignored.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait,
)
from triton.language import PropagateNan as _PropagateNan

from .. import contract
from ..alignment import _aligned  # a @triton.jit helper: Gluon calls it like its own
from .kernel import UNSPECIALIZED

# ---- the kernel's structure; configs.py launches it with NUM_WARPS and MAXNREG (tests/test_plan.py checks they agree)
NUM_WARPS = 4  # the default partition: one consumer warpgroup
CONSUMER_WARPGROUPS = 2  # 64 query rows each (one warpgroup on 128 rows spills ~0.5 KB at hd128, 2 blocks/step)
LOADER_WARPS = 4  # a 1-warp loader is padded to a warpgroup anyway; 4 warps give the bf16 path registers
RING_STAGES = 3  # hd128, two key blocks a step: 3 * (16 KB K + 32 KB V) + 2 * 16 KB Q = 176 KB of shared memory
LOADER_REGS = 40
CONSUMER_REGS = 232  # the worker consumer; the default partition gets the rest: 504 - 232 - 40 = 232
MAXNREG = 168  # 65536 registers / (32 * all 12 warps), a multiple of 8
# a quarter of an unmasked step's exp2 (every 4th group of 8 columns) through _exp2_poly; its cubic's coefficients
EXP2_POLY_EVERY = 4
EXP2_C0, EXP2_C1, EXP2_C2, EXP2_C3 = (gl.constexpr(c) for c in (0.9999281167984009, 0.6932609677314758,
                                                                0.24261054396629333, 0.05517132207751274))
V_CHUNK_ROWS = 16  # register path: rows of V per load/convert/store (8 registers a loader thread; 32 spill)
DESCRIPTOR_SCRATCH_BYTES = 3 * 128  # global scratch a program: its Q, K and V TMA descriptors, 128 bytes each

LN2 = gl.constexpr(contract.LN2)
_N_CONSUMERS = gl.constexpr(CONSUMER_WARPGROUPS)
_LOADER_WARPS = gl.constexpr(LOADER_WARPS)
_STAGES = gl.constexpr(RING_STAGES)
_LOADER_REGS = gl.constexpr(LOADER_REGS)
_CONSUMER_REGS = gl.constexpr(CONSUMER_REGS)
_V_CHUNK = gl.constexpr(V_CHUNK_ROWS)
_NUM_WARPS = gl.constexpr(NUM_WARPS)
_EXP2_POLY_EVERY = gl.constexpr(EXP2_POLY_EVERY)
_NAN_PROPAGATES = gl.constexpr(_PropagateNan.ALL)



def refusals(capability, head_dim: int, head_dim_pad: int, pv_dtype: str) -> list:
    """Why this kernel cannot take a call (empty: it can); the plan falls back to the next table candidate."""
    reasons = []
    if capability is None or capability[0] != 9:
        reasons.append("needs sm_90 (wgmma, setmaxnreg)")
    if pv_dtype != "fp16":
        reasons.append("P.V in fp16 only (the FP8 mode's e4m3 V^T is not written here)")
    if head_dim != head_dim_pad or head_dim not in (64, 128):
        reasons.append(f"head_dim 64 or 128 only (its MMA tiles are the head dim), got {head_dim}")
    return reasons


@gluon.jit
def _tile_coords(tile, programs, n_tiles, n_qb, heads_q, kv_group):
    """The tile a program runs k-th (tile = program id + k * programs) as (batch * head, query block, batch, head,
    kv batch * head). Tiles go heads in order, each head's query blocks last first (under causal they carry the
    most work), so the programs of one round share a few heads' K and V in L2. Odd full rounds run backwards
    (a snake): a program that took a heavy tile in one round takes a light one in the next. Without it a
    program's work under causal depends on its id modulo the query blocks (B=8 N=2048 on 132 SMs: the busiest
    program 1.20x the mean; with it 1.04x, as a greedy dynamic schedule would be)."""
    rnd = tile // programs
    if (rnd % 2 == 1) and ((rnd + 1) * programs <= n_tiles):
        tile = rnd * programs + (programs - 1 - tile % programs)
    bh = tile // n_qb
    qb = n_qb - 1 - tile % n_qb
    b = bh // heads_q
    h = bh % heads_q
    return bh, qb, b, h, b * (heads_q // kv_group) + h // kv_group


@gluon.jit
def _tile(tile, counts_ptr, indices_ptr, n_tiles, n_qb, n_kb, heads_q, kv_group, list_stride_b, list_stride_h):
    """_tile_coords of the program's k-th tile, and its block list: live entries, full entries (the unmasked ones,
    listed first), its indices."""
    bh, qb, b, h, kv_bh = _tile_coords(tile, gl.num_programs(0), n_tiles, n_qb, heads_q, kv_group)
    list_row = (b * list_stride_b + h * list_stride_h).to(gl.int64) * n_qb + qb
    return (bh, qb, b, h, kv_bh, gl.load(counts_ptr + list_row * 2), gl.load(counts_ptr + list_row * 2 + 1),
            indices_ptr + list_row * n_kb)


@gluon.jit
def _valid_keys(kv_lens_ptr, b, n_k, HAS_KV_LENS: gl.constexpr):
    """The keys that exist (kv_lens.py): the key mask and the causal rule use them, the layout keeps n_k."""
    if HAS_KV_LENS:
        n_valid = gl.minimum(gl.maximum(gl.load(kv_lens_ptr + b), 0), n_k)
    else:
        n_valid = n_k
    return n_valid


@gluon.jit
def _step_blocks(indices_row_ptr, k_scale_head_ptr, step, n_live, n_kb, BLOCK_N: gl.constexpr, KB: gl.constexpr):
    """Block indices and K scales of one step's list entries. A second entry past the list reads as block n_kb
    with scale 0: the key mask hides it (as in kernel.py's pairs)."""
    entry = step * KB
    kb_a = gl.load(indices_row_ptr + entry, mask=entry < n_live, other=0)
    scale_a = gl.load(k_scale_head_ptr + kb_a)
    if KB == 2:
        kb_b = gl.load(indices_row_ptr + entry + 1, mask=entry + 1 < n_live, other=n_kb)
        scale_b = gl.load(k_scale_head_ptr + kb_b, mask=kb_b < n_kb, other=0.0)
    else:
        kb_b = kb_a
        scale_b = scale_a
    return kb_a, kb_b, scale_a, scale_b


@gluon.jit
def _exp2_poly(x):
    """2**x for finite x <= 0 on the FMA units: 2**round(x) into the exponent bits of a cubic minimax fit of 2**f,
    f = x - round(x) in [-0.5, 0.5] (relative error 7.5e-5, below half an fp16 ulp of P). x is clamped at -125
    (2**-125 in place of a value below it: nothing next to the row's 1); NaN stays NaN."""
    x = gl.maximum(x, -125.0, propagate_nan=_NAN_PROPAGATES)
    shifted = x + 12582912.0  # 1.5 * 2**23: round(x) lands in the low mantissa bits
    f = x - (shifted - 12582912.0)
    poly = gl.fma(gl.fma(gl.fma(f, EXP2_C3, EXP2_C2), f, EXP2_C1), f, EXP2_C0)
    bits = poly.to(gl.int32, bitcast=True) + (shifted.to(gl.int32, bitcast=True) << 23)
    return bits.to(gl.float32, bitcast=True)


@gluon.jit
def _consume_step(acc, m_i, l_i, p_prev, q_smem, k_bufs, v_bufs, ready, empty, step, q_scale, kb_a, kb_b, scale_a,
                  scale_b, q_rows, n_q, n_k, BLOCK_N: gl.constexpr, BN: gl.constexpr, KB: gl.constexpr,
                  HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, MASKED: gl.constexpr,
                  FIRST: gl.constexpr):
    """Q.K^T and the softmax of `step`, overlapped with the P.V of the step before (p_prev, in the previous ring
    slot): the scores' wgmma is issued first, then the previous P.V, and waiting for one outstanding group
    returns the scores while P.V still runs. The arithmetic is kernel.py's _attend_tile's, in its order (the
    previous P.V lands in acc before acc is rescaled by this step's alpha), but for the unmasked steps' exp2 of
    every 4th group of 8 columns (_exp2_poly). FIRST: step 0, with no P.V before it.
    Returns this step's fp16 P, whose P.V the next step (or the caller, after the last) issues."""
    nw: gl.constexpr = gl.num_warps()
    s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[nw, 1], instr_shape=[16, BN, 32])
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[nw, 1],
                                                  instr_shape=[16, HEAD_DIM, 16])
    p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    slot = step % STAGES
    prev_slot = (step + STAGES - 1) % STAGES
    mbarrier.wait(ready.index(slot), (step // STAGES) & 1)
    k_smem = k_bufs.index(slot)
    v_prev = v_bufs.index(prev_slot)
    zero = gl.zeros([q_rows.shape[0], BN], gl.int32, layout=s_l)
    qk = warpgroup_mma(q_smem, k_smem.permute((1, 0)), zero, use_acc=False, is_async=True)
    if FIRST:
        qk, k_smem = warpgroup_mma_wait(num_outstanding=0, deps=(qk, k_smem))
    else:
        acc = warpgroup_mma(p_prev, v_prev, acc, is_async=True)
        qk, k_smem = warpgroup_mma_wait(num_outstanding=1, deps=(qk, k_smem))
    cols = gl.arange(0, BN, layout=gl.SliceLayout(0, s_l))
    if KB == 1:
        s = qk.to(gl.float32) * (q_scale * scale_a)
    else:
        score_scale = gl.where(cols < BLOCK_N, q_scale * scale_a, q_scale * scale_b)
        s = qk.to(gl.float32) * score_scale[None, :]
    if MASKED:
        if KB == 1:
            k_rows = kb_a * BLOCK_N + cols
        else:
            k_rows = gl.where(cols < BLOCK_N, kb_a, kb_b) * BLOCK_N + cols % BLOCK_N
        visible = (k_rows < n_k)[None, :]
        if IS_CAUSAL:
            visible = visible & (k_rows[None, :] <= q_rows[:, None] + (n_k - n_q))
        s = gl.where(visible, s, float("-inf"))
        m_new = gl.maximum(m_i, gl.max(s, axis=1))
    else:
        # The row max from the int32 scores, scaled after: a scale is >= 0 and rounding is monotonic, so this is
        # the max of the scaled scores bit for bit, and s is left with one use (p's FFMA): no FMUL an element.
        if KB == 1:
            m_blk = gl.max(qk, axis=1).to(gl.float32) * (q_scale * scale_a)
        else:
            in_a = (cols < BLOCK_N)[None, :]
            m_blk = gl.maximum(gl.max(gl.where(in_a, qk, -2147483648), axis=1).to(gl.float32) * (q_scale * scale_a),
                               gl.max(gl.where(in_a, -2147483648, qk), axis=1).to(gl.float32) * (q_scale * scale_b))
        m_new = gl.maximum(m_i, m_blk)
    if MASKED:
        m_new_safe = gl.where(m_new == float("-inf"), 0.0, m_new)  # nothing visible yet: no -inf - -inf
    else:
        m_new_safe = m_new
    alpha = gl.exp2(m_i - m_new_safe)
    if MASKED:
        p = gl.exp2(s - m_new_safe[:, None])
    else:
        # a share of the scores' exp2 on the FMA units (_exp2_poly), the rest on the MUFU, which both warpgroups'
        # softmaxes otherwise queue on; the columns are fixed per register, so each element computes one of the two
        x = s - m_new[:, None]
        by_poly = ((cols // 8) % _EXP2_POLY_EVERY == _EXP2_POLY_EVERY - 1)[None, :]
        p = gl.where(by_poly, _exp2_poly(x), gl.exp2(x))
    l_i = l_i * alpha + gl.sum(p, axis=1)
    p16 = gl.convert_layout(p.to(gl.float16), p_l)
    if not FIRST:
        acc, v_prev, p_prev = warpgroup_mma_wait(num_outstanding=0, deps=(acc, v_prev, p_prev))
        mbarrier.arrive(empty.index(prev_slot))  # one arrive per warpgroup, after its MMAs have read the slot
    acc = acc * gl.convert_layout(alpha, gl.SliceLayout(1, o_l))[:, None]
    return acc, m_new, l_i, p16


@gluon.jit
def _attend_tile(q_smem, k_bufs, v_bufs, ready, empty, q_empty_bar, ring, indices_row_ptr, k_scale_head_ptr,
                 q_scale, n_live, n_full, q_row0, n_q, n_k, n_kb, BLOCK_N: gl.constexpr, BM_WG: gl.constexpr,
                 KB: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr):
    """One consumer warpgroup on query rows [q_row0, q_row0 + BM_WG) of a tile: all its steps, the ring slots from
    position `ring` on. Releases the tile's Q (q_empty_bar) once its last Q.K^T has been read. Returns acc, m, l."""
    nw: gl.constexpr = gl.num_warps()
    BN: gl.constexpr = KB * BLOCK_N
    s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[nw, 1], instr_shape=[16, BN, 32])
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[nw, 1],
                                                  instr_shape=[16, HEAD_DIM, 16])
    row_l: gl.constexpr = gl.SliceLayout(1, s_l)
    q_rows = q_row0 + gl.arange(0, BM_WG, layout=row_l)
    acc = gl.zeros([BM_WG, HEAD_DIM], gl.float32, layout=o_l)
    m_i = gl.full([BM_WG], float("-inf"), gl.float32, layout=row_l)
    l_i = gl.zeros([BM_WG], gl.float32, layout=row_l)
    p_l: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_l, k_width=2)
    p_prev = gl.zeros([BM_WG, BN], gl.float16, layout=p_l)
    n_steps = (n_live + (KB - 1)) // KB
    n_unmasked = n_full // KB  # an odd last full block joins the masked steps (its mask is all-visible)
    kb_a, kb_b, scale_a, scale_b = _step_blocks(indices_row_ptr, k_scale_head_ptr, 0, n_live, n_kb, BLOCK_N, KB)
    if n_steps > 0:  # step 0 has no P.V before it to overlap; masked when no full step precedes the masked ones
        next_a, next_b, next_sa, next_sb = _step_blocks(indices_row_ptr, k_scale_head_ptr, 1, n_live, n_kb, BLOCK_N,
                                                        KB)
        if n_unmasked > 0:
            acc, m_i, l_i, p_prev = _consume_step(acc, m_i, l_i, p_prev, q_smem, k_bufs, v_bufs, ready, empty, ring,
                                                  q_scale, kb_a, kb_b, scale_a, scale_b, q_rows, n_q, n_k, BLOCK_N,
                                                  BN, KB, HEAD_DIM, STAGES, IS_CAUSAL, False, True)
        else:
            acc, m_i, l_i, p_prev = _consume_step(acc, m_i, l_i, p_prev, q_smem, k_bufs, v_bufs, ready, empty, ring,
                                                  q_scale, kb_a, kb_b, scale_a, scale_b, q_rows, n_q, n_k, BLOCK_N,
                                                  BN, KB, HEAD_DIM, STAGES, IS_CAUSAL, True, True)
        kb_a, kb_b, scale_a, scale_b = next_a, next_b, next_sa, next_sb
    for step in range(1, n_unmasked):
        next_a, next_b, next_sa, next_sb = _step_blocks(indices_row_ptr, k_scale_head_ptr, step + 1, n_live, n_kb,
                                                        BLOCK_N, KB)
        acc, m_i, l_i, p_prev = _consume_step(acc, m_i, l_i, p_prev, q_smem, k_bufs, v_bufs, ready, empty,
                                              ring + step, q_scale, kb_a, kb_b, scale_a, scale_b, q_rows, n_q, n_k,
                                              BLOCK_N, BN, KB, HEAD_DIM, STAGES, IS_CAUSAL, False, False)
        kb_a, kb_b, scale_a, scale_b = next_a, next_b, next_sa, next_sb
    for step in range(gl.maximum(n_unmasked, 1), n_steps):
        next_a, next_b, next_sa, next_sb = _step_blocks(indices_row_ptr, k_scale_head_ptr, step + 1, n_live, n_kb,
                                                        BLOCK_N, KB)
        acc, m_i, l_i, p_prev = _consume_step(acc, m_i, l_i, p_prev, q_smem, k_bufs, v_bufs, ready, empty,
                                              ring + step, q_scale, kb_a, kb_b, scale_a, scale_b, q_rows, n_q, n_k,
                                              BLOCK_N, BN, KB, HEAD_DIM, STAGES, IS_CAUSAL, True, False)
        kb_a, kb_b, scale_a, scale_b = next_a, next_b, next_sa, next_sb
    mbarrier.arrive(q_empty_bar)  # every Q.K^T of the tile has been waited for: the loader may refill its Q
    if n_steps > 0:  # the last step's P.V
        last = (ring + n_steps - 1) % STAGES
        v_last = v_bufs.index(last)
        acc = warpgroup_mma(p_prev, v_last, acc, is_async=True)
        acc, v_last, p_prev = warpgroup_mma_wait(num_outstanding=0, deps=(acc, v_last, p_prev))
        mbarrier.arrive(empty.index(last))
    return acc, m_i, l_i


@gluon.jit
def _consumer(q_bufs, k_bufs, v_bufs, ready, empty, q_ready, q_empty, counts_ptr, indices_ptr, q_scale_ptr,
              k_scale_ptr, kv_lens_ptr, row_shift_ptr, out_ptr, lse_ptr, n_q, n_k, heads_q, kv_group,
              list_stride_b, list_stride_h, stride_ob, stride_oh, stride_on, tiles_end,
              WG: gl.constexpr, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BM_WG: gl.constexpr, KB: gl.constexpr,
              HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, IS_CAUSAL: gl.constexpr, RETURN_LSE: gl.constexpr,
              SHIFT_LSE: gl.constexpr, STRIDE_ALIGN: gl.constexpr, HAS_KV_LENS: gl.constexpr):
    """Consumer warpgroup WG (query rows [WG * BM_WG, (WG + 1) * BM_WG) of each tile): the program's tiles in
    turn, each attended (_attend_tile), then its epilogue (out, lse) while the loader already fills the ring with
    the next tile's Q, K and V."""
    nw: gl.constexpr = gl.num_warps()
    s_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[nw, 1],
                                                  instr_shape=[16, KB * BLOCK_N, 32])
    o_l: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[nw, 1],
                                                  instr_shape=[16, HEAD_DIM, 16])
    n_qb = (n_q + (BLOCK_M - 1)) // BLOCK_M
    n_kb = (n_k + (BLOCK_N - 1)) // BLOCK_N
    stride_on = stride_on * STRIDE_ALIGN  # multiplied here, where the compiler sees the multiple (16-byte rows)
    om = gl.arange(0, BM_WG, layout=gl.SliceLayout(1, o_l))
    od = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, o_l))
    ring = 0
    tile_count = 0
    for tile in range(gl.program_id(0), tiles_end, gl.num_programs(0)):
        bh, qb, b, h, kv_bh, n_live, n_full, indices_row_ptr = _tile(tile, counts_ptr, indices_ptr, tiles_end, n_qb,
                                                                     n_kb, heads_q, kv_group, list_stride_b,
                                                                     list_stride_h)
        n_valid = _valid_keys(kv_lens_ptr, b, n_k, HAS_KV_LENS)
        q_scale = gl.load(q_scale_ptr + bh.to(gl.int64) * n_qb + qb)
        q_row0 = qb * BLOCK_M + WG * BM_WG
        q_slot = tile_count % 2
        mbarrier.wait(q_ready.index(q_slot), (tile_count // 2) & 1)
        acc, m_i, l_i = _attend_tile(q_bufs.index(q_slot * (BLOCK_M // BM_WG) + WG), k_bufs, v_bufs, ready, empty,
                                     q_empty.index(q_slot), ring, indices_row_ptr,
                                     k_scale_ptr + kv_bh.to(gl.int64) * n_kb, q_scale, n_live, n_full, q_row0, n_q,
                                     n_valid, n_kb, BLOCK_N, BM_WG, KB, HEAD_DIM, STAGES, IS_CAUSAL)
        ring += (n_live + (KB - 1)) // KB
        tile_count += 1

        seen_nothing = l_i == 0.0
        l_safe = gl.where(seen_nothing, 1.0, l_i)
        out = acc / gl.convert_layout(l_safe, gl.SliceLayout(1, o_l))[:, None]  # acc is 0 where l is: zeros
        out_rows_ptr = out_ptr + b.to(gl.int64) * stride_ob + h.to(gl.int64) * stride_oh \
            + q_row0.to(gl.int64) * stride_on
        out_valid = (q_row0 + om < n_q)[:, None] & (od < HEAD_DIM)[None, :]
        gl.store(out_rows_ptr + om[:, None] * stride_on + od[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=out_valid)
        if RETURN_LSE:
            q_rows = q_row0 + gl.arange(0, BM_WG, layout=gl.SliceLayout(1, s_l))
            lse2 = m_i + gl.log2(l_safe)
            if SHIFT_LSE:
                lse2 += gl.load(row_shift_ptr + bh.to(gl.int64) * n_qb * BLOCK_M + q_rows)
            lse = gl.where(seen_nothing, float("-inf"), lse2 * LN2)
            gl.store(lse_ptr + bh.to(gl.int64) * n_q + q_rows, lse, mask=q_rows < n_q)


@gluon.jit
def _store_v_rows(v_smem, v_head_ptr, kb, row0, n_k, stride_vn,
                  BLOCK_N: gl.constexpr, ROWS: gl.constexpr, HEAD_DIM: gl.constexpr):
    """Rows [row0, row0 + ROWS) of key block kb of V, converted to fp16, into v_smem (ROWS x HEAD_DIM), zero past
    n_k: the register path, for V that TMA cannot read (bf16, or rows not on 16 bytes)."""
    nw: gl.constexpr = gl.num_warps()
    TPC: gl.constexpr = HEAD_DIM // 8  # threads along a row: 16-byte vectors of 8 fp16/bf16
    v_l: gl.constexpr = gl.BlockedLayout([1, 8], [32 // TPC, TPC], [nw, 1], [1, 0])
    r = gl.arange(0, ROWS, layout=gl.SliceLayout(1, v_l))
    c = gl.arange(0, HEAD_DIM, layout=gl.SliceLayout(0, v_l))
    keys = kb * BLOCK_N + row0 + r
    ptrs = (v_head_ptr + (kb * BLOCK_N + row0).to(gl.int64) * stride_vn + r[:, None] * stride_vn + c[None, :])
    valid = (keys < n_k)[:, None] & (c < HEAD_DIM)[None, :]
    v_smem.store(gl.load(ptrs, mask=valid, other=0.0).to(gl.float16))


@gluon.jit
def _load_k_block(k_desc, kv_bh, n_kb, kb, bar, k_smem, BLOCK_N: gl.constexpr):
    """Key block kb of kv head kv_bh: rows of the one descriptor over every head's blocks (ours, contiguous). A
    block n_kb (a second entry past the list) is the next head's first block, or zeros past the last head: the
    key mask hides it either way, and int8 is always finite."""
    tma.async_copy_global_to_shared(k_desc, [(kv_bh * n_kb + kb) * BLOCK_N, 0], bar, k_smem)


@gluon.jit
def _load_v_block(v_desc, b, h_kv, kb, bar, v_slot, ENTRY: gl.constexpr, BLOCK_N: gl.constexpr,
                  HEAD_DIM: gl.constexpr, HAS_KV_LENS: gl.constexpr):
    """Key block kb of V by TMA into rows [ENTRY * BLOCK_N, (ENTRY + 1) * BLOCK_N) of the slot, rows past the valid
    keys as zeros (so a 0 * inf never reaches the P.V): with kv_lens the descriptor is the program's one head, cut
    at its valid keys; else all of V, [batch, kv heads, keys, head dim], cut at n_k. The slot is viewed 4-d whole
    and sliced after: a slice viewed 4-d would lose the slot's row count, which places a 256-byte row's second
    swizzle column (hd128 fp16)."""
    if HAS_KV_LENS:
        tma.async_copy_global_to_shared(v_desc, [kb * BLOCK_N, 0], bar, v_slot.slice(ENTRY * BLOCK_N, BLOCK_N))
    else:
        rows: gl.constexpr = v_slot.shape[0]
        slot_l: gl.constexpr = gl.NVMMASharedLayout.get_default_for([1, 1, rows, HEAD_DIM], gl.float16)
        box = v_slot._reinterpret(gl.float16, [1, 1, rows, HEAD_DIM], slot_l).slice(ENTRY * BLOCK_N, BLOCK_N, dim=2)
        tma.async_copy_global_to_shared(v_desc, [b, h_kv, kb * BLOCK_N, 0], bar, box)


@gluon.jit
def _loader(q_bufs, k_bufs, v_bufs, ready, empty, q_ready, q_empty, q_desc, k_desc, v_desc, counts_ptr,
            indices_ptr, kv_lens_ptr, v_ptr, n_q, n_k, heads_q, kv_group, list_stride_b, list_stride_h, stride_vb,
            stride_vh, stride_vn, tiles_end, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, BM_WG: gl.constexpr,
            KB: gl.constexpr, HEAD_DIM: gl.constexpr, STAGES: gl.constexpr, V_TMA: gl.constexpr,
            V_CHUNK: gl.constexpr, STRIDE_ALIGN: gl.constexpr, HAS_KV_LENS: gl.constexpr):
    """For each of the program's tiles: its Q (both warpgroups' halves, into the Q slot the tile before last
    freed), then the K and V tiles of each step's list entries, in list order, into ring slot (position % STAGES),
    the ring's positions running on across tiles. K (and V when V_TMA) go by TMA, out-of-bounds rows as zeros."""
    stride_vn = stride_vn * STRIDE_ALIGN
    n_qb = (n_q + (BLOCK_M - 1)) // BLOCK_M
    n_kb = (n_k + (BLOCK_N - 1)) // BLOCK_N
    ring = 0
    tile_count = 0
    for tile in range(gl.program_id(0), tiles_end, gl.num_programs(0)):
        bh, qb, b, h, kv_bh, n_live, n_full, indices_row_ptr = _tile(tile, counts_ptr, indices_ptr, tiles_end, n_qb,
                                                                     n_kb, heads_q, kv_group, list_stride_b,
                                                                     list_stride_h)
        q_slot = tile_count % 2
        q_bar = q_ready.index(q_slot)
        mbarrier.wait(q_empty.index(q_slot), ((tile_count // 2) & 1) ^ 1)  # a fresh barrier passes phase 1 at once
        mbarrier.expect(q_bar, BLOCK_M * HEAD_DIM)
        for wg in gl.static_range(BLOCK_M // BM_WG):
            tma.async_copy_global_to_shared(q_desc, [(bh * n_qb + qb) * BLOCK_M + wg * BM_WG, 0], q_bar,
                                            q_bufs.index(q_slot * (BLOCK_M // BM_WG) + wg))
        h_kv = h // kv_group
        n_valid = _valid_keys(kv_lens_ptr, b, n_k, HAS_KV_LENS)
        v_head_ptr = v_ptr + b.to(gl.int64) * stride_vb + h_kv.to(gl.int64) * stride_vh
        n_steps = (n_live + (KB - 1)) // KB
        # Indices are read one step ahead: the copies' coordinates then do not wait on a load issued in the same
        # step. A second entry past the list reads as block n_kb: out of the head's bounds (see the loads).
        kb_a_next = gl.load(indices_row_ptr, mask=0 < n_live, other=0)
        kb_b_next = gl.load(indices_row_ptr + 1, mask=1 < n_live, other=n_kb)
        for step in range(0, n_steps):
            slot = (ring + step) % STAGES
            entry = step * KB
            kb_a = kb_a_next
            kb_b = kb_b_next
            kb_a_next = gl.load(indices_row_ptr + entry + KB, mask=entry + KB < n_live, other=0)
            if KB == 2:
                kb_b_next = gl.load(indices_row_ptr + entry + KB + 1, mask=entry + KB + 1 < n_live, other=n_kb)
            mbarrier.wait(empty.index(slot), (((ring + step) // STAGES) & 1) ^ 1)
            k_smem = k_bufs.index(slot)
            v_smem = v_bufs.index(slot)
            bar = ready.index(slot)
            # the bytes the slot's TMA copies deliver, zero-filled rows included
            mbarrier.expect(bar, KB * BLOCK_N * HEAD_DIM * (3 if V_TMA else 1))
            _load_k_block(k_desc, kv_bh, n_kb, kb_a, bar, k_smem.slice(0, BLOCK_N), BLOCK_N)
            if KB == 2:
                _load_k_block(k_desc, kv_bh, n_kb, kb_b, bar, k_smem.slice(BLOCK_N, BLOCK_N), BLOCK_N)
            if V_TMA:
                _load_v_block(v_desc, b, h_kv, kb_a, bar, v_smem, 0, BLOCK_N, HEAD_DIM, HAS_KV_LENS)
                if KB == 2:
                    _load_v_block(v_desc, b, h_kv, kb_b, bar, v_smem, 1, BLOCK_N, HEAD_DIM, HAS_KV_LENS)
            else:
                for chunk in gl.static_range(BLOCK_N // V_CHUNK):
                    _store_v_rows(v_smem.slice(chunk * V_CHUNK, V_CHUNK), v_head_ptr, kb_a, chunk * V_CHUNK,
                                  n_valid, stride_vn, BLOCK_N, V_CHUNK, HEAD_DIM)
                if KB == 2:
                    for chunk in gl.static_range(BLOCK_N // V_CHUNK):
                        _store_v_rows(v_smem.slice(BLOCK_N + chunk * V_CHUNK, V_CHUNK), v_head_ptr, kb_b,
                                      chunk * V_CHUNK, n_valid, stride_vn, BLOCK_N, V_CHUNK, HEAD_DIM)
                fence_async_shared()  # these st.shared before the consumers' wgmma reads (async proxy)
                mbarrier.arrive(bar)  # after a barrier of this partition: every thread's stores
        ring += n_steps
        tile_count += 1


@gluon.jit(do_not_specialize=UNSPECIALIZED)
def attention_sm90_kernel(
    q_int8_ptr, q_scale_ptr, k_int8_ptr, k_scale_ptr, v_ptr, v_fp8_ptr, v_scale_ptr, counts_ptr, indices_ptr,
    row_shift_ptr, kv_lens_ptr,
    n_q, n_k, heads_q, kv_group, list_stride_b, list_stride_h,
    stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on,
    batch,
    out_ptr, lse_ptr,
    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, HEAD_DIM: gl.constexpr, HEAD_DIM_PAD: gl.constexpr,
    IS_CAUSAL: gl.constexpr, RETURN_LSE: gl.constexpr, SHIFT_LSE: gl.constexpr, STRIDE_ALIGN: gl.constexpr,
    KEY_BLOCKS_PER_STEP: gl.constexpr, PV_FP8: gl.constexpr, FP8_SOFTWARE_ROUNDING: gl.constexpr,
    HAS_KV_LENS: gl.constexpr,
):
    """attention_kernel's contract (kernel.py), plus `batch` (the tile count is batch * heads_q * query blocks).
    v_fp8_ptr / v_scale_ptr are never read (PV_FP8 is refused). Any grid covers every tile (tile = program id +
    k * programs), but with HAS_KV_LENS each program must have one tile (its V descriptor is cut at its batch row's
    valid keys): the plan then launches a program a tile."""
    gl.static_assert(not PV_FP8, "attention_sm90_kernel: PV_FP8 is not supported (use the triton variant)")
    gl.static_assert(HEAD_DIM == HEAD_DIM_PAD, "attention_sm90_kernel: HEAD_DIM must equal HEAD_DIM_PAD")
    gl.static_assert((HEAD_DIM == 64) or (HEAD_DIM == 128), "attention_sm90_kernel: HEAD_DIM must be 64 or 128")
    gl.static_assert((BLOCK_M == 128) and (BLOCK_N == 64), "attention_sm90_kernel: blocks must be (128, 64)")
    gl.static_assert((KEY_BLOCKS_PER_STEP == 1) or (KEY_BLOCKS_PER_STEP == 2),
                     "attention_sm90_kernel: KEY_BLOCKS_PER_STEP must be 1 or 2")
    gl.static_assert(gl.num_warps() == _NUM_WARPS, "attention_sm90_kernel: launch with num_warps=4")
    gl.static_assert(_N_CONSUMERS == 2, "attention_sm90_kernel: its partitions are two consumer warpgroups")
    gl.static_assert((STRIDE_ALIGN == 1) or (STRIDE_ALIGN == 8), "attention_sm90_kernel: STRIDE_ALIGN is 1 or 8")
    KB: gl.constexpr = KEY_BLOCKS_PER_STEP
    BN: gl.constexpr = KB * BLOCK_N
    BM_WG: gl.constexpr = BLOCK_M // _N_CONSUMERS
    # TMA reads fp16 V whose rows start on 16 bytes (STRIDE_ALIGN 8); other V takes the loader's register path
    V_TMA: gl.constexpr = (v_ptr.dtype.element_ty == gl.float16) and (STRIDE_ALIGN == 8)

    stride_vb, stride_vh, stride_vn_el = _aligned(stride_vb, stride_vh, stride_vn, STRIDE_ALIGN)
    stride_ob, stride_oh, _ = _aligned(stride_ob, stride_oh, stride_on, STRIDE_ALIGN)
    n_qb = (n_q + (BLOCK_M - 1)) // BLOCK_M
    n_kb = (n_k + (BLOCK_N - 1)) // BLOCK_N
    heads_kv = heads_q // kv_group
    tiles_end = batch * heads_q * n_qb

    # Shared memory: Q of two tiles (the next one's lands while this one runs), one NVMMA tile a consumer
    # warpgroup; the ring, a slot holding KB boxes of BLOCK_N rows of K and of V.
    q_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BM_WG, HEAD_DIM], gl.int8)
    k_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], gl.int8)
    v_sl: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], gl.float16)
    q_bufs = gl.allocate_shared_memory(gl.int8, [2 * _N_CONSUMERS, BM_WG, HEAD_DIM], q_sl)
    k_bufs = gl.allocate_shared_memory(gl.int8, [_STAGES, BN, HEAD_DIM], k_sl)
    v_bufs = gl.allocate_shared_memory(gl.float16, [_STAGES, BN, HEAD_DIM], v_sl)
    # Descriptors built here, once a program, in the global scratch the launch passes (DESCRIPTOR_SCRATCH_BYTES a
    # program): every tile's quantized Q, every head's K blocks (ours, contiguous), and V (see _load_v_block).
    q_desc = tma.make_tensor_descriptor(q_int8_ptr, [batch * heads_q * n_qb * BLOCK_M, HEAD_DIM], [HEAD_DIM, 1],
                                        [BM_WG, HEAD_DIM], q_sl)
    k_desc = tma.make_tensor_descriptor(k_int8_ptr, [batch * heads_kv * n_kb * BLOCK_N, HEAD_DIM], [HEAD_DIM, 1],
                                        [BLOCK_N, HEAD_DIM], k_sl)
    if V_TMA:
        if HAS_KV_LENS:
            _, _, b0, h0, _ = _tile_coords(gl.program_id(0), gl.num_programs(0), tiles_end, n_qb, heads_q,
                                            kv_group)
            v_desc = tma.make_tensor_descriptor(
                v_ptr + b0.to(gl.int64) * stride_vb + (h0 // kv_group).to(gl.int64) * stride_vh,
                [_valid_keys(kv_lens_ptr, b0, n_k, HAS_KV_LENS), HEAD_DIM], [stride_vn_el, 1], [BLOCK_N, HEAD_DIM],
                v_sl)
        else:
            v_desc = tma.make_tensor_descriptor(
                v_ptr, [batch, heads_kv, n_k, HEAD_DIM], [stride_vb, stride_vh, stride_vn_el, 1],
                [1, 1, BLOCK_N, HEAD_DIM], gl.NVMMASharedLayout.get_default_for([1, 1, BLOCK_N, HEAD_DIM], gl.float16))
    else:
        v_desc = k_desc  # unused: V goes through registers
    ready = gl.allocate_shared_memory(gl.int64, [_STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [_STAGES, 1], mbarrier.MBarrierLayout())
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    q_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(_STAGES):
        # the loader's expect (with the TMA bytes), plus one plain arrive when V went through registers
        mbarrier.init(ready.index(s), count=1 if V_TMA else 2)
        mbarrier.init(empty.index(s), count=_N_CONSUMERS)
    for s in gl.static_range(2):
        mbarrier.init(q_ready.index(s), count=1)
        mbarrier.init(q_empty.index(s), count=_N_CONSUMERS)
    fence_async_shared()  # the barrier inits before any async-proxy use

    gl.warp_specialize([
        (_consumer, (q_bufs, k_bufs, v_bufs, ready, empty, q_ready, q_empty, counts_ptr, indices_ptr, q_scale_ptr,
                     k_scale_ptr, kv_lens_ptr, row_shift_ptr, out_ptr, lse_ptr, n_q, n_k, heads_q, kv_group,
                     list_stride_b, list_stride_h, stride_ob, stride_oh, stride_on, tiles_end, 0, BLOCK_M,
                     BLOCK_N, BM_WG, KB, HEAD_DIM, _STAGES, IS_CAUSAL, RETURN_LSE, SHIFT_LSE, STRIDE_ALIGN,
                     HAS_KV_LENS)),
        (_consumer, (q_bufs, k_bufs, v_bufs, ready, empty, q_ready, q_empty, counts_ptr, indices_ptr, q_scale_ptr,
                     k_scale_ptr, kv_lens_ptr, row_shift_ptr, out_ptr, lse_ptr, n_q, n_k, heads_q, kv_group,
                     list_stride_b, list_stride_h, stride_ob, stride_oh, stride_on, tiles_end, 1, BLOCK_M,
                     BLOCK_N, BM_WG, KB, HEAD_DIM, _STAGES, IS_CAUSAL, RETURN_LSE, SHIFT_LSE, STRIDE_ALIGN,
                     HAS_KV_LENS)),
        (_loader, (q_bufs, k_bufs, v_bufs, ready, empty, q_ready, q_empty, q_desc, k_desc, v_desc, counts_ptr,
                   indices_ptr, kv_lens_ptr, v_ptr, n_q, n_k, heads_q, kv_group, list_stride_b, list_stride_h,
                   stride_vb, stride_vh, stride_vn, tiles_end, BLOCK_M, BLOCK_N, BM_WG, KB, HEAD_DIM, _STAGES,
                   V_TMA, _V_CHUNK, STRIDE_ALIGN, HAS_KV_LENS)),
    ], [4, _LOADER_WARPS], [_CONSUMER_REGS, _LOADER_REGS])
