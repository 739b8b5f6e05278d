"""The experiment runner on the tiny label-efficient grid: every table row and figure, the
table's numbers equal to the means of the runs' own per-volume files, resuming skips all."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "experiments" / "label_efficient.py"


def _experiment():
    from lesionjax.experiment import load_config_file

    exp = load_config_file(f"{CONFIG}:tiny", REPO)
    exp.config_dir = str(CONFIG.parent)
    return exp


@pytest.fixture(scope="module")
def tiny_experiment(tmp_path_factory):
    """The command a user runs, on one CPU device (the suite's four fake devices removed): its
    two worker processes run the 24 jobs, then it writes the paper's outputs."""
    workdir = tmp_path_factory.mktemp("experiment") / "le"
    env = dict(os.environ)
    env["XLA_FLAGS"] = " ".join(
        f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f
    )
    command = [sys.executable, "-m", "lesionjax.experiment", "--config", f"{CONFIG}:tiny",
               "--workdir", str(workdir)]  # fmt: skip
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"report: {workdir / 'results' / 'experiment.md'}" in done.stdout
    return workdir, done.stdout


def test_every_row_and_figure_is_written(tiny_experiment):
    from lesionjax.experiment import METHODS

    workdir, stdout = tiny_experiment
    out = workdir / "results"
    assert "on 2 worker processes" in stdout and "[24/24]" in stdout
    rows = list(csv.DictReader((out / "table3.csv").open()))
    assert [r["method"] for r in rows] == [METHODS[k].name for k in _experiment().methods]
    assert len(rows) == 10
    figures = ["figure3_subtypes.png", "figure4_p_values.png"] + [
        f"figure5_tsne_{t}.png"
        for t in ("context_restoration", "global_contrastive", "local_contrastive", "binary",
                  "multilabel_bce", "multilabel_dice")
    ]  # fmt: skip
    for name in figures:
        assert (out / name).stat().st_size > 1000, name
    for name in ("experiment.md", "comparison/welch_tests.md", "comparison/table.md"):
        assert (out / name).is_file(), name
    report = (out / "experiment.md").read_text()
    assert all(r["method"] in report for r in rows)
    # the tiny grid's runs draw no figures of their own (eval.figures = False), and say so
    run_eval = workdir / "runs" / "mixed" / "fold0" / "eval"
    assert not list(run_eval.glob("*.png"))
    assert "Figures were not drawn" in (run_eval / "report.md").read_text()


def test_table3_is_the_mean_over_each_methods_per_volume_files(tiny_experiment):
    from lesionjax.experiment import METHODS

    workdir, _ = tiny_experiment
    rows = {r["method"]: r for r in csv.DictReader((workdir / "results" / "table3.csv").open())}
    exp = _experiment()
    for key in exp.methods:
        m = METHODS[key]
        sub = "eval_icm" if m.icm_of else "eval"
        per_volume = []
        for fold in exp.folds:
            path = workdir / "runs" / (m.icm_of or key) / f"fold{fold}" / sub / "per_volume.json"
            per_volume += json.loads(path.read_text())
        ich = [v for v in per_volume if v["gt_voxels"] > 0]
        for metric in ("dice_eps1", "precision_eps1", "recall_eps1"):
            for group, vols in (("all", per_volume), ("ich", ich)):
                values = np.array([v[metric] for v in vols], float)
                row = rows[m.name]
                assert float(row[f"{metric}_{group}_mean"]) == pytest.approx(values.mean())
                assert float(row[f"{metric}_{group}_std"]) == pytest.approx(values.std())
    # "+ ICM" rows come from the cavity-masked evaluation, not a copy of the plain one
    plain = json.loads((workdir / "runs/mixed/fold0/eval/per_volume.json").read_text())
    masked = json.loads((workdir / "runs/mixed/fold0/eval_icm/per_volume.json").read_text())
    assert [v["pred_voxels"] for v in masked] != [v["pred_voxels"] for v in plain]
    # transfer runs started from their pretext run
    report = json.loads((workdir / "runs/binary/fold0/init_from.json").read_text())
    assert report["source"] == str(workdir / "pretext" / "binary")


def test_running_again_runs_nothing(tiny_experiment, capsys):
    from lesionjax.experiment import plan_jobs
    from lesionjax.jobs import run_jobs

    workdir, _ = tiny_experiment
    exp = _experiment()
    jobs = plan_jobs(exp, Path(exp.config_dir), workdir)
    assert all(j.done.is_file() for j in jobs)
    capsys.readouterr()
    run_jobs(jobs, title="again", workers=2)
    out = capsys.readouterr().out
    assert f"{len(jobs)} jobs" in out and "to run: nothing" in out
    assert "[1/" not in out


def test_a_method_whose_base_is_missing_is_a_config_error():
    from lesionjax.core.errors import ConfigError
    from lesionjax.experiment import check_experiment

    exp = _experiment()
    exp.methods = ("mixed_icm",)
    with pytest.raises(ConfigError, match="re-evaluates 'mixed'"):
        check_experiment(exp)
    exp.methods = ("mixed", "nonsense")
    with pytest.raises(ConfigError, match="unknown"):
        check_experiment(exp)


def test_model_comparison_trains_both_models_on_one_split(tmp_path, shared_data):
    """The residual U-Net paper's comparison on the tiny MNI152 stroke analogue: both models on
    the same volumes, their table rows equal to their own per-volume files, both figures."""
    from lesionjax.experiment import load_config_file, run_experiment

    config = REPO / "configs" / "experiments" / "resunet_stroke.py"
    exp = load_config_file(f"{config}:tiny", REPO)
    exp.config_dir = str(config.parent)
    written = run_experiment(exp, tmp_path / "rs", command="test")
    out = tmp_path / "rs" / "results"
    for name in ("figure3_overlays_fold0.png", "figure4_training_fold0.png", "experiment.md"):
        assert (out / name).stat().st_size > 1000, name
    assert written["report"] == out / "experiment.md"
    runs = {n: tmp_path / "rs" / "runs" / d / "fold0" for n, d in
            (("U-Net", "u_net"), ("Residual U-Net", "residual_u_net"))}  # fmt: skip
    configs = {n: json.loads((d / "config.json").read_text()) for n, d in runs.items()}
    assert configs["U-Net"]["model"]["name"] == "unet2d"
    assert configs["Residual U-Net"]["model"]["name"] == "resunet2d"
    per_volume = {n: json.loads((d / "eval" / "per_volume.json").read_text())
                  for n, d in runs.items()}  # fmt: skip
    cases = [sorted(v["case_id"] for v in pv) for pv in per_volume.values()]
    assert cases[0] == cases[1] and cases[0]
    rows = {r["method"]: r for r in csv.DictReader((out / "fold0" / "table_all.csv").open())}
    for name, pv in per_volume.items():
        for metric in ("dice", "iou"):
            assert float(rows[name][f"{metric}_mean"]) == pytest.approx(
                np.mean([v[metric] for v in pv])
            )
    # the validation log has every curve of Figure 4
    val = [json.loads(line) for line in (runs["U-Net"] / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in val if r["split"] == "val"]
    assert val and all(k in val[-1] for k in ("auc", "iou", "precision", "recall", "dice"))
