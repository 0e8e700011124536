"""The torch executor: turns any op's plan function (core_kernels) into a PyTorch call. No arithmetic here.

`PlanOp(qualname, plan_fn, array_names)` makes, from a function that maps the call's arguments to a `Plan`:
  - a `torch.library.triton_op` (`torch.ops.<qualname>`): what `torch.compile(fullgraph=True)` traces into
    (through `wrap_triton`) and what `torch.library.opcheck` checks;
  - an eager call with a small host cost. The plan and its validation are cached per (shapes, strides, dtypes,
    devices, options, pointer alignment); scratch buffers come from one workspace allocation; each launch's
    compiled kernel is called directly through its launcher with the arguments prepared once, instead of through
    `JITFunction.run`, which binds and specializes ~25 arguments per launch on every call. CUDA graphs capture it
    (launches go to the current stream, allocations to the caching allocator).
`allocate`, `launch` and `run` are the same launches for benchmarks and tests that time or inspect one step.

The direct launch reuses a kernel compiled for the same argument specialization: Triton specializes a pointer
on 16-byte alignment, so the alignment of each array the caller passes is part of the cache key; the plan fixes
every scalar (none is specialized, see core_kernels/alignment.py) and constexpr.
"""
import functools
import inspect

import torch
from torch.library import triton_op, wrap_triton
from triton import knobs

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc

DTYPES = {
    "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
    "int8": torch.int8, "uint8": torch.uint8, "int32": torch.int32,
}
WORKSPACE_ALIGN = 256  # bytes: every scratch buffer starts 16-byte aligned (Triton's pointer specialization)
MAX_CACHED_CALLS = 512


def describe(t: torch.Tensor) -> ArrayDesc:
    return ArrayDesc(tuple(t.shape), tuple(t.stride()), str(t.dtype).removeprefix("torch."), str(t.device))


@functools.lru_cache(maxsize=None)
def _device_capability(device_index: int):
    return torch.cuda.get_device_capability(device_index)


def capability(device: torch.device):
    """(major, minor) to plan for, or None where the kernels run through the interpreter."""
    return None if device.type != "cuda" or INTERPRETED else _device_capability(device.index)


def allocate(plan, arrays: dict, device) -> dict:
    """`arrays` plus one tensor per buffer of the plan, on `device`."""
    env = dict(arrays)
    for name, buf in plan.buffers.items():
        if buf.fill is None:
            env[name] = torch.empty(buf.shape, dtype=DTYPES[buf.dtype], device=device)
        else:
            env[name] = torch.full(buf.shape, buf.fill, dtype=DTYPES[buf.dtype], device=device)
    return env


def launch(step, env: dict, traced: bool = False):
    """One launch of a plan through Triton's own launcher (wrap_triton'd when traced); returns the compiled
    kernel (None in the interpreter)."""
    kernel = wrap_triton(step.kernel) if traced else step.kernel
    return kernel[step.grid](*_positional(step, env), num_warps=step.num_warps, num_stages=step.num_stages,
                             **step.constexprs)


def _positional(step, env):
    """The non-constexpr arguments of a launch in signature order (core_kernels.launch.Launch)."""
    return [*(env[n] for n in step.inputs), *step.scalars, *(env[n] for n in step.outputs)]


def run(plan, arrays: dict, device, traced: bool = False) -> dict:
    """Allocate the plan's buffers and make its launches in order; returns `arrays` with the buffers."""
    env = allocate(plan, arrays, device)
    for step in plan.launches:
        launch(step, env, traced)
    return env


