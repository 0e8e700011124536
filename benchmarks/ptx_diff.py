"""Compile the attention kernel of a source tree to PTX (Triton's CUDA backend, no GPU needed) and print a hash
per configuration, so two trees can be compared: `python benchmarks/ptx_diff.py --root /work/main` and the same
with `--root .`; equal hashes = identical PTX.

The launch (constexprs, warps, stages, argument types) comes from that tree's own `make_plan` for a small fp16
(or `--dtype bfloat16`) problem at the given capability, so what is compiled is what the frontends would launch.
Line info is disabled: it records source paths and line numbers, which differ between trees by construction and
say nothing about the code. `--attention key_blocks_per_step=2` passes make_plan's attention_override and `--pv-dtype fp8` its pv_dtype
(trees that have them).

Also printed per configuration: the shared memory the compile asks for and the distinct wgmma shapes in the PTX;
with `--sass`, the instruction mix of the unmasked loop as ptxas compiled it (the per-step work of one thread).
Run it in a process without TRITON_INTERPRET (it is removed here before Triton reads it).
"""
import argparse
import collections
import hashlib
import os
import re
import subprocess
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from source_tree import attention_make_plan, contiguous_strides, load_core_kernels  # noqa: E402

POINTER_TYPES = {"int8": "*i8", "uint8": "*u8", "int32": "*i32", "float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}


def attention_launch(ck, head_dim, is_causal, return_lse, capability, attention_override, pv_dtype,
                     dtype="float16"):
    shape = (1, 2, 256, head_dim)
    desc = ck.ArrayDesc(shape, contiguous_strides(ck, shape), dtype)
    extra = {"attention_override": attention_override} if attention_override else {}
    if pv_dtype != "fp16":
        extra["pv_dtype"] = pv_dtype
    plan = attention_make_plan(ck)(desc, desc, desc, None, is_causal, "HND", None, True, return_lse, capability, **extra)
    (launch,) = [step for step in plan.launches if step.name == "attention"]
    return plan, launch


def compile_attention(plan, launch, capability, dtype="float16"):
    fn = launch.kernel
    dtypes = {"q": dtype, "k": dtype, "v": dtype}
    dtypes.update({name: buf.dtype for name, buf in plan.buffers.items()})
    runtime = ([POINTER_TYPES[dtypes[n]] for n in launch.inputs]
               + ["i32" if isinstance(s, int) else "fp32" for s in launch.scalars]
               + [POINTER_TYPES[dtypes[n]] for n in launch.outputs])
    names = [p.name for p in fn.params if not p.is_constexpr]
    assert len(names) == len(runtime), (names, runtime)
    signature = dict(zip(names, runtime))
    signature.update({name: "constexpr" for name in launch.constexprs})
    attrs = {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in zip(names, runtime) if t[0] == "*"}
    source = ASTSource(fn, signature, launch.constexprs, attrs)
    target = GPUTarget("cuda", capability[0] * 10 + capability[1], 128 if capability[0] >= 9 else 32)
    return triton.compile(source, target=target, options=dict(num_warps=launch.num_warps,
                                                              num_stages=launch.num_stages))


SASS_INSTRUCTION = re.compile(r"/\*([0-9a-f]{4})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
SASS_LABEL = re.compile(r"^(\.L_x_\d+):")


def loop_opcodes(cubin, marker="IGMMA"):
    """Opcode counts of the first loop in the SASS (from a label to the branch back to it) with an opcode starting
    with `marker`; IGMMA (integer wgmma) finds the attention kernel's unmasked Q.K^T / softmax / P.V step."""
    tools = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([os.path.join(tools, "nvdisasm"), "-c", f.name], capture_output=True, text=True,
                              check=True).stdout
    instructions, label_at, pending = [], {}, []  # (opcode, branch label); label -> instruction index
    for line in sass.splitlines():
        label = SASS_LABEL.match(line.strip())
        if label:
            pending.append(label.group(1))
            continue
        found = SASS_INSTRUCTION.search(line)
        if found:
            label_at.update((name, len(instructions)) for name in pending)
            pending = []
            target = re.search(r"\((\.L_x_\d+)\)", found.group(3)) if found.group(2) == "BRA" else None
            instructions.append((found.group(2), target and target.group(1)))
    for end, (_, target) in enumerate(instructions):
        start = label_at.get(target)
        if start is not None and start < end:
            body = [opcode for opcode, _ in instructions[start:end + 1]]
            if any(opcode.startswith(marker) for opcode in body):
                return collections.Counter(body)
    raise ValueError(f"no loop with {marker} in this SASS")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    p.add_argument("--capability", default="90", help="e.g. 90 or 80")
    p.add_argument("--head-dims", default="64,128")
    p.add_argument("--attention", action="append", default=[], metavar="FIELD=INT",
                   help="an attention_override entry for make_plan (repeatable)")
    p.add_argument("--pv-dtype", default="fp16")
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"), help="of q, k and v")
    p.add_argument("--save", help="write each PTX to this folder")
    p.add_argument("--sass", action="store_true",
                   help="also print the opcodes (8 or more) of the unmasked attention loop in the SASS (sm_90)")
    args = p.parse_args(argv)
    triton.knobs.compilation.disable_line_info = True
    capability = (int(args.capability[:-1]), int(args.capability[-1]))
    override = {k: int(v) for k, v in (item.split("=", 1) for item in args.attention)}
    ck = load_core_kernels(args.root)
    print(f"root {os.path.abspath(args.root)}  sm_{args.capability}  triton {triton.__version__}  "
          f"override {override or '-'}")
    for head_dim in (int(h) for h in args.head_dims.split(",")):
        for is_causal in (False, True):
            for return_lse in (False, True):
                plan, launch = attention_launch(ck, head_dim, is_causal, return_lse, capability, override,
                                                args.pv_dtype, args.dtype)
                compiled = compile_attention(plan, launch, capability, args.dtype)
                ptx, shared = compiled.asm["ptx"], compiled.metadata.shared
                dtype = {"float16": "fp16", "bfloat16": "bf16"}[args.dtype]
                label = f"hd{head_dim} {dtype} pv={args.pv_dtype} causal={int(is_causal)} lse={int(return_lse)}"
                shapes = collections.Counter(re.findall(r"wgmma\.mma_async(?:\.sp)?\.sync\.aligned\.([\w.]+)", ptx))
                print(f"{label:<28} warps={launch.num_warps} stages={launch.num_stages} "
                      f"sha256={hashlib.sha256(ptx.encode()).hexdigest()[:16]} shared={shared} "
                      f"wgmma={dict(sorted(shapes.items())) or '-'}")
                if args.sass:
                    loop = loop_opcodes(compiled.asm["cubin"])
                    print("  loop SASS:", " ".join(f"{op}={n}" for op, n in loop.most_common() if n >= 8))
                if args.save:
                    os.makedirs(args.save, exist_ok=True)
                    with open(os.path.join(args.save, label.replace(" ", "_").replace("=", "") + ".ptx"), "w") as f:
                        f.write(ptx)


if __name__ == "__main__":
    main()
