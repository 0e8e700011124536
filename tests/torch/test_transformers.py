"""HF transformers adapter: a tiny randomly initialised Llama (built from a config, no downloads) running
attn_implementation="sparse_sageattn" in fp16 (CPU: the real kernels through the interpreter), checked per
attention call against the float64 reference at the contract's bounds and end to end against an fp32 eager copy
(on a GPU machine the same tests run on CUDA);
prefill, a decode step with a KV cache, right padding accepted, and every refusal the adapter documents.

The compiled forward (torch.compile(fullgraph=True)) is a GPU test: on CPU the interpreter launches the kernel
directly, which fake tensors cannot trace.
"""
import copy

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM
from transformers.masking_utils import (
    and_masks, bidirectional_mask_function, causal_mask_function, sliding_window_bidirectional_mask_function,
    sliding_window_causal_mask_function,
)

from sparse_sageattn.reference import COS_MIN, REL_L1_MAX, attention, cosine, rel_l1
from sparse_sageattn.torch import union_mask
from sparse_sageattn.torch.transformers import register, sparse_sageattn_attention, sparse_sageattn_mask

from hf_cases import recording, with_cache

# End-to-end bound on the logits. Each attention call meets the contract (cosine >= 0.9999, i.e. a relative error
# of about sqrt(2 * 1e-4) = 1.4%); two layers add at most about 3% to the logits of this shallow model, a cosine
# of about 0.9995. 0.999 leaves that margin twice over; a semantic error (wrong alignment, scale, head mapping)
# moves the logits far more (checked per call below, where the non-causal result fails the contract's bound).
LOGITS_COS_MIN = 0.999
# The same with e4m3 values in the KV cache: its format alone leaves a call at a cosine of about 0.9997 (the e4m3
# floor, tests/torch/test_kv_cache.py), a relative error of about sqrt(2 * 3e-4) = 2.4%; two layers about 5%, a
# cosine of about 0.99875; twice the margin again.
LOGITS_COS_MIN_E4M3 = 0.9975


def config(cls=LlamaConfig, **overrides):
    # initializer_range 0.1 (not 0.02) makes the attention logits large enough that the softmax is far from
    # uniform, so a wrong mask or alignment shows in the outputs.
    return cls(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, initializer_range=0.1,
               **overrides)


def models(implementation, device, cfg=None, cls=LlamaForCausalLM):
    """The fp16 model under test and an fp32 eager copy with the same weights (separate configs: from_config
    writes the implementation into the config it is given)."""
    cfg = config() if cfg is None else cfg
    torch.manual_seed(0)
    model = cls._from_config(copy.deepcopy(cfg), attn_implementation=implementation, dtype=torch.float16)
    eager = cls._from_config(copy.deepcopy(cfg), attn_implementation="eager", dtype=torch.float32)
    eager.load_state_dict(model.state_dict())
    return model.to(device).eval(), eager.to(device).eval()


def token_ids(batch, n, device, seed=1):
    return torch.randint(0, 256, (batch, n), generator=torch.Generator().manual_seed(seed)).to(device)


def logits_cosine(a, b):
    return cosine(a.double().cpu().numpy(), b.double().cpu().numpy())


def check_calls(calls, mask_id=None):
    """Each recorded call against the float64 attention of the same q, k, v under is_causal=True (bottom-right)."""
    assert calls
    for query, key, value, scaling, out in calls:
        q, k, v = (x.double().cpu().numpy() for x in (query, key, value))
        got = out.double().cpu().numpy().transpose(0, 2, 1, 3)  # (B, Nq, Hq, D) -> HND
        ref, _ = attention(q, k, v, None if mask_id is None else mask_id(q.shape[2], k.shape[2], "cpu").numpy(),
                           is_causal=True, sm_scale=scaling)
        assert cosine(got, ref) >= COS_MIN and rel_l1(got, ref) <= REL_L1_MAX
        if q.shape[2] > 1:  # the bound tells causal from non-causal attention on these inputs
            assert cosine(got, attention(q, k, v, sm_scale=scaling)[0]) < COS_MIN


