"""The 3D cascade task: folds never train on their own held-out cases, the plan fills the
config, a tiny cascade end to end (priors out of fold, the table), killed in stage 2 and
resumed, and the INSTANCE config without its data."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lesionjax.core.errors import ConfigError
from lesionjax.tasks.cascade3d import cascade_table, compare_rows, fold_split, stage_config

REPO = Path(__file__).resolve().parents[3]


class _Shards:
    def __init__(self, folds):
        self.volumes = [{"case_id": f"c{i}", "fold": f} for i, f in enumerate(folds)]


def test_a_fold_never_trains_on_its_held_out_cases_or_the_test_fold():
    shards = _Shards([0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    seen_val = []
    for fold in (0, 1, 2):
        split = fold_split(shards, fold, (0, 1, 2), test_fold=3)
        folds = {v["case_id"]: v["fold"] for v in shards.volumes}
        assert all(folds[c] == fold for c in split["val"])
        assert all(folds[c] not in (fold, 3) for c in split["train"])
        assert all(folds[c] == 3 for c in split["test"])
        assert not set(split["train"]) & set(split["val"])
        seen_val += split["val"]
    # Every CV case is held out exactly once: each gets exactly one out-of-fold prediction.
    assert sorted(seen_val) == sorted(v["case_id"] for v in shards.volumes if v["fold"] != 3)


def _load(name: str, arg=None):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_cfg_{name}", REPO / "configs" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_the_plan_fills_what_the_config_leaves_empty():
    config = _load("instance2022_cascade.py")
    stage = {
        "patch": [160, 160, 32],
        "features": [32, 64, 128, 256, 320, 320],
        "pools": [[2, 2, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]],
        "batch_size": 3,
        "rotate_axial_only": True,
    }
    c = stage_config(config, stage, n_devices=2)
    assert tuple(c.data.patch) == (160, 160, 32)
    assert tuple(c.model.features) == (32, 64, 128, 256, 320, 320)
    assert c.model.pools[0] == (2, 2, 1) and c.train.batch_size == 4  # rounded up to 2 devices
    assert c.augment3d.axial_only == 1
    demo = _load("demo3d.py")  # its own narrower widths: the plan's first pools
    d = stage_config(demo, {**stage, "patch": [48, 48, 20]}, n_devices=1)
    assert tuple(d.model.features) == (8, 16, 32, 64) and len(d.model.pools) == 3


def test_stage_epochs_give_each_stage_its_own_number_of_epochs():
    config = _load("instance2022_cascade.py")
    stage = {"patch": [64, 64, 32], "features": [32, 64], "pools": [[2, 2, 2]],
             "batch_size": 2, "rotate_axial_only": False}  # fmt: skip
    assert stage_config(config, stage, 1, index=1).train.epochs == config.train.epochs
    config.cascade.stage_epochs = (3, 7)
    assert [stage_config(config, stage, 1, index=i).train.epochs for i in (0, 1)] == [3, 7]
    config.cascade.stage_epochs = (3,)  # one number for two stages
    with pytest.raises(ConfigError, match=r"cascade.stage_epochs=\(3,\): one positive number"):
        stage_config(config, stage, 1, index=0)


def test_stage_fg_fraction_gives_each_stage_its_own_foreground_fraction():
    config = _load("instance2022_cascade.py")
    stage = {"patch": [64, 64, 32], "features": [32, 64], "pools": [[2, 2, 2]],
             "batch_size": 2, "rotate_axial_only": False}  # fmt: skip
    default = config.data.fg_fraction
    assert [stage_config(config, stage, 1, index=i).data.fg_fraction for i in (0, 1)] == [
        default,
        default,
    ]
    config.cascade.stage_fg_fraction = (0.25, 1.0)
    assert [stage_config(config, stage, 1, index=i).data.fg_fraction for i in (0, 1)] == [0.25, 1.0]
    for bad in ((1.0,), (0.5, 1.5)):
        config.cascade.stage_fg_fraction = bad
        with pytest.raises(ConfigError, match=r"cascade.stage_fg_fraction=.*one fraction in"):
            stage_config(config, stage, 1, index=0)


def test_the_table_has_the_papers_rows():
    row = {"dice": 0.7, "hd": 20.0, "rvd": 0.2, "nsd": 0.5, "n": 3}
    rows = [
        {"stage": 1, "name": "lowres", "fold": 0, "oof": row, "test": row},
        {"stage": 1, "name": "lowres", "fold": "ensemble", "members": [0], "test": row},
        {"stage": 2, "name": "fullres", "fold": 0, "oof": row, "test": row},
        {"stage": 2, "name": "fullres", "fold": "ensemble", "members": [0], "test": row},
    ]
    text = cascade_table(rows, ("lowres", "fullres"))
    assert "| stage 1 only, fold 0 | 0.7000 | 20.0000 | 0.2000 | 0.5000 | 3 |" in text
    assert "| cascade, ensemble of folds [0] |" in text


def test_the_table_adds_the_rows_of_a_compared_run(tmp_path):
    one = {"dice": 0.6, "hd": 30.0, "rvd": 0.1, "nsd": 0.4, "n": 3}
    other = tmp_path / "one_window"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"data": {"windows": ["brain"]}}))
    (other / "cascade.json").write_text(json.dumps({"rows": [
        {"stage": 1, "name": "lowres", "fold": "ensemble", "members": [1], "test": one},
        {"stage": 2, "name": "fullres", "fold": 0, "oof": one, "test": one},
        {"stage": 2, "name": "fullres", "fold": "ensemble", "members": [0], "test": one},
    ]}))  # fmt: skip
    own = {"dice": 0.7, "hd": 20.0, "rvd": 0.2, "nsd": 0.5, "n": 3}
    rows = [{"stage": 2, "name": "fullres", "fold": "ensemble", "members": [2], "test": own}]
    text = cascade_table(rows, ("lowres", "fullres"), compare_rows([other]))
    assert "| cascade, ensemble of folds [2] | 0.7000 |" in text
    compared = "| 1 channel (brain): cascade, ensemble of folds [0] | 0.6000 | 30.0000 | 0.1000 |"
    assert compared in text
    assert "| 1 channel (brain): stage 1 only, ensemble of folds [1] |" in text
    # Out-of-fold rows stay this run's own.
    assert text.split("Out-of-fold")[1].count("| 2 (fullres) |") == 0
    with pytest.raises(ConfigError, match="missing_run.*cascade.json: not found"):
        compare_rows([tmp_path / "missing_run"])


def _command(workdir, *extra):
    return [
        sys.executable, "-m", "lesionjax.main",
        f"--config={REPO / 'configs' / 'demo3d.py'}:tiny", f"--workdir={workdir}",
        "--config.progress=False", "--config.data.n_folds=3", "--config.data.test_fold=2",
        "--config.cascade.cv_folds=(0, 1)", "--config.cascade.ensemble_size=1", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_a_tiny_cascade_killed_in_stage_2_resumes_and_completes(child_env, tmp_path):
    workdir = tmp_path / "cascade"
    env = child_env(1)
    first_checkpoint = workdir / "stage2_fullres" / "fold_0" / "checkpoints" / "3"
    command = _command(workdir, "--config.train.epochs=2")
    assert command[1:3] == ["-m", "lesionjax.main"]
    # SIGKILL right after stage 2's first checkpoint is committed (at this moment, not whenever
    # a poll from here would notice it: on a fast machine the whole run can finish first).
    out = subprocess.run(
        [command[0], str(REPO / "tests" / "kill_at_checkpoint.py"), *command[3:]],
        env={**env, "LESIONJAX_TEST_KILL": f"after:{first_checkpoint.relative_to(workdir)}"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == -signal.SIGKILL, out.stdout[-3000:] + out.stderr[-3000:]
    assert "killed after committing" in out.stdout
    stage1 = workdir / "stage1_lowres"
    before = {p: p.read_bytes() for p in stage1.glob("fold_*/metrics.jsonl")}
    assert len(before) == 2

    out = subprocess.run(
        _command(workdir, "--config.train.epochs=2"), env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"resumed from {first_checkpoint.parent} at step 3" in out.stdout
    # Stage 1 was not trained again; stage 2 fold 0 logged every step once.
    assert {p: p.read_bytes() for p in stage1.glob("fold_*/metrics.jsonl")} == before
    steps = [
        json.loads(line)["step"]
        for line in (workdir / "stage2_fullres/fold_0/metrics.jsonl").read_text().splitlines()
        if json.loads(line)["split"] == "train"
    ]
    assert sorted(set(steps)) == steps and steps[-1] == 6

    # Out-of-fold priors: one per case, on the full-resolution grid, from the fold that held
    # the case out (each fold's out-of-fold evaluation lists exactly its own cases).
    manifest = json.loads((workdir / "shards/3d_fullres/manifest.json").read_text())
    priors = stage1 / "priors"
    for v in manifest["volumes"]:
        prior = np.load(priors / f"{v['case_id']}.npy")
        assert prior.shape == tuple(v["shard_shape"][:3]) and prior.dtype == np.uint8
    for fold in (0, 1):
        oof = json.loads((stage1 / f"fold_{fold}/eval_oof/per_volume.json").read_text())
        folds = {v["case_id"]: v["fold"] for v in manifest["volumes"]}
        assert oof and {folds[v["case_id"]] for v in oof} == {fold}
    table = (workdir / "cascade.md").read_text()
    assert "stage 1 only, ensemble of folds" in table and "cascade, ensemble of folds" in table
    summary = json.loads((workdir / "stage2_fullres/ensemble/eval/summary.json").read_text())
    assert summary["grid"] == "native" and summary["n_volumes"] >= 1

    # The predict command runs the whole cascade on a raw scan (stage 1 on the low-resolution
    # grid, its probabilities as stage 2's prior) and maps the result back: the same voxels as
    # the ensemble's evaluation of that test case on its native grid.
    per_volume = json.loads((workdir / "stage2_fullres/ensemble/eval/per_volume.json").read_text())
    case = per_volume[0]["case_id"]
    image = workdir / "phantom" / "images" / f"{case}.nii.gz"
    out = subprocess.run(
        [sys.executable, "-m", "lesionjax.predict", "--model", str(workdir), "--input",
         str(image), "--output", str(tmp_path / "pred"), "--no-progress"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    import nibabel as nib

    mask = nib.load(tmp_path / "pred" / f"{case}_mask.nii.gz")
    source = nib.load(image)
    assert mask.shape == source.shape
    np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
    assert int(np.asarray(mask.dataobj).sum()) == per_volume[0]["pred_voxels"]


def test_instance_config_without_the_data_fails_fast_with_the_way_out(child_env, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lesionjax.main",
            f"--config={REPO / 'configs' / 'instance2022_cascade.py'}",
            f"--config.data.raw_dir={tmp_path / 'absent'}",
            f"--workdir={tmp_path / 'run'}",
        ],  # fmt: skip
        env=child_env(1),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode != 0 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert line.startswith("error: INSTANCE 2022 was not found")
    assert "configs/demo3d.py" in line
    assert not (tmp_path / "run" / "shards").exists()
