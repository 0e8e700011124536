"""GPU checks of the HF transformers adapter at a larger size: a randomly initialised Llama (GQA 16:4, head dim 128,
2048 tokens) against the float64 reference per attention call (sampled rows) and an fp32 eager copy end to end,
a decode step with a KV cache, and the forward compiled with torch.compile(fullgraph=True) (a graph break fails).

Two initialisations. transformers' default (initializer_range 0.02) gives attention inputs like the contract's
normal inputs, where its bounds apply per call. A larger one (0.05) gives sharp softmaxes (logits with a standard
deviation of several units) on which no INT8 SageAttention meets those bounds: measured on the H100, per-call
cosine 0.99976, and the 4-layer logits' cosine to fp32 eager 0.997173 for this package and for sageattention
1.0.6 alike. There the test holds the product's claim instead: as accurate as SageAttention, call by call.
"""
import copy

import numpy as np
import pytest
import torch
from transformers import AttentionInterface, LlamaConfig, LlamaForCausalLM

from sparse_sageattn.reference import COS_MIN, REL_L1_MAX, attention, cosine, rel_l1
from sparse_sageattn.torch.transformers import register

from hf_cases import recording, with_cache

pytestmark = pytest.mark.gpu

LOGITS_COS_MIN = 0.999  # the CPU test's bound and reasoning (tests/torch/test_transformers.py), for 4 layers
LOGITS_COS_MIN_E4M3 = 0.9975  # the same with e4m3 values in the KV cache


def models(name, initializer_range=0.02):
    calls = recording(name)
    cfg = LlamaConfig(vocab_size=1024, hidden_size=1024, intermediate_size=2048, num_hidden_layers=4,
                      num_attention_heads=16, num_key_value_heads=4, head_dim=128, max_position_embeddings=4096,
                      initializer_range=initializer_range)
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation=name,
                                          dtype=torch.float16).cuda().eval()
    eager = LlamaForCausalLM._from_config(copy.deepcopy(cfg), attn_implementation="eager",
                                          dtype=torch.float32).cuda().eval()
    eager.load_state_dict(model.state_dict())
    return model, eager, calls


def sampled_errors(query, key, value, scaling, out):
    """(cosine, relative L1) of out (B, Nq, Hq, D) against the float64 causal attention, on sampled rows."""
    n_q = query.shape[2]
    rows = np.unique(np.r_[0, 127, 128, n_q - 1, np.random.default_rng(0).integers(0, n_q, 256)].clip(0, n_q - 1))
    q, k, v = (x.double().cpu().numpy() for x in (query, key, value))
    got = out.double().cpu().numpy().transpose(0, 2, 1, 3)[:, :, rows]
    ref, _ = attention(q, k, v, is_causal=True, sm_scale=scaling, rows=rows)
    return cosine(got, ref), rel_l1(got, ref)


def check_calls(calls):
    assert calls
    for call in calls:
        cos, l1 = sampled_errors(*call)
        assert cos >= COS_MIN and l1 <= REL_L1_MAX


def logits_cosine(a, b):
    return cosine(a.double().cpu().numpy(), b.double().cpu().numpy())


