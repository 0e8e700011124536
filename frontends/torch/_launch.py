"""The torch executor: turns any op's plan function (core_kernels) into a PyTorch call. No arithmetic here.

`PlanOp(qualname, plan_fn, array_names, n_outputs)` makes, from a function that maps the call's arguments to a
`Plan`:
  - a `torch.library.custom_op` (`torch.ops.<qualname>`) with a fake implementation that allocates the plan's
    outputs: what `torch.compile(fullgraph=True)` puts in its graph (opaque: Inductor re-emits the kernels it
    traces under `@triton.jit`, which a Gluon kernel is not) and what `torch.library.opcheck` checks;
  - an eager call with a small host cost, which the custom op runs too. The plan and its validation are cached
    per (shapes, strides, dtypes, devices, options, pointer alignment); scratch buffers come from one workspace
    allocation; each launch's compiled kernel is called directly through its launcher with the arguments
    prepared once, instead of through `JITFunction.run`, which binds and specializes ~25 arguments per launch on
    every call. CUDA graphs capture it (launches go to the current stream, allocations to the caching
    allocator).
`allocate`, `launch` and `run` are the same launches for benchmarks and tests that time or inspect one step.

A plan's aliased outputs (Plan.aliases: an array the op updates in place, such as a KV cache) are the caller's
tensors themselves: never allocated, never returned; the custom op declares them in `mutates_args`.

The direct launch reuses a kernel compiled for the same argument specialization: Triton specializes a pointer
on 16-byte alignment, so the alignment of each array the caller passes is part of the cache key; the plan fixes
every scalar (none is specialized, see core_kernels/alignment.py) and constexpr.
"""
import functools
import inspect
import operator

import torch
from triton import knobs
from triton.runtime import _allocation

from sparse_sageattn.core_kernels import INTERPRETED, ArrayDesc, global_scratch_bytes

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


@functools.lru_cache(maxsize=None)
def _device_sm_count(device_index: int):
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def sm_count(device: torch.device):
    """The SM count to size grids for, or None where the kernels run through the interpreter."""
    return None if device.type != "cuda" or INTERPRETED else _device_sm_count(device.index)


def fresh_outputs(plan):
    """The outputs a call returns: those that are not an argument updated in place."""
    return [name for name in plan.outputs if name not in plan.aliases]


def allocate(plan, arrays: dict, device) -> dict:
    """`arrays` plus one tensor per buffer of the plan, on `device` (an aliased output is its argument)."""
    env = dict(arrays)
    for name, buf in plan.buffers.items():
        if name in plan.aliases:
            env[name] = env[plan.aliases[name]]
        elif buf.fill is None:
            env[name] = torch.empty(buf.shape, dtype=DTYPES[buf.dtype], device=device)
        else:
            env[name] = torch.full(buf.shape, buf.fill, dtype=DTYPES[buf.dtype], device=device)
    return env


def launch(step, env: dict):
    """One launch of a plan through Triton's own launcher; returns the compiled kernel (None in the
    interpreter). A launch with global scratch gets its plan buffer from Triton's allocator hook (a context
    variable, set for this launch only)."""
    if step.global_scratch is None:
        return step.kernel[step.grid](*_positional(step, env), **step.options, **step.constexprs)
    scratch = env[step.global_scratch]

    def allocator(size, alignment, stream):
        if size > scratch.numel() or scratch.data_ptr() % alignment:
            raise ValueError(f"launch {step.name!r}: its kernel asks for {size} bytes of global scratch aligned "
                             f"to {alignment}; the plan's {step.global_scratch!r} holds {scratch.numel()}")
        return scratch

    token = _allocation._allocator.set(allocator)
    try:
        return step.kernel[step.grid](*_positional(step, env), **step.options, **step.constexprs)
    finally:
        _allocation._allocator.reset(token)


def _positional(step, env):
    """The non-constexpr arguments of a launch in signature order (core_kernels.launch.Launch)."""
    return [*(env[n] for n in step.inputs), *step.scalars, *(env[n] for n in step.outputs)]


def run(plan, arrays: dict, device) -> dict:
    """Allocate the plan's buffers and make its launches in order; returns `arrays` with the buffers."""
    env = allocate(plan, arrays, device)
    for step in plan.launches:
        launch(step, env)
    return env


