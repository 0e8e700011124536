"""Does this Triton warp-specialize an attention loop on Hopper? Compiles (no GPU needed) one minimal online-softmax
loop over TMA tensor descriptors (INT8 Q.K^T, fp16 P.V: the shape of our attention step) for sm_90 and sm_100,
with `tl.range(..., warp_specialize=False/True)`, and prints what a warp-specialized kernel must contain:
`setmaxnreg` (producer / consumer register split) and more mbarrier operations (the partitions' handshakes).

    python benchmarks/ws_probe.py

Triton 3.6 (2026-11-25): sm_100 warp-specializes (setmaxnreg, mbarrier ops 29 -> 51); for sm_90 the two PTX files
are identical, without setmaxnreg: the flag is ignored on Hopper, so our kernel cannot get FA3-style overlap of
softmax and MMAs from it (benchmarks/NOTES.md).
"""
import hashlib
import os

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402


@triton.jit
def _probe_kernel(q_ptr, k_ptr, v_ptr, out_ptr, n, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, WARP_SPECIALIZE: tl.constexpr):
    q_desc = tl.make_tensor_descriptor(q_ptr, shape=[n, HEAD_DIM], strides=[HEAD_DIM, 1],
                                       block_shape=[BLOCK_M, HEAD_DIM])
    k_desc = tl.make_tensor_descriptor(k_ptr, shape=[n, HEAD_DIM], strides=[HEAD_DIM, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    v_desc = tl.make_tensor_descriptor(v_ptr, shape=[n, HEAD_DIM], strides=[HEAD_DIM, 1],
                                       block_shape=[BLOCK_N, HEAD_DIM])
    q = q_desc.load([tl.program_id(0) * BLOCK_M, 0])
    acc = tl.zeros([BLOCK_M, HEAD_DIM], tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    for start in tl.range(0, n, BLOCK_N, warp_specialize=WARP_SPECIALIZE):
        s = tl.dot(q, tl.trans(k_desc.load([start, 0]))).to(tl.float32) * 0.01
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(tl.float16), v_desc.load([start, 0]), acc * alpha[:, None])
        m_i = m_new
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(out_ptr + rows[:, None] * HEAD_DIM + tl.arange(0, HEAD_DIM)[None, :], (acc / l_i[:, None]).to(tl.float16))


def main():
    signature = {"q_ptr": "*i8", "k_ptr": "*i8", "v_ptr": "*fp16", "out_ptr": "*fp16", "n": "i32",
                 "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "HEAD_DIM": "constexpr", "WARP_SPECIALIZE": "constexpr"}
    print(f"triton {triton.__version__}")
    for arch in (90, 100):
        for ws in (False, True):
            constants = {"BLOCK_M": 128, "BLOCK_N": 128, "HEAD_DIM": 128, "WARP_SPECIALIZE": ws}
            compiled = triton.compile(ASTSource(_probe_kernel, signature, constants),
                                      target=GPUTarget("cuda", arch, 128), options=dict(num_warps=8, num_stages=2))
            ptx = compiled.asm["ptx"]
            print(f"sm_{arch} warp_specialize={ws!s:<5}  setmaxnreg={'setmaxnreg' in ptx!s:<5}  "
                  f"mbarrier ops={ptx.count('mbarrier'):3d}  shared={compiled.metadata.shared:6d}  "
                  f"ptx sha256={hashlib.sha256(ptx.encode()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()
