"""GPU: compiled flex_attention and sparse_sageattn on the same mask at real sizes, fp16 and bf16.

sparse_sageattn's output is held to the contract's bounds against flex_attention's (through to_flex_block_mask),
and flex_attention's own output to the same bounds against the float64 reference on sampled query rows, so the
agreement is not the agreement of two wrong answers.
"""
import numpy as np
import pytest
import torch
from torch.nn.attention.flex_attention import AuxRequest, flex_attention

from sparse_sageattn import sparse_sageattn
from sparse_sageattn.reference import assert_close, attention
from sparse_sageattn.torch import to_flex_block_mask, union_mask

pytestmark = pytest.mark.gpu

CASES = [  # batch, heads_q, heads_kv, n_q, n_k, head_dim, is_causal, mask
    (1, 8, 8, 4096, 4096, 128, False, "random"),
    (1, 8, 2, 5000, 7001, 128, True, "random"),
    (2, 4, 4, 8192, 8192, 64, True, "streaming"),
    (1, 4, 1, 16384, 16384, 128, True, "streaming"),
]


@pytest.fixture(scope="module")
def compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("case", CASES, ids=[f"{c[3]}x{c[4]}-d{c[5]}-gqa{c[1] // c[2]}-c{int(c[6])}-{c[7]}"
                                             for c in CASES])
def test_flex_and_sparse_sageattn_agree(compiled_flex, case, dtype):
    batch, heads_q, heads_kv, n_q, n_k, head_dim, is_causal, kind = case
    gen = torch.Generator(device="cuda").manual_seed(n_q + head_dim)
    q, k, v = (torch.randn(batch, h, n, head_dim, generator=gen, device="cuda", dtype=dtype)
               for h, n in ((heads_q, n_q), (heads_kv, n_k), (heads_kv, n_k)))
    if kind == "random":
        mask = torch.rand(batch, heads_q, -(-n_q // 128), -(-n_k // 64), generator=gen, device="cuda") < 0.3
    else:
        mask = union_mask(n_q, n_k, window=1024, sink=4, device="cuda")
    # Flex's hd64 kernel tiles must divide the (128, 64) blocks (ENVIRONMENT.md: seen working on the H100).
    options = {"BLOCK_M": 64, "BLOCK_N": 64} if head_dim == 64 else None
    flex_out, aux = compiled_flex(q, k, v, block_mask=to_flex_block_mask(mask, n_q, n_k, is_causal=is_causal),
                                  enable_gqa=heads_q != heads_kv, return_aux=AuxRequest(lse=True),
                                  kernel_options=options)
    out, lse = sparse_sageattn(q, k, v, mask, is_causal, return_lse=True)
    flex_out_np, flex_lse_np = flex_out.float().cpu().numpy(), aux.lse.float().cpu().numpy()
    assert_close(out.float().cpu().numpy(), lse.cpu().numpy(), flex_out_np, flex_lse_np)

    rng = np.random.default_rng(n_q)
    rows = np.unique(np.concatenate([[0, 127, 128, n_q - 1], rng.integers(0, n_q, 256)]))
    ref_out, ref_lse = attention(*(x.float().cpu().numpy() for x in (q, k, v)), mask.cpu().numpy(), is_causal,
                                 rows=rows)
    assert_close(flex_out_np[:, :, rows], flex_lse_np[:, :, rows], ref_out, ref_lse)