def test_prefill_decode_and_compiled_forward():
    model, eager, calls = models("sparse_sageattn_gpu")
    ids = torch.randint(0, 1024, (2, 2049), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad():
        out = model(ids[:, :2048])
        eager_out = eager(ids[:, :2048])
        check_calls(calls)
        assert logits_cosine(out.logits, eager_out.logits) >= LOGITS_COS_MIN
        del calls[:]
        step = model(ids[:, 2048:], **with_cache(model, out.past_key_values)).logits
        assert [tuple(c[1].shape) for c in calls] == [(2, 4, 2049, 128)] * 4  # one query, the cached keys
        check_calls(calls)
        expected = eager(ids[:, 2048:], **with_cache(eager, eager_out.past_key_values)).logits
        assert logits_cosine(step, expected) >= LOGITS_COS_MIN

        register("sparse_sageattn_gpu")  # the plain adapter again: compile what users run
        compiled = torch.compile(model, fullgraph=True)  # a graph break raises
        # the kernel is deterministic; only the compiled fp16 ops around it may round differently
        assert logits_cosine(compiled(ids[:, :2048]).logits, out.logits) >= 0.9999


def test_sharp_attention_as_accurate_as_sageattention():
    """initializer_range 0.05: per call, this package's error against float64 is SageAttention 1.0.6's on the
    same q, k, v (within 10%: the two round differently in places, e.g. where the scale is folded); end to end,
    the logits are as close to fp32 eager as with SageAttention in every layer."""
    sageattention = pytest.importorskip("sageattention")
    model, eager, calls = models("sparse_sageattn_sharp", initializer_range=0.05)
    ids = torch.randint(0, 1024, (2, 2048), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    with torch.no_grad():
        logits = model(ids).logits
        assert len(calls) == 4
        for query, key, value, scaling, out in calls:
            sage = sageattention.sageattn(query, key, value, tensor_layout="HND", is_causal=True, sm_scale=scaling)
            ours_cos, ours_l1 = sampled_errors(query, key, value, scaling, out)
            sage_cos, sage_l1 = sampled_errors(query, key, value, scaling, sage.transpose(1, 2))
            assert 1 - ours_cos <= 1.1 * (1 - sage_cos) and ours_l1 <= 1.1 * sage_l1

        def sage_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
            out = sageattention.sageattn(query, key, value, tensor_layout="HND", is_causal=True, sm_scale=scaling)
            return out.transpose(1, 2), None

        AttentionInterface.register("sparse_sageattn_sharp", sage_attention)
        sage_logits = model(ids).logits
        expected = eager(ids).logits
    assert 1 - logits_cosine(logits, expected) <= 1.1 * (1 - logits_cosine(sage_logits, expected))


def test_generate_with_a_static_cache():
    """cache_implementation="static" (fixed buffers, kv_lens from the adapter): the same greedy tokens as the
    DynamicCache path, and each call as accurate as the contract on its written keys."""
    model, eager, calls = models("sparse_sageattn_gpu_static")
    ids = torch.randint(0, 1024, (1, 1500), generator=torch.Generator().manual_seed(3)).cuda()
    with torch.no_grad():
        kwargs = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
        dynamic = model.generate(ids, **kwargs)
        del calls[:]
        static = model.generate(ids, cache_implementation="static", **kwargs)
        ref = eager.generate(ids, **kwargs)
    assert torch.equal(static.sequences, dynamic.sequences)
    assert logits_cosine(static.logits[-1], ref.logits[-1]) >= LOGITS_COS_MIN
    assert {tuple(c[1].shape[2:3]) for c in calls} == {(1507,)}  # every call sees the whole fixed buffer
    prefill = [c for c in calls if c[0].shape[2] == 1500]
    # the prefill calls against the reference on the written keys only
    check_calls([(q, k[:, :, :1500], v[:, :, :1500], scaling, out) for q, k, v, scaling, out in prefill])


@pytest.mark.parametrize("v_format", ["native", "e4m3"])
def test_generate_with_an_int8_cache(v_format):
    """past_key_values=Int8Cache: the prompt through the plain call, then every step over INT8 keys; the last
    step's logits as close to eager's as the contract allows, and the cache holds every token."""
    from sparse_sageattn.torch.transformers import Int8Cache

    model, eager, calls = models("sparse_sageattn_gpu_int8")
    ids = torch.randint(0, 1024, (1, 1500), generator=torch.Generator().manual_seed(5)).cuda()
    with torch.no_grad():
        kwargs = dict(max_new_tokens=8, do_sample=False, return_dict_in_generate=True, output_logits=True)
        cache = Int8Cache(model.config, 1508, v_format)
        int8 = model.generate(ids, past_key_values=cache, **kwargs)
        ref = eager.generate(ids, **kwargs)
    assert logits_cosine(int8.logits[-1], ref.logits[-1]) >= (LOGITS_COS_MIN if v_format == "native"
                                                               else LOGITS_COS_MIN_E4M3)
    assert all(layer.cache.lens.tolist() == [1507] for layer in cache.layers)
    assert {k.dtype for _, k, _, _, _ in calls} == {torch.float16, torch.int8}  # prompt, then the INT8 steps