class _CompiledPlan:
    """One cached eager call: the plan's workspace layout and, per launch, its compiled kernel and arguments.

    Per call, one list holds every argument value of every launch: the caller's array pointers, the workspace
    buffers' (base + offset), the returned outputs' pointers, then the constants (scalars, constexprs) of all
    launches; each launch picks its arguments from it with an itemgetter built once. Outputs the op does not
    return (n_returned) are workspace buffers too.
    """

    def __init__(self, plan, array_names, device, n_returned):
        self.plan = plan
        self.device = device
        self.device_index = device.index
        self.returned = [(name, plan.buffers[name]) for name in fresh_outputs(plan)[:n_returned]]
        returned = {name for name, _ in self.returned}
        offsets, size = {}, 0
        for name, buf in plan.buffers.items():
            if name in returned or name in plan.aliases:
                continue
            if buf.fill is not None:
                raise ValueError(f"scratch buffer {name!r} asks for a fill; the workspace is left uninitialised")
            offsets[name] = size
            size += -(-max(_numel(buf.shape) * DTYPES[buf.dtype].itemsize, 1) // WORKSPACE_ALIGN) * WORKSPACE_ALIGN
        self.workspace_bytes = size
        self.offsets = tuple(offsets.items())
        self.slot_of = {name: i for i, name in enumerate((*array_names, *offsets, *(n for n, _ in self.returned)))}
        self.n_slots = len(self.slot_of)  # the per-call values; the constants follow them
        self.slot_of.update((alias, self.slot_of[source]) for alias, source in plan.aliases.items())
        self.constants = []
        # per launch: (launch function, grid x, y, z, function, cooperative, pdl, global-scratch slot or None,
        # packed metadata, argument getter)
        self.kernels = None

    def first_call(self, arrays: dict):
        """Launch through Triton's launcher (which compiles), keeping each launch's compiled kernel."""
        outputs, env = self._allocate(arrays)
        kernels, n_slots = [], self.n_slots
        for step in self.plan.launches:
            compiled = launch(step, env)

            def constants(values):
                self.constants.extend(values)
                return range(n_slots + len(self.constants) - len(values), n_slots + len(self.constants))

            indices = [*(self.slot_of[n] for n in step.inputs), *constants(step.scalars),
                       *(self.slot_of[n] for n in step.outputs), *constants(list(step.constexprs.values()))]
            grid = tuple(step.grid) + (1,) * (3 - len(step.grid))
            launcher = compiled.run
            kernels.append((launcher.launch, *grid, compiled.function, launcher.launch_cooperative_grid,
                            launcher.launch_pdl, self._scratch_slot(step, compiled), compiled.packed_metadata,
                            operator.itemgetter(*indices)))
        self.kernels = kernels
        return outputs

    def _scratch_slot(self, step, compiled):
        """The value slot of the buffer passed as the launch's global scratch (None: it takes none). The direct
        launch passes it in the place Triton's launcher would fill from its allocator."""
        md = compiled.metadata
        if md.profile_scratch_size:
            raise ValueError(f"launch {step.name!r}: its kernel asks for profiler scratch, which plans never hold")
        if step.global_scratch is None:
            if md.global_scratch_size:
                raise ValueError(f"launch {step.name!r}: its kernel asks for {md.global_scratch_size} bytes of "
                                 "global scratch a program, and its plan gives none")
            return None
        if md.global_scratch_size > global_scratch_bytes(self.plan, step):
            raise ValueError(f"launch {step.name!r}: its kernel asks for {md.global_scratch_size} bytes of global "
                             f"scratch a program, the plan gives {global_scratch_bytes(self.plan, step)}")
        return self.slot_of[step.global_scratch]

    def _allocate(self, arrays):
        """The first call's buffers as tensors (views of the workspace), for Triton's launcher."""
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=self.device)
        outputs = [torch.empty(buf.shape, dtype=DTYPES[buf.dtype], device=self.device) for _, buf in self.returned]
        env = dict(arrays)
        for name, offset in self.offsets:
            buf = self.plan.buffers[name]
            view = workspace[offset:offset + _numel(buf.shape) * DTYPES[buf.dtype].itemsize]
            env[name] = view.view(DTYPES[buf.dtype]).view(buf.shape)
        env.update(zip((n for n, _ in self.returned), outputs))
        env.update((alias, env[source]) for alias, source in self.plan.aliases.items())
        return outputs, env

    def __call__(self, arrays):
        """arrays: the caller's tensors (None for an absent optional one), in the op's array order."""
        device = self.device
        outputs = [torch.empty(buf.shape, dtype=DTYPES[buf.dtype], device=device) for _, buf in self.returned]
        # held until the launches are queued: freed earlier, another thread's allocation could take it first
        workspace = torch.empty(self.workspace_bytes, dtype=torch.uint8, device=device)
        base = workspace.data_ptr()
        values = [0 if t is None else t.data_ptr() for t in arrays]
        values += [base + offset for _, offset in self.offsets]
        values += [t.data_ptr() for t in outputs]
        values += self.constants
        if torch._C._cuda_getDevice() != self.device_index:
            with torch.cuda.device(device):
                self._launch(values)
        else:
            self._launch(values)
        return outputs

    def _launch(self, values):
        stream = torch._C._cuda_getCurrentRawStream(self.device_index)
        for launch_fn, g0, g1, g2, function, cooperative, pdl, scratch, metadata, arguments in self.kernels:
            launch_fn(g0, g1, g2, stream, function, cooperative, pdl, None if scratch is None else values[scratch],
                      None, metadata, None, None, None, *arguments(values))


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _array_key(t):
    # get_device(): the CUDA index, -1 on the CPU (whose calls are never cached)
    return None if t is None else (t.shape, t.stride(), t.dtype, t.get_device(), t.data_ptr() % 16 == 0)