class _CompiledPlan:
    """One cached eager call: the plan's workspace layout and, per launch, its compiled kernel and arguments.

    Pointer arguments are slots of a per-call table: the caller's arrays, then the workspace buffers (base +
    offset), then the outputs.
    """

    def __init__(self, plan, array_names, device):
        self.plan = plan
        self.device = device
        self.outputs = [(name, plan.buffers[name]) for name in plan.outputs]
        offsets, size = {}, 0
        for name, buf in plan.buffers.items():
            if name in plan.outputs:
                continue
            if buf.fill is not None:
                raise ValueError(f"scratch buffer {name!r} asks for a fill; the workspace is left uninitialised")
            offsets[name] = size
            size += -(-max(_numel(buf.shape) * DTYPES[buf.dtype].itemsize, 1) // WORKSPACE_ALIGN) * WORKSPACE_ALIGN
        self.workspace_bytes = size
        self.offsets = offsets
        self.slot_of = {name: i for i, name in enumerate((*array_names, *offsets, *plan.outputs))}
        self.n_arrays = len(array_names)
        self.kernels = None  # per launch: (CompiledKernel, grid, args with pointer slots, [(position, slot)])

    def first_call(self, arrays: dict):
        """Launch through Triton's launcher (which compiles), keeping each launch's compiled kernel."""
        outputs, workspace, env = self._allocate(arrays)
        kernels = []
        for step in self.plan.launches:
            compiled = launch(step, env)
            args = [*_positional(step, env), *step.constexprs.values()]
            slots = [(i, self.slot_of[name]) for i, name in enumerate((*step.inputs, *(None,) * len(step.scalars),
                                                                       *step.outputs)) if name is not None]
            grid = tuple(step.grid) + (1,) * (3 - len(step.grid))
            kernels.append((compiled, grid, args, slots))
        self.kernels = kernels
        return outputs

    def _allocate(self, arrays):
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=self.device)
        outputs = [torch.empty(buf.shape, dtype=DTYPES[buf.dtype], device=self.device) if buf.fill is None else
                   torch.full(buf.shape, buf.fill, dtype=DTYPES[buf.dtype], device=self.device)
                   for _, buf in self.outputs]
        env = dict(arrays)
        for name, offset in self.offsets.items():
            buf = self.plan.buffers[name]
            view = workspace[offset:offset + _numel(buf.shape) * DTYPES[buf.dtype].itemsize]
            env[name] = view.view(DTYPES[buf.dtype])
        env.update(zip(self.plan.outputs, outputs))
        return outputs, workspace, env

    def __call__(self, arrays: list):
        """arrays: the caller's tensors (None for an absent optional one), in the op's array order."""
        outputs = [torch.empty(buf.shape, dtype=DTYPES[buf.dtype], device=self.device) for _, buf in self.outputs]
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=self.device)
        base = workspace.data_ptr()
        table = [0 if t is None else t.data_ptr() for t in arrays]
        table += [base + offset for offset in self.offsets.values()]
        table += [t.data_ptr() for t in outputs]
        if torch.cuda.current_device() != self.device.index:
            with torch.cuda.device(self.device):
                return self._launch(table, outputs)
        return self._launch(table, outputs)

    def _launch(self, table, outputs):
        stream = torch._C._cuda_getCurrentRawStream(self.device.index)
        for compiled, (g0, g1, g2), args, slots in self.kernels:
            args = list(args)
            for position, slot in slots:
                args[position] = table[slot]
            compiled.run(g0, g1, g2, stream, compiled.function, compiled.packed_metadata, None, None, None, *args)
        return outputs


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _array_key(t):
    return None if t is None else (t.shape, t.stride(), t.dtype, t.device, t.data_ptr() % 16 == 0)


class PlanOp:
    """An op made of a plan function: `plan_fn(*args) -> Plan`, args = the op's arrays (tensors or None, named
    `array_names`, first), then its options (hashable). The plan function's parameter annotations and the number
    of its plan's outputs give the custom op's schema.

    `op(*args)` runs it: through the custom op while torch.compile traces, else eagerly (see the module doc).
    It returns the plan's outputs as a tuple. `op.custom_op` is the registered op (one output: a tensor).
    """

    def __init__(self, qualname, plan_fn, array_names, n_outputs):
        self.plan_fn = plan_fn
        self.array_names = tuple(array_names)
        self._cache = {}

        def traced(*args):
            plan = plan_fn(*args)
            env = run(plan, dict(zip(self.array_names, args)), args[0].device, traced=not INTERPRETED)
            outputs = tuple(env[name] for name in plan.outputs)
            return outputs if n_outputs > 1 else outputs[0]

        returns = tuple[(torch.Tensor,) * n_outputs] if n_outputs > 1 else torch.Tensor
        traced.__signature__ = inspect.signature(plan_fn).replace(return_annotation=returns)
        traced.__name__ = plan_fn.__name__
        self.n_outputs = n_outputs
        self.custom_op = triton_op(qualname, traced, mutates_args=())

    def __call__(self, *args):
        if torch.compiler.is_compiling():
            outputs = self.custom_op(*args)
            return outputs if self.n_outputs > 1 else (outputs,)
        n = len(self.array_names)
        arrays = args[:n]
        options = args[n:]
        key = (*map(_array_key, arrays), *options, *map(type, options))  # True == 1, but only True validated
        compiled = self._cache.get(key)
        if compiled is not None and compiled.kernels is not None and _plain_launch():
            return tuple(compiled(arrays))
        return self._eager_miss(key, args)

    def _eager_miss(self, key, args):
        plan = self.plan_fn(*args)  # validates: errors are raised here, before any launch
        arrays = dict(zip(self.array_names, args))
        device = args[0].device
        if device.type != "cuda" or INTERPRETED or not plan.launches:
            env = run(plan, arrays, device)
            return tuple(env[name] for name in plan.outputs)
        if not _plain_launch():  # a launch hook (a profiler) is set: Triton's launcher calls it
            env = run(plan, arrays, device)
            return tuple(env[name] for name in plan.outputs)
        if len(self._cache) >= MAX_CACHED_CALLS:
            self._cache.clear()
        compiled = self._cache[key] = _CompiledPlan(plan, self.array_names, device)
        with torch.cuda.device(device):
            return tuple(compiled.first_call(arrays))


def _plain_launch():
    return knobs.runtime.launch_enter_hook is None and knobs.runtime.launch_exit_hook is None
