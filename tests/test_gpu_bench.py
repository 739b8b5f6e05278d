"""benchmarks/gpu: the accelerator benchmark's script, run here in its CPU smoke mode."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "benchmarks/gpu/bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Device:
    platform = "gpu"

    def __init__(self, kind):
        self.device_kind = kind


@pytest.mark.parametrize(
    "kind, tflops",
    [
        ("NVIDIA H200", 989),
        ("NVIDIA H100 PCIe", 756),
        ("NVIDIA H100 80GB HBM3", 989),
        ("NVIDIA A100-SXM4-80GB", 312),
        ("NVIDIA A10G", 70),
        ("NVIDIA GeForce RTX 4090", None),
    ],
)
def test_the_bf16_peak_is_the_data_sheets_for_the_part(monkeypatch, kind, tflops):
    bench = _bench()
    import jax

    monkeypatch.setattr(jax, "devices", lambda: [_Device(kind)])
    _, peak = bench.device_info(bench.parse_args([]))
    assert peak == (tflops * 1e12 if tflops else None)


def test_the_summary_compares_lesionjax_bf16_with_the_faster_torch_row():
    bench = _bench()
    row = lambda part, variant, train, infer, **kw: dict(  # noqa: E731
        part=part, variant=variant, status="ok", train_img_s=train, infer_img_s=infer, **kw
    )
    rows = [
        row("2d", "jax-bf16", 300.0, 900.0, train_mfu=0.41),
        row("2d", "torch-amp", 100.0, 1000.0),
        row("2d", "torch-amp-compile", 200.0, 800.0),
        row("2d", "jax-fp32", 1000.0, 1000.0),  # fp32 is not the compared row
        row("3d", "jax-bf16", 2.0, 6.0),
        {"part": "3d", "variant": "torch-amp", "status": "failed: OutOfMemory"},
    ]
    # 2d: 300 / max(100, 200) and 900 / max(1000, 800); 3d has no torch row that ran.
    expected = "ratio_train2d=1.50 ratio_infer2d=0.90 mfu2d_bf16=0.410"
    assert bench.summary(rows, ["2d", "3d"]) == expected


def test_run_sh_cpu_smoke_runs_every_part_and_writes_its_results(tmp_path):
    variants = "jax-bf16"
    if importlib.util.find_spec("torch") is not None:
        variants += ",torch-amp"  # torch.compile's rows are left to the full smoke (~1 min)
    env = dict(os.environ, PYTHON=sys.executable)
    env.pop("XLA_FLAGS", None)
    result = subprocess.run(
        [
            "bash",
            str(ROOT / "benchmarks/gpu/run.sh"),
            "--cpu-smoke",
            "--no-pipeline",
            "--out",
            str(tmp_path),
            "--",
            "--variants",
            variants,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "bench.json").read_text())["rows"]
    assert [(r["part"], r["variant"]) for r in rows] == [
        (part, v) for part in ("2d", "3d") for v in variants.split(",")
    ]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["train_img_s"] > 0 and r["infer_img_s"] > 0
        # One smoke step of a freshly initialised U-Net on 10 % foreground: a Dice-type loss.
        assert 0.0 < r["loss"] < 2.0
    env_txt = (tmp_path / "env.txt").read_text()
    assert "error" not in env_txt and "grain" in env_txt
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("run.sh: ") and "status 0" in last
    if "torch-amp" in variants:
        assert "ratio_train2d=" in result.stdout and "ratio_infer3d=" in result.stdout


def test_run_sh_refuses_an_unknown_argument(tmp_path):
    result = subprocess.run(
        ["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--bogus"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: run.sh: unknown argument --bogus"
