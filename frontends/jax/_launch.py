"""The JAX executor: turns any op's plan function (core_kernels) into a jitted JAX call. No arithmetic here.

`PlanOp(name, array_names, plan_fn, default_impl, ...)` makes, from a function that maps the call's array descriptions and its
static options to a `Plan`:
  - a primitive whose CUDA lowering is one `jax_triton.triton_call` per launch of the plan -- the kernels,
    scalars and constexprs the torch executor launches, so the same bits. jax_triton is imported only in that
    lowering: importing a frontend module (and the other backends' path) never needs it;
  - a `lax.platform_dependent` choice between that primitive on CUDA and `default_impl` (a pure-JAX path with the
    same semantics) everywhere else;
  - `custom_vmap`: mapped axes are folded into the batch (one launch), by the op's `fold` rule;
  - `custom_vjp` refusing differentiation with the op's message, when it gives one.
An empty problem (a plan without launches) returns the plan's filled outputs without any kernel.

An output the plan aliases to an argument (Plan.aliases: a cache updated in place) is that argument's buffer:
each launch writing it passes jax-triton `input_output_aliases`, so XLA hands the kernel the argument's memory
(copied first unless the caller donates it, `jax.jit(..., donate_argnums=...)`) and returns it as the output.
"""
import functools
import os

import jax
import jax.extend as jex
import jax.numpy as jnp
from jax.interpreters import mlir

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc, contiguous_strides, global_scratch_bytes

from . import _gluon

CAPABILITY_ENV = "SPARSE_SAGEATTN_COMPUTE_CAPABILITY"
SM_COUNT_ENV = "SPARSE_SAGEATTN_SM_COUNT"


def describe(x) -> ArrayDesc:
    # JAX arrays are row-major contiguous; placement is JAX's business, so every array gets the same device label.
    return ArrayDesc(tuple(x.shape), contiguous_strides(tuple(x.shape)), str(x.dtype))


def compute_capability():
    """(major, minor) to compile for: SPARSE_SAGEATTN_COMPUTE_CAPABILITY ("90", "9.0") or the first GPU's."""
    value = os.environ.get(CAPABILITY_ENV)
    if not value:
        return _device_capability()
    major, dot, minor = value.strip().partition(".")
    if not dot:
        major, minor = major[:-1], major[-1:]
    if not (major.isdigit() and minor.isdigit() and len(minor) == 1):
        raise ValueError(f"sparse_sageattn: {CAPABILITY_ENV} must look like '90' or '9.0', got {value!r}")
    return int(major), int(minor)


@functools.lru_cache(maxsize=None)
def _device_capability():
    major, minor = jax.devices("gpu")[0].compute_capability.split(".")
    return int(major), int(minor)


def sm_count():
    """The SM count to size grids for: SPARSE_SAGEATTN_SM_COUNT, or the first GPU's (set both environment
    variables to lower for CUDA where there is no GPU)."""
    value = os.environ.get(SM_COUNT_ENV)
    if not value:
        return _device_sm_count()
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"sparse_sageattn: {SM_COUNT_ENV} must be a positive integer, got {value!r}")
    return int(value)


@functools.lru_cache(maxsize=None)
def _device_sm_count():
    return jax.devices("gpu")[0].core_count


def _import_jax_triton():
    saved = os.environ.get("TRITON_CACHE_DIR")
    import jax_triton

    # jax_triton sets TRITON_CACHE_DIR="" at import, which breaks every later Triton compile in the process.
    if saved is None:
        os.environ.pop("TRITON_CACHE_DIR", None)
    else:
        os.environ["TRITON_CACHE_DIR"] = saved
    return jax_triton


def triton_calls(plan, env: dict, capability) -> dict:
    """One jax_triton.triton_call per launch of `plan`, in order; returns `env` with the outputs added."""
    if INTERPRETED:
        raise RuntimeError("sparse_sageattn: TRITON_INTERPRET=1 is set, but the JAX CUDA path compiles the kernels "
                           "with jax-triton; unset TRITON_INTERPRET before importing sparse_sageattn")
    jax_triton = _import_jax_triton()
    env = dict(env)
    for step in plan.launches:
        # the global scratch, when the launch takes one, is the last array: the slot of Triton's hidden parameter
        written = (*step.outputs, *((step.global_scratch,) if step.global_scratch else ()))
        out_shape = [jax.ShapeDtypeStruct(plan.buffers[n].shape, jnp.dtype(plan.buffers[n].dtype)) for n in written]
        extra = {}
        if hasattr(step.kernel, "is_gluon") and step.kernel.is_gluon():
            _gluon.install(jax_triton)
            if step.maxnreg is not None:
                extra[_gluon.MAXNREG_PARAM] = step.maxnreg
            if step.global_scratch is not None:
                extra[_gluon.GLOBAL_SCRATCH_PARAM] = global_scratch_bytes(plan, step)
        elif step.maxnreg is not None or step.global_scratch is not None:
            raise ValueError(f"launch {step.name!r}: maxnreg and global scratch reach jax-triton only for Gluon "
                             "kernels")
        # indices among the array arguments, which jax-triton numbers in step.inputs order
        aliases = {step.inputs.index(plan.aliases[o]): j for j, o in enumerate(step.outputs) if o in plan.aliases}
        outputs = jax_triton.triton_call(
            *(env[n] for n in step.inputs), *step.scalars,
            kernel=step.kernel, out_shape=out_shape, grid=step.grid, name=f"sparse_sageattn_{step.name}",
            input_output_aliases=aliases,
            num_warps=step.num_warps, num_stages=step.num_stages,
            compute_capability=capability[0] * 10 + capability[1], **step.constexprs, **extra,
        )
        env.update(zip(step.outputs, outputs[:len(step.outputs)]))
    return env


