"""Gluon kernels through jax-triton 0.3.1: the compile-and-launch adapter the executor installs before lowering.

jax-triton 0.3.1 compiles every kernel as plain Triton (an `ASTSource` through the TTIR pipeline) and launches
`num_warps * 32` threads, the count it was asked for. A Gluon kernel needs `GluonASTSource` (its own pipeline),
and a warp-specialized one runs more warps than it asks for: the launch must use the compiled count
(`metadata.num_warps`). Its partitions' `setmaxnreg` also needs a register cap at launch (the `maxnreg` option),
which triton_call has no argument for: the executor passes it as the metaparam `MAXNREG_PARAM`, removed here
before the kernel sees its constexprs.

Global scratch (where a program builds its TMA descriptors): Triton appends a hidden global-scratch pointer to
every kernel's parameters, and jaxlib always passes a null pointer there. The executor instead passes the plan's
scratch buffer as one more array after the kernel's outputs, with the metaparam `GLOBAL_SCRATCH_PARAM` (its bytes
a program): that array is then the kernel's first parameter past its own, which is the hidden parameter's slot.
So it is left out of the signature compiled here, and the kernel may ask for at most that many bytes a program.

`install` wraps `jax_triton.triton_lib.get_or_create_triton_kernel` (the function jax-triton's lowering calls
per kernel): plain Triton kernels go to the original unchanged; Gluon kernels are specialized exactly as
jax-triton specializes any kernel (16-byte-aligned arrays, scalars equal to 1 as constexprs) and compiled with
`triton.compile`. It relies on that function's name, signature and return value and on
`triton_kernel_call_lib.TritonKernel(name, num_warps, num_ctas, shared, ptx, ttgir, capability)`, so it refuses
any jax-triton but the one it was written against.
"""
import types

import triton
from triton.backends.compiler import GPUTarget

SUPPORTED_JAX_TRITON = "0.3.1"
MAXNREG_PARAM = "sparse_sageattn_maxnreg"
GLOBAL_SCRATCH_PARAM = "sparse_sageattn_global_scratch_bytes"
# name of each Gluon kernel compiled here -> (launched warps, maxnreg, ptx): what the CPU tests inspect
COMPILED = {}


def install(jax_triton):
    """Make jax_triton's lowering compile and launch Gluon kernels; idempotent."""
    lib = jax_triton.triton_lib
    if getattr(lib.get_or_create_triton_kernel, "gluon_adapter", False):
        return
    if jax_triton.__version__ != SUPPORTED_JAX_TRITON:
        raise RuntimeError(
            f"sparse_sageattn: the Gluon kernels launch through an adapter written for jax-triton "
            f"{SUPPORTED_JAX_TRITON} (its get_or_create_triton_kernel); jax-triton {jax_triton.__version__} is "
            f"installed: install jax-triton=={SUPPORTED_JAX_TRITON}"
        )
    original = lib.get_or_create_triton_kernel

    def get_or_create_triton_kernel(backend_init_func, platform, fn, arg_dtypes, scalar_args, *, num_warps,
                                    num_stages, num_ctas, compute_capability, enable_fp_fusion, metaparams, dump):
        if not (hasattr(fn, "is_gluon") and fn.is_gluon()):
            return original(backend_init_func, platform, fn, arg_dtypes, scalar_args, num_warps=num_warps,
                            num_stages=num_stages, num_ctas=num_ctas, compute_capability=compute_capability,
                            enable_fp_fusion=enable_fp_fusion, metaparams=metaparams, dump=dump)
        return _gluon_kernel(lib, backend_init_func, fn, arg_dtypes, scalar_args, num_warps, num_stages, num_ctas,
                             compute_capability, enable_fp_fusion, dict(metaparams))

    get_or_create_triton_kernel.gluon_adapter = True
    lib.get_or_create_triton_kernel = get_or_create_triton_kernel


