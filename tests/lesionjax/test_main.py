"""The main job's user errors: one ``error: <what>: <problem>`` line, a non-zero exit status, no
traceback, and nothing trained."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs"


def _run(args, env, cwd=None, timeout=300) -> tuple[int, list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "lesionjax.main", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in out.stderr, out.stderr
    return out.returncode, out.stderr.strip().splitlines()


@pytest.mark.parametrize(
    "args, line",
    [
        (
            [f"--config={CONFIGS / 'seg_cq500.py'}:ich-only"],
            f"error: {CONFIGS / 'seg_cq500.py'}:ich-only: unknown variant 'ich-only' (known: "
            "ich_only)",
        ),
        (
            [f"--config={CONFIGS / 'demo.py'}:tinny"],
            f"error: {CONFIGS / 'demo.py'}:tinny: unknown variant 'tinny' (known: tiny)",
        ),
        (
            [f"--config={CONFIGS / 'demo.py'}", "--config.train.nope=3"],
            f"error: --config.train.nope=3: {CONFIGS / 'demo.py'} has no config key 'nope'",
        ),
        (
            [f"--config={CONFIGS / 'demo.py'}", "--config.train.epochs=abc"],
            "error: --config.train.epochs=abc: invalid literal for int() with base 10: 'abc'",
        ),
        (
            ["--config=configs/absent.py"],
            "error: configs/absent.py: cannot load the config file ([Errno 2] No such file or "
            "directory: 'configs/absent.py')",
        ),
        (
            [f"--config={CONFIGS / 'demo.py'}", "--config.model.out_channels=2"],
            "error: model.out_channels=2: the segmentation losses and metrics are binary (one "
            "sigmoid output: lesion vs background); use model.out_channels=1",
        ),
    ],
    ids=["hyphen-variant", "typo-variant", "unknown-key", "bad-value", "no-file", "out-channels"],
)
def test_config_errors_are_one_line(args, line, child_env, tmp_path):
    code, err = _run([*args, f"--workdir={tmp_path / 'run'}"], child_env(1), cwd=REPO)
    assert code != 0
    assert err == [line]
    assert not (tmp_path / "run" / "shards").exists()


def _phantom_copy(tiny_phantom, tmp_path) -> Path:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_phantom, raw)
    return raw


def test_a_skipped_case_stops_the_main_job_with_its_name(
    tiny_phantom, tiny_main_command, child_env, tmp_path
):
    from data_prep.volumes import CaseError, load_nifti_ras

    raw = _phantom_copy(tiny_phantom, tmp_path)
    bad = sorted((raw / "images").glob("*.nii.gz"))[2]
    bad.write_bytes(bad.read_bytes()[:100])  # a truncated download
    with pytest.raises(CaseError) as reason:
        load_nifti_ras(bad)
    workdir = tmp_path / "run"
    cmd = tiny_main_command(workdir, f"--config.data.raw_dir={raw}")
    code, err = _run(cmd[3:], child_env(2))
    case = bad.name.removesuffix(".nii.gz")
    assert code == 1
    assert err == [
        f"skipped {case}: {reason.value}",
        f"error: {workdir / 'shards' / 'skipped.json'}: 1 case(s) could not be read (each named "
        "above); fix or remove them, or set --config.data.allow_skips=True to train on the others",
    ]
    assert not (workdir / "checkpoints").exists()


def test_batch_size_not_divisible_by_the_devices(tiny_main_command, child_env, tmp_path):
    cmd = tiny_main_command(tmp_path / "run", "--config.train.batch_size=3")
    code, err = _run(cmd[3:], child_env(2))
    assert code == 1
    assert err == [
        "error: train.batch_size=3: must be divisible by the 2 devices (each device takes an "
        "equal share of the batch)"
    ]


def test_fewer_training_slices_than_one_batch(tiny_main_command, child_env, tmp_path):
    workdir = tmp_path / "run"
    cmd = tiny_main_command(workdir, "--config.train.batch_size=1000")
    code, err = _run(cmd[3:], child_env(2))
    manifest = json.loads((workdir / "shards" / "manifest.json").read_text())
    train_volumes = [v for v in manifest["volumes"] if v["fold"] not in (0, 1)]
    n = sum(v["n_slices"] for v in train_volumes)
    assert code == 1
    assert err == [
        f"error: {workdir / 'shards' / 'manifest.json'}: {n} training slices (data.policy='all', "
        f"{len(train_volumes)} volumes) is less than one batch of train.batch_size=1000; lower "
        "the batch size or add data"
    ]


def test_a_dataset_without_masks_is_refused_for_segmentation(
    tiny_main_command, child_env, tmp_path
):
    """RSNA gives slice labels only: its all-zero masks must not be trained on (nor evaluated,
    where an empty prediction would score Dice 1)."""
    from data_prep.synthetic.phantom_layouts import write_layout

    raw = write_layout("rsna", tmp_path / "rsna", 5, seed=1, shape=(64, 64, 8))
    workdir = tmp_path / "run"
    cmd = tiny_main_command(
        workdir,
        f"--config.data.raw_dir={raw}",
        "--config.data.dataset=rsna",
        "--config.data.n_folds=5",
    )
    code, err = _run(cmd[3:], child_env(2))
    manifest = json.loads((workdir / "shards" / "manifest.json").read_text())
    ids = [v["case_id"] for v in manifest["volumes"] if v["fold"] != 0]  # train + val
    assert code == 1 and len(ids) == 4
    assert err == [
        f"error: {workdir / 'shards' / 'manifest.json'}: 4 of the 4 volumes for training and "
        f"validation have no lesion mask (has_mask: false; {', '.join(ids[:3])}, ...); "
        "segmentation needs masks, and dataset 'rsna' has none for them"
    ]
    assert not (workdir / "checkpoints").exists()


def test_slurm_tasks_outside_srun_fail_fast(child_env, tmp_path):
    """A batch script running python directly: sbatch's SLURM_NTASKS=2 but one process, which
    JAX would make wait for the second one (5 minutes) before failing."""
    env = child_env(
        1,
        SLURM_JOB_ID="77",
        SLURM_NTASKS="2",
        SLURM_PROCID="0",
        SLURM_LOCALID="0",
        SLURM_STEP_NODELIST="localhost",
        SLURM_STEP_NUM_NODES="1",
        SLURM_STEP_NUM_TASKS="1",
    )
    code, err = _run(
        [f"--config={CONFIGS / 'demo.py'}:tiny", f"--workdir={tmp_path / 'run'}"], env, timeout=60
    )
    assert code == 1
    assert err == [
        "error: SLURM_NTASKS=2: 2 processes are asked for, but this one was not started by srun "
        "as one of them (SLURM_STEP_NUM_TASKS=1); run the command through srun (srun python -m "
        "lesionjax.main ...), or unset SLURM_NTASKS for a single-process run"
    ]
