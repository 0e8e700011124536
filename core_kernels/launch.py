"""The generic plan layer: what a frontend needs to run any op, with no framework in it.

An op's plan function takes `ArrayDesc`s of its arguments and returns a `Plan`: the scratch and output buffers to
allocate, the kernel launches to make in order, and which buffers are the op's outputs. A launch names every
argument of its kernel by the kernel's own parameter names (`Ref("q")` for an array, a number for a scalar or a
constexpr); `Launch` orders them by the kernel's signature and refuses a missing, extra or misplaced name, so a
kernel's signature is written once, in the kernel. The executors of the frontends (torch, JAX) only allocate the
buffers and launch `inputs, scalars, outputs, constexprs` -- both frontends therefore launch identical kernels
with identical scalars, which is what makes their outputs bitwise equal.

Kernel parameters must come in the order jax-triton launches them: input pointers, runtime scalars, output
pointers (jax-triton appends outputs after every positional argument), constexprs.
"""
import inspect
from dataclasses import dataclass, field

import triton.language as tl


@dataclass(frozen=True)
class ArrayDesc:
    """What a plan needs to know of one array: shape, strides in elements, dtype name, device label."""
    shape: tuple
    strides: tuple
    dtype: str
    device: str = ""


@dataclass(frozen=True)
class Buffer:
    shape: tuple
    dtype: str  # "int8", "uint8" (e4m3 bits), "int32", "float32", "float16" or "bfloat16"
    fill: float | None = None  # None: every element is written by a launch (allocate uninitialised)


@dataclass(frozen=True)
class Ref:
    """An argument that is an array: one of the op's arguments or a key of Plan.buffers."""
    name: str


def _is_constexpr(param: inspect.Parameter) -> bool:
    return param.annotation is tl.constexpr or getattr(param.annotation, "__name__", None) == "constexpr"


def kernel_params(kernel):
    """[(name, is_constexpr)] of a @triton.jit / @gluon.jit kernel, compiled or interpreted, in signature order."""
    fn = getattr(kernel, "fn", kernel)
    return [(p.name, _is_constexpr(p)) for p in inspect.signature(fn).parameters.values()]


@dataclass(frozen=True)
class Launch:
    """kernel[grid](*inputs, *scalars, *outputs, **constexprs) with num_warps / num_stages (and maxnreg, when
    set), bound by name.

    args: every parameter of `kernel` by name -> Ref(array) or a number. writes: the arrays it writes (the
    output pointers). inputs / scalars / outputs / constexprs are derived, in the kernel's parameter order.
    global_scratch: the plan buffer passed as Triton's hidden global-scratch pointer, for a kernel that builds
    TMA descriptors in it (the buffer's bytes / the grid's programs per program); None: the kernel needs none.
    """
    name: str
    kernel: object
    grid: tuple
    args: dict
    writes: tuple
    num_warps: int
    num_stages: int
    maxnreg: int | None = None
    global_scratch: str | None = None
    inputs: tuple = field(init=False, compare=False)  # array names
    scalars: tuple = field(init=False, compare=False)  # numbers
    outputs: tuple = field(init=False, compare=False)  # array names
    constexprs: dict = field(init=False, compare=False)

    @property
    def options(self) -> dict:
        """The launch options Triton's launcher takes besides the arguments."""
        options = dict(num_warps=self.num_warps, num_stages=self.num_stages)
        if self.maxnreg is not None:
            options["maxnreg"] = self.maxnreg
        return options

    def __post_init__(self):
        params = kernel_params(self.kernel)
        names = [name for name, _ in params]
        where = f"launch {self.name!r} of {getattr(self.kernel, '__name__', self.kernel)}"
        missing = [n for n in names if n not in self.args]
        extra = [n for n in self.args if n not in names]
        if missing or extra:
            raise TypeError(f"{where}: missing arguments {missing}, unknown arguments {extra}")
        if self.global_scratch is not None and self.global_scratch in {a.name for a in self.args.values()
                                                                       if isinstance(a, Ref)}:
            raise TypeError(f"{where}: global scratch {self.global_scratch!r} is also an argument")
        unwritten = [n for n in self.writes if n not in {a.name for a in self.args.values() if isinstance(a, Ref)}]
        if unwritten:
            raise TypeError(f"{where}: writes {unwritten}, which no argument passes")
        groups = {"input": [], "scalar": [], "output": [], "constexpr": []}
        order = []
        for name, constexpr in params:
            value = self.args[name]
            if constexpr:
                if isinstance(value, Ref):
                    raise TypeError(f"{where}: constexpr {name} cannot be the array {value.name!r}")
                kind = "constexpr"
            elif isinstance(value, Ref):
                kind = "output" if value.name in self.writes else "input"
            else:
                kind = "scalar"
            groups[kind].append((name, value))
            order.append(kind)
        ranks = [("input", "scalar", "output", "constexpr").index(kind) for kind in order]
        if ranks != sorted(ranks):
            raise TypeError(f"{where}: parameters must be input pointers, scalars, output pointers, constexprs; "
                            f"got {list(zip(names, order))}")
        object.__setattr__(self, "inputs", tuple(v.name for _, v in groups["input"]))
        object.__setattr__(self, "scalars", tuple(v for _, v in groups["scalar"]))
        object.__setattr__(self, "outputs", tuple(v.name for _, v in groups["output"]))
        object.__setattr__(self, "constexprs", dict(groups["constexpr"]))


@dataclass(frozen=True)
class Plan:
    """buffers: name -> Buffer (shape and dtype of every output and scratch array); launches: in order; outputs:
    the buffer names the op returns.

    aliases: output name -> the name of an argument array it updates in place (a cache). Such an output is not
    allocated: a torch executor passes the argument itself and returns nothing for it (the op mutates it); the
    JAX executor aliases the argument's buffer to the kernel's output and returns the updated array. Its kernel
    takes the array twice, as an input (what jax-triton passes as the aliased operand) and as the output it
    writes through.
    """
    buffers: dict
    launches: tuple
    outputs: tuple
    aliases: dict = field(default_factory=dict)


def global_scratch_bytes(plan: Plan, step: Launch) -> int:
    """Bytes of global scratch each program of `step` gets: its buffer split evenly over the grid."""
    buf = plan.buffers[step.global_scratch]
    programs = 1
    for g in step.grid:
        programs *= g
    size = 1
    for d in buf.shape:
        size *= d
    if buf.dtype != "uint8" or size % programs:
        raise ValueError(f"launch {step.name!r}: global scratch {step.global_scratch!r} must be uint8 bytes, a "
                         f"whole number per program of its grid {step.grid}; got {buf.dtype} of {size}")
    return size // programs


def contiguous_strides(shape):
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc = acc * n
    return tuple(reversed(strides))


def flat(*dims):
    """Scratch buffers are 1-D: a symbolic dim that happens to be 1 (one chunk, one block) would make
    torch.compile specialise on it and recompile for longer sequences; the kernels index them flat anyway."""
    size = 1
    for d in dims:
        size = size * d
    return (size,)


def next_pow2(x: int) -> int:
    return 1 << (x - 1).bit_length()
