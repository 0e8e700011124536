"""Gluon kernels through jax-triton 0.3.1: the compile-and-launch adapter the executor installs before lowering.

jax-triton 0.3.1 compiles every kernel as plain Triton (an `ASTSource` through the TTIR pipeline) and launches
`num_warps * 32` threads, the count it was asked for. A Gluon kernel needs `GluonASTSource` (its own pipeline),
and a warp-specialized one runs more warps than it asks for: the launch must use the compiled count
(`metadata.num_warps`). Its partitions' `setmaxnreg` also needs a register cap at launch (the `maxnreg` option),
which triton_call has no argument for: the executor passes it as the metaparam `MAXNREG_PARAM`, removed here
before the kernel sees its constexprs.

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
           num_stages, num_ctas, compute_capability, enable_fp_fusion, maxnreg)
    kernel = lib._COMPILED_KERNEL_CACHE.get(key)
    if kernel is None:
        options = dict(num_warps=num_warps, num_stages=num_stages, num_ctas=num_ctas,
                       enable_fp_fusion=enable_fp_fusion)
        if maxnreg is not None:
            options["maxnreg"] = maxnreg
        compiled = triton.compile(GluonASTSource(fn, signature, constexprs=constants, attrs=attrs),
                                  target=GPUTarget("cuda", compute_capability, 32), options=options)
        metadata = compiled.metadata
        # the compiled warp count: a warp-specialized kernel launches its partitions' warps too
        kernel = lib.triton_kernel_call_lib.TritonKernel(metadata.name, metadata.num_warps, num_ctas, metadata.shared,
                                                         compiled.asm["ptx"], compiled.asm["ttgir"],
                                                         compute_capability)
        lib._COMPILED_KERNEL_CACHE[key] = kernel
        COMPILED[metadata.name] = (metadata.num_warps, maxnreg, compiled.asm["ptx"])
    return kernel, attrs