def test_prefill_matches_exact_attention_and_eager(device):
    calls = recording("sparse_sageattn_prefill")
    model, eager = models("sparse_sageattn_prefill", device)
    ids = token_ids(2, 200, device)  # 2 query blocks, a partial key block, GQA 4:2, head dim 64
    with torch.no_grad():
        logits = model(ids).logits
        assert logits_cosine(logits, eager(ids).logits) >= LOGITS_COS_MIN
    assert len(calls) == 2 and all(c[4].shape == (2, 200, 4, 64) for c in calls)
    check_calls(calls)


def test_decode_step_with_kv_cache(device):
    calls = recording("sparse_sageattn_decode")
    model, eager = models("sparse_sageattn_decode", device)
    ids = token_ids(1, 151, device)
    with torch.no_grad():
        cache = model(ids[:, :150]).past_key_values
        eager_cache = eager(ids[:, :150]).past_key_values
        del calls[:]
        step = model(ids[:, 150:], **with_cache(model, cache)).logits  # Nq = 1 < Nk = 151
        assert logits_cosine(step, eager(ids[:, 150:], **with_cache(eager, eager_cache)).logits) >= LOGITS_COS_MIN
    assert [tuple(c[1].shape) for c in calls] == [(1, 2, 151, 64)] * 2
    check_calls(calls)


def test_right_padding_is_exact_for_real_tokens(device):
    register()
    model, eager = models("sparse_sageattn", device)
    ids, lengths = token_ids(2, 200, device), (200, 137)
    mask = (torch.arange(200)[None, :] < torch.tensor(lengths)[:, None]).to(device)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask.long()).logits
        expected = eager(ids, attention_mask=mask.long()).logits
    for row, n in enumerate(lengths):  # only real tokens: pad positions are meaningless in both
        assert logits_cosine(logits[row, :n], expected[row, :n]) >= LOGITS_COS_MIN


def test_block_mask_from_registration(device):
    def window_and_sink(n_q, n_k, device):
        return union_mask(n_q, n_k, window=64, sink=4, device=device)

    calls = recording("sparse_sageattn_window", mask_id=window_and_sink)
    model, _ = models("sparse_sageattn_window", device)
    with torch.no_grad():
        model(token_ids(1, 300, device))
    check_calls(calls, mask_id=window_and_sink)


def test_left_padding_refused(device):
    register()
    model, _ = models("sparse_sageattn", device)
    mask = torch.ones(2, 50, dtype=torch.long)
    mask[1, :7] = 0
    with torch.no_grad(), pytest.raises(ValueError, match="padding before real tokens"):
        model(token_ids(2, 50, device), attention_mask=mask.to(device))


def test_model_level_refusals(device):
    register()
    model, _ = models("sparse_sageattn", device)
    with torch.no_grad(), pytest.raises(ValueError, match="output_attentions"):
        model(token_ids(1, 20, device), output_attentions=True)
    mistral, _ = models("sparse_sageattn", device, config(MistralConfig, sliding_window=64), MistralForCausalLM)
    with torch.no_grad(), pytest.raises(ValueError, match="sliding window \\(64 tokens\\) cuts keys off"):
        mistral(token_ids(1, 100, device))


def mask_args(**overrides):
    args = dict(batch_size=2, q_length=10, kv_length=10, q_offset=0, kv_offset=0,
                mask_function=causal_mask_function, attention_mask=None, device="cpu")
    return {**args, **overrides}


def padding(*rows):
    return torch.tensor(rows, dtype=torch.bool)