def _gluon_kernel(lib, backend_init_func, fn, arg_dtypes, scalar_args, num_warps, num_stages, num_ctas,
                  compute_capability, enable_fp_fusion, metaparams):
    from triton._C.libtriton import native_specialize_impl
    from triton.experimental.gluon._runtime import GluonASTSource

    maxnreg = metaparams.pop(MAXNREG_PARAM, None)
    scratch_bytes = metaparams.pop(GLOBAL_SCRATCH_PARAM, None)
    if scratch_bytes is not None:  # the last array is the global scratch, not a parameter of the kernel
        arg_dtypes = arg_dtypes[:-1]
    num_warps = 4 if num_warps is None else num_warps
    num_stages = 3 if num_stages is None else num_stages
    if compute_capability is None:
        compute_capability = lib.triton_kernel_call_lib.get_compute_capability(0)
    backend = backend_init_func(0, compute_capability)
    signature = {fn.arg_names[i]: dtype for i, dtype in enumerate(arg_dtypes)}
    # as jax-triton specializes: arrays 16-byte aligned, scalars not; scalars equal to 1 become constexprs
    alignments = [16] * len(arg_dtypes)
    for i, _, _ in scalar_args:
        alignments[i] = 0
    specialization = [
        native_specialize_impl(backend, types.SimpleNamespace(data_ptr=lambda a=a: a, dtype=t.removeprefix("*")),
                               False, True, a > 0)
        for t, a in zip(arg_dtypes, alignments)
    ]
    attrs = {(i,): backend.parse_attr(attr) for i, (_, attr) in enumerate(specialization)}
    constants = dict(metaparams)
    constants.update({k: None for _, k, v in scalar_args if v is None})
    constants.update({fn.arg_names[i]: 1 for i, _, v in scalar_args if v == 1})
    for name in constants:
        signature[name] = "constexpr"
    key = ("gluon", fn, tuple(signature.items()), tuple(specialization), tuple(constants.items()), num_warps,
           num_stages, num_ctas, compute_capability, enable_fp_fusion, maxnreg, scratch_bytes)
    kernel = lib._COMPILED_KERNEL_CACHE.get(key)
    if kernel is None:
        options = dict(num_warps=num_warps, num_stages=num_stages, num_ctas=num_ctas,
                       enable_fp_fusion=enable_fp_fusion)
        if maxnreg is not None:
            options["maxnreg"] = maxnreg
        compiled = triton.compile(GluonASTSource(fn, signature, constexprs=constants, attrs=attrs),
                                  target=GPUTarget("cuda", compute_capability, 32), options=options)
        metadata = compiled.metadata
        if metadata.profile_scratch_size or metadata.global_scratch_size > (scratch_bytes or 0):
            raise ValueError(f"sparse_sageattn: {metadata.name} asks for {metadata.global_scratch_size} bytes of "
                             f"global scratch a program (and {metadata.profile_scratch_size} of profiler scratch); "
                             f"its launch passes {scratch_bytes or 0}")
        if scratch_bytes is not None:
            # jax-triton passes every array and every scalar it did not make a constexpr (those equal to 1), in
            # order, and the scratch array after them: it must land on the kernel's first hidden parameter
            passed = len(arg_dtypes) - sum(1 for _, _, v in scalar_args if v == 1)
            hidden = _ptx_param_count(compiled.asm["ptx"], metadata.name) - passed
            if hidden != 2:  # Triton 3.6: global scratch, then profiler scratch
                raise RuntimeError(f"sparse_sageattn: {metadata.name} has {hidden} parameters past the {passed} "
                                   "jax-triton passes, where Triton 3.6 adds 2 (global and profiler scratch)")
        # the compiled warp count: a warp-specialized kernel launches its partitions' warps too
        kernel = lib.triton_kernel_call_lib.TritonKernel(metadata.name, metadata.num_warps, num_ctas, metadata.shared,
                                                         compiled.asm["ptx"], compiled.asm["ttgir"],
                                                         compute_capability)
        lib._COMPILED_KERNEL_CACHE[key] = kernel
        COMPILED[metadata.name] = (metadata.num_warps, maxnreg, compiled.asm["ptx"])
    if scratch_bytes is not None:  # the scratch array: jaxlib checks its 16-byte alignment at launch
        attrs[(len(arg_dtypes),)] = backend.parse_attr("D")
    return kernel, attrs


def _ptx_param_count(ptx: str, name: str) -> int:
    """The parameters of kernel `name`'s .entry in its PTX."""
    start = ptx.index(f".entry {name}(")
    return ptx[start:ptx.index(")", start)].count(".param ")