class PlanOp:
    """An op made of a plan function: `plan_fn(*args) -> Plan`, args = the op's arrays (tensors or None, named
    `array_names`, first), then its options (hashable). The plan function's parameter annotations and the number
    of its plan's outputs give the custom op's schema.

    `op(*args)` runs it: through the custom op while torch.compile traces, else eagerly (see the module doc).
    It returns the first `n_returned(*args)` of the plan's outputs that are not aliased (default: all) as a
    tuple; the eager call keeps the others in its workspace. `op.custom_op` is the registered op (all outputs;
    one: a tensor; none: None). `mutates`: the array names the plans alias (updated in place).
    """

    def __init__(self, qualname, plan_fn, array_names, n_outputs, n_returned=None, mutates=()):
        self.plan_fn = plan_fn
        self.array_names = tuple(array_names)
        self.n_outputs = n_outputs
        self.n_returned = n_returned or (lambda *args: n_outputs)
        self._cache = {}

        def unpack(outputs):
            return tuple(outputs) if n_outputs > 1 else outputs[0] if n_outputs else None

        def implementation(*args):
            return unpack(self.eager(n_outputs, *args))

        def fake(*args):
            plan = plan_fn(*args)
            return unpack([torch.empty(plan.buffers[n].shape, dtype=DTYPES[plan.buffers[n].dtype],
                                       device=args[0].device) for n in fresh_outputs(plan)])

        returns = tuple[(torch.Tensor,) * n_outputs] if n_outputs > 1 else torch.Tensor if n_outputs else None
        implementation.__signature__ = inspect.signature(plan_fn).replace(return_annotation=returns)
        implementation.__name__ = plan_fn.__name__
        self.custom_op = torch.library.custom_op(qualname, implementation, mutates_args=tuple(mutates))
        self.custom_op.register_fake(fake)

    def __call__(self, *args):
        n_returned = self.n_returned(*args)
        if torch.compiler.is_compiling():
            outputs = self.custom_op(*args)
            return outputs[:n_returned] if self.n_outputs > 1 else (outputs,) if self.n_outputs else ()
        return self.eager(n_returned, *args)

    def eager(self, n_returned, *args):
        """The first n_returned outputs for real tensors: the cached direct launches, or the first call of a key."""
        n = len(self.array_names)
        arrays = args[:n]
        options = args[n:]
        # options' types too: True == 1, but only True was validated
        key = (n_returned, *map(_array_key, arrays), *options, *map(type, options))
        compiled = self._cache.get(key)
        if compiled is not None and _plain_launch():
            return compiled(arrays)
        return self._eager_miss(key, n_returned, args)

    def _eager_miss(self, key, n_returned, args):
        plan = self.plan_fn(*args)  # validates: errors are raised here, before any launch
        arrays = dict(zip(self.array_names, args))
        device = args[0].device
        if device.type != "cuda" or INTERPRETED or not plan.launches or not _plain_launch():
            # the interpreter, an empty problem, or a launch hook (a profiler) that Triton's launcher must call
            env = run(plan, arrays, device)
            return [env[name] for name in fresh_outputs(plan)[:n_returned]]
        if len(self._cache) >= MAX_CACHED_CALLS:
            self._cache.clear()
        compiled = _CompiledPlan(plan, self.array_names, device, n_returned)
        with torch.cuda.device(device):
            outputs = compiled.first_call(arrays)
        self._cache[key] = compiled
        return outputs


def _plain_launch():
    """No launch hook is set: Triton's hooks are HookChains (empty by default) or, set by hand, functions."""
    enter, exit_ = knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook
    return ((enter is None or (type(enter) is knobs.HookChain and not enter.calls))
            and (exit_ is None or (type(exit_) is knobs.HookChain and not exit_.calls)))