@pytest.mark.parametrize("overrides", [
    {},
    {"attention_mask": padding([1] * 10, [1] * 10)},
    {"attention_mask": padding([1] * 10, [1] * 6 + [0] * 4)},  # right padding
    {"q_length": 1, "kv_length": 11, "q_offset": 10},  # decoding with a DynamicCache
    {"mask_function": bidirectional_mask_function, "attention_mask": padding([1] * 10, [1] * 10)},
    {"mask_function": sliding_window_causal_mask_function(10), "local_size": 10},  # the window cuts nothing
    {"mask_function": sliding_window_bidirectional_mask_function(10), "local_size": 10},
    # a full sliding DynamicCache: the window's last 3 keys and the new query
    {"mask_function": sliding_window_causal_mask_function(4), "local_size": 4, "q_length": 1, "kv_length": 4,
     "q_offset": 20, "kv_offset": 17},
])
def test_mask_function_accepts_what_the_kernel_does_exactly(overrides):
    assert sparse_sageattn_mask(**mask_args(**overrides)) is None


@pytest.mark.parametrize("overrides, match", [
    ({"attention_mask": padding([1] * 10, [0] * 3 + [1] * 7)}, "padding before real tokens"),
    # a right-padded batch decoding: the new token comes after pads
    ({"q_length": 1, "kv_length": 11, "q_offset": 10, "attention_mask": padding([1] * 11, [1] * 6 + [0] * 4 + [1])},
     "padding before real tokens"),
    ({"mask_function": bidirectional_mask_function, "attention_mask": padding([1] * 10, [1] * 6 + [0] * 4)},
     "bidirectional"),
    ({"q_offset": torch.tensor(0), "kv_length": 64, "mask_function": bidirectional_mask_function},
     "static cache only plain causal"),
    ({"q_offset": torch.tensor(0), "kv_length": 64, "mask_function": sliding_window_causal_mask_function(4),
      "local_size": 4}, "static cache only plain causal"),
    ({"kv_length": 8}, "do not end at the last query"),
    ({"kv_length": 10, "kv_offset": 2}, "do not end at the last query"),
    ({"mask_function": sliding_window_causal_mask_function(4), "local_size": 4}, "cuts keys off"),
    # a full sliding cache prefilling several queries: the first query's window would be exceeded by the later
    ({"mask_function": sliding_window_causal_mask_function(4), "local_size": 4, "q_length": 3, "kv_length": 6,
      "q_offset": 20, "kv_offset": 17}, "cuts keys off"),
    ({"mask_function": and_masks(causal_mask_function, lambda b, h, q, kv: kv != 3), "local_size": 64},
     "neither causal nor full"),
    ({"mask_function": and_masks(causal_mask_function, lambda b, h, q, kv: kv != 3)}, "packed sequences"),
])
def test_mask_function_refusals(overrides, match):
    with pytest.raises(ValueError, match=match):
        sparse_sageattn_mask(**mask_args(**overrides))


class Module(torch.nn.Module):
    is_causal = True


@pytest.mark.parametrize("kwargs, match", [
    ({"attention_mask": torch.zeros(1, 1, 8, 8)}, "attention_mask must be None"),
    ({"dropout": 0.1}, "dropout"),
    ({"output_attentions": True}, "output_attentions"),
    ({"softcap": 30.0}, "softcap"),
    ({"s_aux": torch.zeros(4)}, "s_aux"),
])
def test_attention_function_refusals(kwargs, match):
    q, k = torch.zeros(1, 4, 8, 64, dtype=torch.float16), torch.zeros(1, 2, 8, 64, dtype=torch.float16)
    kwargs = {"attention_mask": None, **kwargs}
    with pytest.raises(ValueError, match=match):
        sparse_sageattn_attention(Module(), q, k, k, **kwargs)


def test_register_arguments():
    with pytest.raises(ValueError, match="name"):
        register("")
    with pytest.raises(TypeError, match="mask_id"):
        register(mask_id=np.ones((1, 1), dtype=bool))


def test_static_cache_hands_the_written_key_count_to_the_kernel():
    lens = sparse_sageattn_mask(**mask_args(q_offset=torch.tensor(37), q_length=3, kv_length=64, batch_size=2))
    assert lens.dtype == torch.int32 and lens.tolist() == [40, 40]
    # generate() passes the counts back as the mask of a compiled step: they are not padding, nothing is read
    again = sparse_sageattn_mask(**mask_args(q_offset=torch.tensor(37), q_length=3, kv_length=64, batch_size=2,
                                             attention_mask=lens))
    assert torch.equal(again, lens)


