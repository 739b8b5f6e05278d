"""The launch scripts of ``launch/``: the local one run for real (two processes on the tiny
demo, against one process), the cluster ones by what their ``--dry-run`` prints, and the shared
shard folder they rely on (read, never written)."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"


@pytest.mark.slow
def test_local_sh_runs_two_processes_with_one_writer_like_one_process(
    tiny_main_command, child_env, one_process_run, multiprocess_overrides, tmp_path
):
    """Also the stand-in for a read-only shard mount (a gcsfuse bucket, a shared disk): both
    processes run on an existing shard folder, which must be left as it was, every file's bytes
    and modification time, none added (a read-only mount would refuse any write; tests run as
    root, so permissions cannot show it)."""
    shards = tmp_path / "mount" / "shards"
    shutil.copytree(one_process_run / "shards", shards)  # what the one-process run built
    before = _snapshot(shards)
    workdir = tmp_path / "two"
    command = tiny_main_command(
        workdir,
        *multiprocess_overrides,
        f"--config.data.shards_dir={shards}",
    )
    assert command[:3] == [sys.executable, "-m", "lesionjax.main"]
    logs = tmp_path / "logs"
    out = subprocess.run(
        ["bash", str(LAUNCH / "local.sh"), "2", "--cpu", "--logs", str(logs), *command[3:]],
        env=child_env(2, PYTHON=sys.executable),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    log0, log1 = ((logs / f"proc{i}.log").read_text() for i in range(2))
    # Process 0 reports (and its log is also on the terminal); process 1 writes nothing of it.
    assert "report:" in log0 and "report:" not in log1
    assert "report:" in out.stdout
    records = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == sorted(set(train_steps)) and train_steps  # one writer
    order = [json.loads(x) for x in (workdir / "data_order.jsonl").read_text().splitlines()]
    assert all(len(r["index"]) == 2 for r in order)  # process 0's half of each batch of 4

    # The same job as one process with the same 4 devices in all.
    single = one_process_run
    one_order = [json.loads(x) for x in (single / "data_order.jsonl").read_text().splitlines()]
    assert [r["index"][:2] for r in one_order] == [r["index"] for r in order]
    one = json.loads((single / "eval" / "per_volume.json").read_text())
    two = json.loads((workdir / "eval" / "per_volume.json").read_text())
    assert [v["case_id"] for v in two] == [v["case_id"] for v in one] and one
    for a, b in zip(one, two, strict=True):
        assert b["dice"] == pytest.approx(a["dice"], abs=1e-3), a["case_id"]
    assert _snapshot(shards) == before


def test_local_sh_dry_run_prints_one_command_per_process():
    out = subprocess.run(
        ["bash", str(LAUNCH / "local.sh"), "3", "--dry-run", "--cpu", "--logs", "L",
         "--config", "configs/demo.py", "--workdir", "runs/a b"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert len(lines) == 3
    port = lines[0].split("LESIONJAX_COORDINATOR=127.0.0.1:")[1].split()[0]
    for i, line in enumerate(lines):
        assert f"LESIONJAX_COORDINATOR=127.0.0.1:{port} " in line
        assert f"LESIONJAX_NUM_PROCESSES=3 LESIONJAX_PROCESS_ID={i} " in line
        assert "-m lesionjax.main --config configs/demo.py --workdir runs/a\\ b" in line
        assert line.endswith(f"> L/proc{i}.log 2>&1")
        assert "CUDA_VISIBLE_DEVICES" not in line  # --cpu


def test_local_sh_refuses_a_missing_process_count():
    out = subprocess.run(["bash", str(LAUNCH / "local.sh"), "--config", "x"], capture_output=True)
    assert out.returncode == 2 and b"launch/local.sh N" in out.stderr


def test_slurm_dry_run_prints_the_srun_step_and_the_requeue():
    out = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--dry-run", "--config", "configs/demo.py"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    first = out.stdout.splitlines()[0]
    assert first.startswith("srun ") and first.rstrip().endswith(
        "-m lesionjax.main --config configs/demo.py"
    )
    assert "exit status 75" in out.stdout and "requeue" in out.stdout
    text = (LAUNCH / "slurm.sbatch").read_text()
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=8", "#SBATCH --gpus-per-task=1"):
        assert line in text  # the 2 nodes x 8 GPUs example


def test_slurm_outside_a_job_says_so():
    out = subprocess.run(
        ["bash", str(LAUNCH / "slurm.sbatch"), "--config", "x"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.returncode == 2 and "not inside a SLURM job" in out.stderr


def test_tpu_vm_dry_run_creates_copies_installs_and_runs_on_every_worker():
    out = subprocess.run(
        ["bash", str(LAUNCH / "tpu_vm.sh"), "--name", "ich", "--zone", "us-west4-a", "--spot",
         "--dry-run", "--", "--config", "configs/demo.py", "--workdir", "/mnt/runs/ich"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    steps = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert steps[0].startswith("+ gcloud compute tpus tpu-vm create ich --zone us-west4-a")
    assert "--spot" in steps[0]
    assert steps[1].startswith("+ git archive")
    assert " scp " in steps[2] and "--worker=all" in steps[2]
    pinned = next(
        line.split('"jax==')[1].split('"')[0]
        for line in (REPO / "pyproject.toml").read_text().splitlines()
        if '"jax==' in line
    )
    assert " ssh ich " in steps[3] and f"jax\\[tpu\\]=={pinned}" in steps[3]
    assert "--worker=all" in steps[3]
    assert "--worker=all" in steps[4] and "LESIONJAX_DISTRIBUTED=auto" in steps[4]
    assert "lesionjax.main\\ --config\\ configs/demo.py\\ --workdir\\ /mnt/runs/ich" in steps[4]


def test_tpu_vm_needs_a_name_and_a_zone():
    out = subprocess.run(
        ["bash", str(LAUNCH / "tpu_vm.sh"), "--dry-run"], capture_output=True, text=True
    )
    assert out.returncode == 2 and "--name and --zone are required" in out.stderr


def _snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    files = (p for p in sorted(folder.rglob("*")) if p.is_file())
    return {
        str(p.relative_to(folder)): (
            p.stat().st_mtime_ns,
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in files
    }
