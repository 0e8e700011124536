"""benchmarks/ncu_stalls.py on a small source-page CSV of the shape Nsight Compute writes: samples are split at
each setmaxnreg into partitions, shares and stall reasons are per partition."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import ncu_stalls  # noqa: E402

CSV = '''"Kernel Name","k",
"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)","stall_lg","stall_wait","stall_long_sb (Not Issued)"
"0x0","MOV R1, c[0x0][0x28]","2","0","0","2","0"
"0x10","USETMAXREG.DEALLOC.CTAPOOL 0x28","0","0","0","0","0"
"0x20","@!P2  BRA 0x20","10","10","0","1","9"
"0x30","USETMAXREG.TRY_ALLOC.CTAPOOL UP0, 0xe8","0","0","0","0","0"
"0x40","STG.E desc[UR14][R4.64], R77","6","6","5","1","0"
"0x50","MUFU.EX2 R189, R189","2","0","0","2","0"
'''


def test_partitions_opcodes_and_reasons(tmp_path):
    path = tmp_path / "source.csv"
    path.write_text(CSV)
    data = ncu_stalls.read(str(path))
    assert [d[0] for d in data] == [0, 1, 1, 2, 2, 2]
    lines = ncu_stalls.summarize(data, {1: "loader", 2: "consumer"}, top=2)
    text = "\n".join(lines)
    assert lines[0] == "samples: 20"
    assert "loader: 50.0% of all samples" in text and "consumer: 40.0% of all samples" in text
    consumer = lines[lines.index("consumer: 40.0% of all samples") + 1:][:3]
    assert consumer[0].split()[1:3] == ["STG=75.0%", "MUFU=25.0%"]
    assert "lg=62%" in consumer[1] and "wait=38%" in consumer[1]  # "(Not Issued)" columns are not counted again
    assert consumer[2].startswith("  STG 75.0%, LDG 0.0%")
    assert lines[-2].strip().startswith("50.00% loader @!P2  BRA") and "STG.E" in lines[-1]
