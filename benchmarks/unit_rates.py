"""Per-SM issue rates of the instructions one online-softmax step of the attention kernel executes per score
(benchmarks/ptx_diff.py --sass lists them): ex2 (MUFU.EX2), int32 -> fp32 (I2FP), fp32 -> fp16 -> fp32 (half
an F2FP pack, one HADD2.F32 and one FADD per value) and the fp32 add.

Each kernel runs a dependent chain of one operation on 64 independent values per thread (enough to hide its
latency) over a grid that fills every SM, so its time is the throughput of the unit that operation uses. Rates
are per clock per SM relative to the fp32 add, whose 128/clk/SM (sm_90) is the documented rate; the absolute
clock is not needed. GPU only:  python benchmarks/unit_rates.py [--json FILE]
"""
import argparse
import json

import torch
import triton
import triton.language as tl

from sparse_sageattn.core_kernels import Launch, Ref
from sparse_sageattn.torch import _launch

PER_THREAD = 64
NUM_WARPS = 4
STEPS = 4096


@triton.jit
def _chain_kernel(x_ptr, out_ptr, STEPS: tl.constexpr, BLOCK: tl.constexpr, OP: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    for _ in range(STEPS):
        if OP == "fadd":
            x = x + 1.0
        elif OP == "ex2":
            x = tl.math.exp2(x)
        elif OP == "i2f":  # the next conversion reads the float's bits as an int32: one I2FP per step
            x = x.to(tl.int32, bitcast=True).to(tl.float32)
        elif OP == "f16_round_trip":
            x = x.to(tl.float16).to(tl.float32) + 1.0
    tl.store(out_ptr + offs, x)


OPS = ("fadd", "ex2", "i2f", "f16_round_trip")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json")
    args = p.parse_args(argv)
    props = torch.cuda.get_device_properties(0)
    block = NUM_WARPS * 32 * PER_THREAD
    programs = props.multi_processor_count * 8
    x = torch.rand(programs * block, device="cuda")
    out = torch.empty_like(x)
    times, env = {}, {"x": x, "out": out}
    for op in OPS:
        step = Launch(op, _chain_kernel, (programs,),
                      dict(x_ptr=Ref("x"), out_ptr=Ref("out"), STEPS=STEPS, BLOCK=block, OP=op), ("out",), NUM_WARPS, 3)
        times[op] = triton.testing.do_bench(lambda s=step: _launch.launch(s, env), warmup=25, rep=200,
                                            return_mode="median")
    per_sm = programs * block * STEPS / props.multi_processor_count
    records = []
    for op in OPS:
        rate = 128 * times["fadd"] / times[op]
        records.append(dict(op=op, ms=times[op], per_clock_per_sm_vs_fadd128=rate,
                            values_per_ns_per_sm=per_sm / times[op] / 1e6))
        print(f"{op:<16} {times[op]:8.3f} ms  {rate:7.1f} per clock per SM (fadd = 128)")
    print(f"implied SM clock {per_sm / times['fadd'] / 1e6 / 128:.2f} GHz ({torch.cuda.get_device_name()})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(gpu=torch.cuda.get_device_name(), triton=triton.__version__, records=records), f,
                      indent=1)


if __name__ == "__main__":
    main()