def test_generate_with_a_static_cache(device):
    """cache_implementation="static": fixed-size buffers with unwritten (zero) slots, which kv_lens keeps out;
    prefill through the attention kernel, decode steps through the split-KV kernel. Greedy tokens and the final
    logits match eager fp32."""
    calls = recording("sparse_sageattn_static")
    model, eager = models("sparse_sageattn_static", device)
    ids = token_ids(1, 150, device)
    with torch.no_grad():
        kwargs = dict(max_new_tokens=4, do_sample=False, cache_implementation="static", return_dict_in_generate=True,
                      output_logits=True)
        ours, ref = model.generate(ids, **kwargs), eager.generate(ids, **kwargs)
    assert torch.equal(ours.sequences, ref.sequences)
    assert logits_cosine(ours.logits[-1], ref.logits[-1]) >= LOGITS_COS_MIN
    # fixed buffers of 150 + 4 - 1 keys in every call: the prefill (150 queries), then 3 decode steps, 2 layers each
    assert [(c[0].shape[2], c[1].shape[2]) for c in calls] == [(150, 153)] * 2 + [(1, 153)] * 6


def test_generate_runs_with_the_mask_generate_passes(device):
    """generate() passes an all-ones 2D mask and a DynamicCache; greedy tokens of this seed match eager fp32 (a
    smoke test of the path: the logits are checked above)."""
    register()
    model, eager = models("sparse_sageattn", device)
    ids = token_ids(1, 20, device)
    with torch.no_grad():
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False),
                           eager.generate(ids, max_new_tokens=4, do_sample=False))


@pytest.mark.parametrize("v_format", ["native", "e4m3"])
def test_generate_with_an_int8_cache(device, v_format):
    """past_key_values=Int8Cache: the prompt through the plain call (float keys), then each step over the cache's
    INT8 keys (int8 key tensors reach the attention function); the final logits match eager fp32, and every layer's
    cache holds prompt + generated tokens."""
    from sparse_sageattn.torch.transformers import Int8Cache

    calls = recording("sparse_sageattn_int8")
    model, eager = models("sparse_sageattn_int8", device)
    ids = token_ids(1, 150, device)
    with torch.no_grad():
        kwargs = dict(max_new_tokens=4, do_sample=False, return_dict_in_generate=True, output_logits=True)
        cache = Int8Cache(model.config, 154, v_format)
        ours, ref = model.generate(ids, past_key_values=cache, **kwargs), eager.generate(ids, **kwargs)
    assert torch.equal(ours.sequences, ref.sequences)
    assert logits_cosine(ours.logits[-1], ref.logits[-1]) >= (LOGITS_COS_MIN if v_format == "native"
                                                               else LOGITS_COS_MIN_E4M3)
    assert [(c[0].shape[2], c[1].dtype) for c in calls] == [(150, torch.float16)] * 2 + [(1, torch.int8)] * 6
    assert all(layer.cache.lens.tolist() == [153] for layer in cache.layers)
    with pytest.raises(NotImplementedError, match="beam search"):
        cache.layers[0].reorder_cache(torch.tensor([0], device=device))


def test_int8_cache_refuses_long_chunks_after_the_prompt(device):
    from sparse_sageattn.torch.transformers import Int8Cache

    register()
    model, _ = models("sparse_sageattn", device)
    with pytest.raises(ValueError, match="v_format must be one of"):
        Int8Cache(model.config, 512, "fp8")
    cache = Int8Cache(model.config, 512)
    with torch.no_grad():
        model(token_ids(1, 20, device), **with_cache(model, cache), use_cache=True)
        with pytest.raises(ValueError, match="at most 128 tokens a step"):
            model(token_ids(1, 129, device), **with_cache(model, cache), use_cache=True)
