"""The plan layer, framework-free: launches bound by the kernels' parameter names (core_kernels/launch.py), the
three launches per attention call, the rules every launch keeps (core_kernels/alignment.py: no int argument
specialized), and core_kernels importing nothing but triton and the standard library."""
import ast
import pathlib
import sys

import pytest
import triton
import triton.language as tl

from sparse_sageattn.core_kernels import ArrayDesc, Launch, Ref, configs, contiguous_strides, kv_cache, predict
from sparse_sageattn.core_kernels.attention import make_plan
from sparse_sageattn.core_kernels.contract import BLOCK_M, BLOCK_N

CORE_KERNELS = pathlib.Path(__file__).resolve().parents[1] / "core_kernels"


def desc(shape, dtype="float16"):
    return ArrayDesc(shape, contiguous_strides(shape), dtype)


def attention_plan(mask=False, is_causal=False, smooth_k=True, return_lse=False, pv_dtype="fp16", heads_q=4,
                   heads_kv=2, n_q=300, n_k=2500):
    q, kv = desc((2, heads_q, n_q, 64)), desc((2, heads_kv, n_k, 64))
    mask_id = desc((heads_q, -(-n_q // 128), -(-n_k // 64)), "bool") if mask else None
    return make_plan(q, kv, kv, mask_id, is_causal, "HND", None, smooth_k, return_lse, pv_dtype=pv_dtype)


MODES = [dict(), dict(mask=True, is_causal=True, return_lse=True), dict(smooth_k=False, return_lse=True),
         dict(mask=True, smooth_k=False), dict(pv_dtype="fp8"), dict(smooth_k=False, pv_dtype="fp8")]


@pytest.mark.parametrize("mode", MODES)
def test_three_launches_split_by_program_id(mode):
    plan = attention_plan(**mode)
    assert [step.name for step in plan.launches] == ["sums_and_lists", "quantize", "attention"]
    assert plan.outputs == ("out", "lse")
    sums_and_lists, quantize, _ = plan.launches
    chunks, n_qb, n_kb = -(-2500 // configs.ROWS_PER_CHUNK), -(-300 // BLOCK_M), -(-2500 // BLOCK_N)
    fp8 = mode.get("pv_dtype") == "fp8"
    # K's sums and (FP8 P.V) V's maxima share the chunk programs
    chunk_programs = 2 * 2 * chunks if mode.get("smooth_k", True) or fp8 else 0
    lists = 4 if mode.get("mask") else 1  # a (Hq, Qb, Kb) mask: one list per head, shared over the batch
    assert sums_and_lists.args["chunk_programs"] == chunk_programs
    assert sums_and_lists.grid == (chunk_programs + lists * n_qb,)
    assert quantize.args["k_programs"] == 2 * 2 * n_kb and quantize.args["q_programs"] == 2 * 4 * n_qb
    assert quantize.grid == (2 * 2 * n_kb * (2 if fp8 else 1) + 2 * 4 * n_qb,)  # V blocks after Q's (FP8)
    assert (plan.buffers["v_fp8"].shape == (2 * 2 * n_kb * 64 * 64,)) == fp8
    assert sums_and_lists.args["mask_ptr"] == Ref("mask_id" if mode.get("mask") else "q")


def all_launches():
    plans = [attention_plan(**mode) for mode in MODES]
    plans.append(predict.make_plan(desc((1, 4, 300, 64)), desc((1, 2, 700, 64)), topk=0.5))
    return [step for plan in plans for step in plan.launches]


@pytest.mark.parametrize("step", all_launches(), ids=lambda step: step.name)
def test_launch_rules(step):
    kernel = step.kernel
    # a JITFunction keeps do_not_specialize; the interpreter's function keeps the decorator's arguments
    unspecialized = set(getattr(kernel, "kwargs", {}).get("do_not_specialize") or kernel.do_not_specialize)
    names = kernel.arg_names
    n_in, n_scalars, n_out = len(step.inputs), len(step.scalars), len(step.outputs)
    assert set(names[n_in + n_scalars + n_out:]) == set(step.constexprs)  # passed by keyword, any order
    for name, value in zip(names[n_in:n_in + n_scalars], step.scalars):
        assert isinstance(value, float) or name in unspecialized, name
    assert all(name.endswith("_ptr") for name in names[:n_in] + names[n_in + n_scalars:n_in + n_scalars + n_out])
    # the bound order is the kernel's: every argument by its own name, nothing left over
    order = [*step.inputs, *step.scalars, *step.outputs, *step.constexprs.values()]
    assert order == [step.args[n].name if isinstance(step.args[n], Ref) else step.args[n] for n in names]
    assert set(step.outputs) == set(step.writes)


@triton.jit
def _probe_kernel(x_ptr, n, y_ptr, BLOCK: tl.constexpr):
    pass


def _probe(args, writes=("y",)):
    return Launch("probe", _probe_kernel, (1,), args, writes, 4, 1)


def test_launch_binds_by_name_in_kernel_order():
    step = _probe(dict(BLOCK=16, y_ptr=Ref("y"), n=7, x_ptr=Ref("x")))
    assert (step.inputs, step.scalars, step.outputs, step.constexprs) == (("x",), (7,), ("y",), {"BLOCK": 16})


@pytest.mark.parametrize("args,writes,message", [
    (dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y")), ("y",), r"missing arguments \['BLOCK'\]"),
    (dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y"), BLOCK=16, z_ptr=Ref("z")), ("y",), r"unknown arguments \['z_ptr'\]"),
    (dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y"), BLOCK=Ref("b")), ("y",), r"constexpr BLOCK cannot be the array"),
    (dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y"), BLOCK=16), ("x",), r"input pointers, scalars, output pointers"),
    (dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y"), BLOCK=16), ("w",), r"writes \['w'\], which no argument passes"),
])
def test_launch_refuses_bad_bindings(args, writes, message):
    with pytest.raises(TypeError, match=message):
        _probe(args, writes)


def test_core_kernels_import_only_triton_and_the_standard_library():
    allowed = {"triton"} | set(sys.stdlib_module_names)
    for path in CORE_KERNELS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [node.module.split(".")[0]]
            else:
                continue
            assert set(roots) <= allowed, f"{path.relative_to(CORE_KERNELS)} imports {roots}"


@pytest.mark.parametrize("capability,head_dim,dtype,pv_dtype,kernel,warps,pairs", [
    ((9, 0), 128, "float16", "fp16", "attention_sm90_kernel", 4, 2),  # the Gluon kernel where it pays
    ((9, 0), 128, "bfloat16", "fp16", "attention_sm90_kernel", 4, 2),
    ((9, 0), 128, "float16", "fp8", "attention_kernel", 8, 2),  # it refuses FP8 P.V: the FP8 entry
    ((9, 0), 96, "float16", "fp16", "attention_kernel", 4, 1),  # it refuses a padded head dim
    ((9, 0), 64, "float16", "fp16", "attention_kernel", 4, 2),  # hd64: Triton is faster
    ((8, 0), 128, "float16", "fp16", "attention_kernel", 8, 1),
    (None, 128, "float16", "fp16", "attention_kernel", 4, 1),  # the interpreter
])
def test_table_picks_the_first_candidate_that_takes_the_call(capability, head_dim, dtype, pv_dtype, kernel, warps,
                                                             pairs):
    d = desc((1, 2, 256, head_dim), dtype)
    (*_, step) = make_plan(d, d, d, capability=capability, pv_dtype=pv_dtype).launches
    assert (step.kernel.__name__, step.num_warps, step.constexprs["KEY_BLOCKS_PER_STEP"]) == (kernel, warps, pairs)
    assert (step.maxnreg is not None) == (kernel == "attention_sm90_kernel")


def test_an_override_naming_a_kernel_that_refuses_the_call_says_why():
    d = desc((1, 2, 256, 96))
    with pytest.raises(ValueError, match=r"gluon_sm90: .*head_dim 64 or 128 only"):
        make_plan(d, d, d, capability=(9, 0), attention_override={"kernel": "gluon_sm90"})
    with pytest.raises(ValueError, match=r"needs sm_90"):
        make_plan(desc((1, 2, 256, 128)), desc((1, 2, 256, 128)), desc((1, 2, 256, 128)), capability=(8, 0),
                  attention_override={"kernel": "gluon_sm90"})


def test_global_scratch_is_a_plan_buffer_split_over_the_grid():
    from sparse_sageattn.core_kernels import Buffer, Plan, global_scratch_bytes
    from sparse_sageattn.core_kernels.attention import kernel_sm90

    d = desc((2, 4, 300, 128))
    gluon = make_plan(d, d, d, capability=(9, 0))
    step = gluon.launches[-1]
    assert step.kernel is kernel_sm90.attention_sm90_kernel and step.global_scratch == "descriptor_scratch"
    assert gluon.buffers["descriptor_scratch"] == Buffer((2 * 4 * 3 * kernel_sm90.DESCRIPTOR_SCRATCH_BYTES,), "uint8")
    assert global_scratch_bytes(gluon, step) == kernel_sm90.DESCRIPTOR_SCRATCH_BYTES
    triton_plan = make_plan(d, d, d, capability=(8, 0))  # the plain kernel builds no descriptors
    assert triton_plan.launches[-1].global_scratch is None and "descriptor_scratch" not in triton_plan.buffers
    with pytest.raises(TypeError, match=r"global scratch 'x' is also an argument"):
        Launch("probe", _probe_kernel, (1,), dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y"), BLOCK=16), ("y",), 4, 1,
               global_scratch="x")
    uneven = Launch("probe", _probe_kernel, (3,), dict(x_ptr=Ref("x"), n=7, y_ptr=Ref("y"), BLOCK=16), ("y",), 4, 1,
                    global_scratch="s")
    with pytest.raises(ValueError, match=r"a whole number per program"):
        global_scratch_bytes(Plan({"s": Buffer((256,), "uint8")}, (uneven,), ()), uneven)


def test_gluon_kernel_runs_a_persistent_grid_of_one_program_an_sm():
    """A program an SM whatever the tile count (no comparison of shapes a compiled graph would guard on), each
    with its descriptors; with kv_lens a program a tile (its V descriptor is cut at one row's valid keys); the
    plain kernel keeps a program a tile."""
    from sparse_sageattn.core_kernels.attention import kernel_sm90

    def attention(q_shape, capability=(9, 0), num_sms=132, kv_lens=None):
        d = desc(q_shape)
        plan = make_plan(d, d, d, capability=capability, num_sms=num_sms, kv_lens=kv_lens)
        return plan, plan.launches[-1]

    for q_shape in ((2, 4, 300, 128), (2, 32, 8192, 128)):  # 24 tiles, 4096 tiles
        plan, step = attention(q_shape)
        assert step.grid == (132,) and step.args["batch"] == 2
        assert plan.buffers["descriptor_scratch"].shape == (132 * kernel_sm90.DESCRIPTOR_SCRATCH_BYTES,)
    plan, step = attention((2, 4, 300, 128), kv_lens=desc((2,), "int32"))
    assert step.constexprs["HAS_KV_LENS"] and step.grid == (2 * 4 * 3,)
    assert plan.buffers["descriptor_scratch"].shape == (2 * 4 * 3 * kernel_sm90.DESCRIPTOR_SCRATCH_BYTES,)
    _, plain = attention((2, 4, 300, 128), capability=(8, 0))
    assert plain.kernel is not kernel_sm90.attention_sm90_kernel and plain.grid == (2 * 4 * 3,)
    assert "batch" not in plain.args


def test_gluon_launch_config_matches_the_kernel_structure():
    from sparse_sageattn.core_kernels.attention import kernel_sm90

    cfg = configs.VARIANT_DEFAULTS["gluon_sm90"]
    assert cfg.num_warps == kernel_sm90.NUM_WARPS and cfg.maxnreg == kernel_sm90.MAXNREG
    warps = kernel_sm90.NUM_WARPS + 4 * (kernel_sm90.CONSUMER_WARPGROUPS - 1) + kernel_sm90.LOADER_WARPS
    assert cfg.maxnreg * 32 * warps <= 65536  # the register file holds every warp at the cap


def decode_plan(n_q=1, heads_q=8, heads_kv=2, n_k=4096, batch=2, mask_shape=None, num_sms=132, **options):
    q, kv = desc((batch, heads_q, n_q, 128)), desc((batch, heads_kv, n_k, 128))
    mask_id = None if mask_shape is None else desc(mask_shape, "bool")
    return make_plan(q, kv, kv, mask_id, True, "HND", None, True, True, (9, 0), num_sms=num_sms, **options)


@pytest.mark.parametrize("n_q,mask_shape,heads_per_program,block_rows", [
    (1, None, 4, 16),  # a kv group's 4 heads in one tile
    (16, None, 4, 64),
    (48, None, 2, 128),  # 4 * 48 rows do not fit 128: two programs per kv head
    (64, (1, 1), 2, 128),  # a broadcast mask is one list: heads still share a tile
    (1, (8, 1, 64), 1, 16),  # a mask per head: one head per program
])
def test_short_queries_take_the_split_kv_kernel(n_q, mask_shape, heads_per_program, block_rows):
    plan = decode_plan(n_q, mask_shape=mask_shape)
    assert [step.name for step in plan.launches] == ["sums_and_lists", "split_kv", "combine"]
    split = plan.launches[1]
    assert split.constexprs["HEADS_PER_PROGRAM"] == heads_per_program
    assert split.constexprs["BLOCK_ROWS"] == block_rows
    programs = 2 * 2 * (4 // heads_per_program)
    splits = split.constexprs["SPLITS"]
    # at most programs_per_sm programs an SM, at most 64 splits
    assert splits == min(64, 132 * configs.SplitKVConfig.programs_per_sm // programs)
    assert split.grid == (programs * splits,)
    assert plan.buffers["partial_lse"].shape == (2 * 8 * splits * n_q,)
    assert plan.launches[2].grid == (2 * 8 * n_q,)  # one program a row


def test_split_kv_without_a_mask_forms_its_list_itself():
    plain, masked = decode_plan(), decode_plan(mask_shape=(1, 1))
    assert plain.launches[0].grid == (plain.launches[0].args["chunk_programs"],)  # K's sums only
    assert plain.buffers["block_indices"].shape == plain.buffers["block_counts"].shape == (1,)
    assert plain.launches[1].constexprs["DENSE_LIST"] and not masked.launches[1].constexprs["DENSE_LIST"]
    assert masked.launches[0].grid[0] == masked.launches[0].args["chunk_programs"] + 1  # one list: the mask's
    # nothing to prepare at all without K's sums
    q, kv = desc((2, 8, 1, 128)), desc((2, 2, 4096, 128))
    no_sums = make_plan(q, kv, kv, None, True, "HND", None, False, True, (9, 0), num_sms=132)
    assert [step.name for step in no_sums.launches] == ["split_kv", "combine"]


@pytest.mark.parametrize("v_format", kv_cache.V_FORMATS)
def test_cache_attention_takes_its_own_split_kv_entry(v_format):
    cache = {n: desc(b.shape, b.dtype) for n, b in kv_cache.cache_buffers(2, 2, 4096, 128, "bfloat16", v_format).items()}
    entry = configs.lookup((9, 0), 128, "bfloat16")
    expected = entry.split_kv_e4m3 if v_format == "e4m3" else entry.split_kv_int8
    for n_q, block_rows in ((1, 16), (16, 64)):
        plan = kv_cache.make_attend_plan(desc((2, 8, n_q, 128), "bfloat16"), cache, None, True, "HND",
                                         capability=(9, 0), num_sms=132)
        assert [step.name for step in plan.launches] == ["split_kv", "combine"]  # no mask: no lists, no sums
        assert set(plan.buffers) == {"out", "lse", "partial_out", "partial_lse"}  # no scratch left unwritten
        split = plan.launches[0]
        assert split.constexprs["K_INT8"] and split.constexprs["V_E4M3"] == (v_format == "e4m3")
        assert split.constexprs["BLOCK_ROWS"] == block_rows
        assert (split.num_warps, split.num_stages) == (expected.warps(block_rows, split.grid[0], 132),
                                                       expected.num_stages)
        assert split.args["v_exp_ptr"] == Ref("v_exp" if v_format == "e4m3" else "q")


@pytest.mark.parametrize("v_format", kv_cache.V_FORMATS)
def test_cache_attention_narrows_a_16_row_grid_that_then_fits_one_wave(v_format):
    """Splits for at most one wave of 2-warp programs (4 an SM), and 2 warps a program for a 16-row tile when the
    grid then fits one wave, else 4."""
    def split_warps(batch, n_k, num_sms=132, override=None):
        cache = {n: desc(b.shape, b.dtype)
                 for n, b in kv_cache.cache_buffers(batch, 8, n_k, 128, "bfloat16", v_format).items()}
        plan = kv_cache.make_attend_plan(desc((batch, 32, 1, 128), "bfloat16"), cache, None, True, "HND",
                                         capability=(9, 0), num_sms=num_sms, split_kv_override=override)
        return plan.launches[0].num_warps, plan.launches[0].grid[0]

    assert split_warps(1, 131072) == (2, 512)  # 8 programs x 64 splits (the most) <= 4 x 132
    assert split_warps(8, 32768) == (2, 512)  # 64 programs x 8 splits
    assert split_warps(1, 131072, num_sms=100) == (2, 400)  # 8 programs x 50 splits
    assert split_warps(1, 131072, num_sms=100, override={"splits": 64}) == (4, 512)  # 512 > 4 x 100
    assert split_warps(1, 131072, override={"num_warps": 4}) == (4, 512)  # an override's count is the launch's


def test_split_count_follows_the_sms_and_the_key_blocks():
    assert decode_plan(num_sms=4).launches[1].constexprs["SPLITS"] == 8  # 4 programs, 32 wanted
    # at most one split per key block; one split writes the output itself, without a combine
    single = decode_plan(n_k=60, num_sms=8)
    assert [step.name for step in single.launches] == ["sums_and_lists", "split_kv"]
    assert single.launches[1].constexprs["SPLITS"] == 1 and single.buffers["partial_out"].shape == (1,)
    assert decode_plan(split_kv_override={"splits": 3}).launches[1].constexprs["SPLITS"] == 3


def test_longer_queries_and_fp8_keep_the_attention_kernel():
    for plan in (decode_plan(n_q=65), decode_plan(n_q=16, pv_dtype="fp8")):
        assert [step.name for step in plan.launches] == ["sums_and_lists", "quantize", "attention"]
    with pytest.raises(ValueError, match=r"split-KV kernel \(split_kv_override, INT8 caches\) takes fp16 P.V"):
        decode_plan(n_q=16, pv_dtype="fp8", split_kv_override={})


def test_kv_lens_gives_each_batch_row_its_lists_and_reaches_every_kernel():
    lens = desc((2,), "int32")
    for plan in (decode_plan(kv_lens=lens, mask_shape=(1, 1)), decode_plan(n_q=300, kv_lens=lens)):
        for step in plan.launches[:-1] if plan.launches[-1].name == "combine" else plan.launches:
            assert step.args["kv_lens_ptr"] == Ref("kv_lens") and step.constexprs["HAS_KV_LENS"], step.name
        assert plan.launches[0].grid[0] - plan.launches[0].args["chunk_programs"] == 2 * -(-plan_n_q(plan) // 128)
    plain = decode_plan()
    assert plain.launches[1].args["kv_lens_ptr"] == Ref("q") and not plain.launches[1].constexprs["HAS_KV_LENS"]


def plan_n_q(plan):
    return plan.launches[0].args["n_q"]


@pytest.mark.parametrize("kv_lens,error,message", [
    (desc((2,), "int64"), TypeError, r"kv_lens must be an int32 array"),
    (desc((1,), "int32"), ValueError, r"kv_lens must have shape \(B,\) = \(2,\), got \(1,\)"),
    (ArrayDesc((2,), (2,), "int32"), ValueError, r"kv_lens must be contiguous, got stride 2"),
])
def test_bad_kv_lens_is_refused(kv_lens, error, message):
    with pytest.raises(error, match=message):
        decode_plan(kv_lens=kv_lens)