def fold_batch(x, batched, axis_size):
    """x with the vmapped axis (leading, if batched) merged into its batch axis: (A, B, ...) -> (A*B, ...)."""
    if not batched:
        x = jnp.broadcast_to(x, (axis_size,) + x.shape)
    return x.reshape((axis_size * x.shape[1],) + x.shape[2:])


def fold_all(names, axis_size, in_batched, *arrays):
    """The default fold rule: every array's batch axis absorbs the mapped axis."""
    return [fold_batch(x, b, axis_size) for x, b in zip(arrays, in_batched)]


class PlanOp:
    """An op made of `plan_fn(descs, options, capability) -> Plan`: descs maps the names of the arrays a call
    passes (some of `array_names`: optional ones may be absent) to ArrayDescs; options is a hashable of the
    static arguments.

    `op(arrays, options)`, arrays a dict name -> array, returns the first
    `n_returned(options)` of the plan's outputs (default: all) as a tuple; call it inside jax.jit with `options`
    static. default_impl(*arrays, names=..., options=...) is the non-CUDA path, returning those outputs;
    fold(names, axis_size, in_batched, *arrays) returns the arrays with the vmapped axis merged into their batch
    axis (default fold_all), and the outputs' batch axis is split back; no_grad: the message jax.grad raises, or
    None when the caller stops gradients itself.
    """

    def __init__(self, name, array_names, plan_fn, default_impl, fold=fold_all, no_grad=None, n_returned=None):
        self.array_names = tuple(array_names)
        self.n_returned = n_returned
        self.plan_fn = plan_fn
        self.default_impl = default_impl
        self.fold = fold
        self.no_grad = no_grad
        self.primitive = jex.core.Primitive(name)
        self.primitive.multiple_results = True
        self.primitive.def_abstract_eval(self._abstract_eval)
        mlir.register_lowering(self.primitive, self._lower, platform="cuda")

    def plan(self, names, arrays, options, capability=None):
        return self.plan_fn({n: describe(x) for n, x in zip(names, arrays)}, options, capability)

    def _abstract_eval(self, *avals, names, options):
        plan = self.plan(names, avals, options)
        return [jax.core.ShapedArray(plan.buffers[n].shape, jnp.dtype(plan.buffers[n].dtype)) for n in plan.outputs]

    def _lower(self, ctx, *args, names, options):
        def launch_kernels(*arrays):
            capability = compute_capability()
            plan = self.plan(names, arrays, options, capability)
            env = triton_calls(plan, dict(zip(names, arrays)), capability)
            return [env[n] for n in plan.outputs]

        return mlir.lower_fun(launch_kernels, multiple_results=True)(ctx, *args)

    def __call__(self, arrays: dict, options):
        if not set(arrays) <= set(self.array_names):
            raise ValueError(f"{self.primitive.name}: arrays must be some of {self.array_names}, got {tuple(arrays)}")
        names = tuple(n for n in self.array_names if n in arrays)  # jit hands a dict over with its keys sorted
        values = tuple(arrays[n] for n in names)
        plan = self.plan(names, values, options)
        returned = plan.outputs[:self.n_returned(options)] if self.n_returned else plan.outputs
        if not plan.launches:  # an empty problem: the filled outputs (an aliased one: its argument), no kernel
            return tuple(arrays[plan.aliases[n]] if n in plan.aliases else
                         jnp.full(plan.buffers[n].shape, plan.buffers[n].fill, jnp.dtype(plan.buffers[n].dtype))
                         for n in returned)
        return self._batched(names, options, len(returned))(*values)

    @functools.lru_cache(maxsize=None)
    def _batched(self, names, options, n_returned):
        """f(*arrays) -> the returned outputs for one (names, options): backend choice, vmap folding, grad rule."""

        def kernels(*arrays):
            return tuple(self.primitive.bind(*arrays, names=names, options=options)[:n_returned])

        def default(*arrays):
            return tuple(self.default_impl(*arrays, names=names, options=options))

        @jax.custom_batching.custom_vmap
        def call(*arrays):
            return jax.lax.platform_dependent(*arrays, cuda=kernels, default=default)

        @call.def_vmap
        def _vmap_rule(axis_size, in_batched, *arrays):
            batch = arrays[0].shape[1] if in_batched[0] else arrays[0].shape[0]
            outputs = call(*self.fold(names, axis_size, in_batched, *arrays))
            return tuple(o.reshape((axis_size, batch) + o.shape[1:]) for o in outputs), (True,) * len(outputs)

        if self.no_grad is None:
            return call

        @jax.custom_vjp
        def differentiable(*arrays):
            return call(*arrays)

        def _refuse(*_):
            raise NotImplementedError(self.no_grad)

        differentiable.defvjp(_refuse, _refuse)
        return differentiable
