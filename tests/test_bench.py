"""`videoiq bench quant|train|infer` print every figure with its setting (tiny sizes here; figures in the README)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench(*args):
    done = subprocess.run([sys.executable, "-m", "videoiq", "bench", *args], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_bench_quant_compares_each_width_with_a_plain_conv():
    out = _bench("quant", "--channels", "8", "--size", "8", "--batch", "2", "--repeat", "2", "--threads", "1")
    assert "device cpu" in out and "1 torch threads" in out and "8->8 channels" in out
    rows = {line.split("  ")[1].strip(): line for line in out.splitlines() if line.startswith("  ") and "x  " in line}
    assert {"plain nn.Conv2d", "PACT + QuantConv2d 2-bit", "QuantConv2d 4-bit weights"} <= set(rows)
    assert "1.00x" in rows["plain nn.Conv2d"] and "slowest quantized layer / plain conv:" in out


def test_bench_infer_prices_every_mix(capsys):
    out = _bench("infer", "--backbone", "ap_resnet_tiny", "--policy", "policy_mobilenet_v2_tiny", "--frames", "4",
                 "--size", "32", "--policy-size", "16", "--batch", "2", "--classes", "5", "--repeat", "1",
                 "--mixes", "32", "skip50")
    for case in ("dense fp", "dense all-precision", "policy only", "all 32-bit", "50% skipped, rest 32-bit"):
        assert f"  {case}  " in out
    assert "skipping 50% of frames cuts time by" in out and "peak MiB" in out


def test_bench_train_runs_every_stage_bare_and_on_ray(ray_local, tmp_path, capsys):
    from videoiq.bench.train import STAGES, bench_train

    result = bench_train("resnet_tiny", "policy_mobilenet_v2_tiny", frames=2, size=32, batch=2, steps=1, classes=5,
                         threads=1, ray_workers=(1,), storage=str(tmp_path))
    out = capsys.readouterr().out
    assert set(result["bare"]) == set(result["ray_1"]) == set(STAGES)
    assert all(v > 0 for v in result["bare"].values())
    assert "ap step / fp step (bare):" in out and "Ray Train (1 worker, 1 CPUs) / bare loop" in out
