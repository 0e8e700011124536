"""GPU checks of the HF transformers adapter at a larger size: a randomly initialised Llama (GQA 16:4, head dim 128,
2048 tokens) against the float64 reference per attention call (sampled rows) and an fp32 eager copy end to end,
a decode step with a KV cache, and the forward compiled with torch.compile(fullgraph=True) (a graph break fails).
"""
import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sparse_sageattn.reference import COS_MIN, REL_L1_MAX, attention, cosine, rel_l1
from sparse_sageattn.torch.transformers import register

from hf_cases import recording

pytestmark = pytest.mark.gpu

LOGITS_COS_MIN = 0.999  # the CPU test's bound and reasoning (tests/torch/test_transformers.py), for 4 layers


def models(name):
    calls = recording(name)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=1024, intermediate_size=2048, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=4, head_dim=128, max_position_embeddings=4096,
                      initializer_range=0.05)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=name,
                                          dtype=torch.float16).cuda().eval()
    eager = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="eager",
                                          dtype=torch.float32).cuda().eval()
    eager.load_state_dict(model.state_dict())
    return model, eager, calls


def check_calls(calls):
    for query, key, value, scaling, out in calls:
        n_q = query.shape[2]
        rows = np.unique(np.r_[0, 127, 128, n_q - 1, np.random.default_rng(0).integers(0, n_q, 256)].clip(0, n_q - 1))
        q, k, v = (x.double().cpu().numpy() for x in (query, key, value))
        got = out.double().cpu().numpy().transpose(0, 2, 1, 3)[:, :, rows]
        ref, _ = attention(q, k, v, is_causal=True, sm_scale=scaling, rows=rows)
        assert cosine(got, ref) >= COS_MIN and rel_l1(got, ref) <= REL_L1_MAX


def logits_cosine(a, b):
    return cosine(a.double().cpu().numpy(), b.double().cpu().numpy())


def test_prefill_decode_and_compiled_forward():
    model, eager, calls = models("sparse_sageattn_gpu")
    ids = torch.randint(0, 1024, (2, 2049), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad():
        out = model(ids[:, :2048])
        eager_out = eager(ids[:, :2048])
        assert logits_cosine(out.logits, eager_out.logits) >= LOGITS_COS_MIN
        check_calls(calls)
        del calls[:]
        step = model(ids[:, 2048:], cache=out.past_key_values).logits
        assert logits_cosine(step, eager(ids[:, 2048:], cache=eager_out.past_key_values).logits) >= LOGITS_COS_MIN
        check_calls(calls)

        register("sparse_sageattn_gpu")  # the plain adapter again: compile what users run
        compiled = torch.compile(model, fullgraph=True)  # a graph break raises
        # the kernel is deterministic; only the compiled fp16 ops around it may round differently
        assert logits_cosine(compiled(ids[:, :2048]).logits, out.logits) >= 0.9999
