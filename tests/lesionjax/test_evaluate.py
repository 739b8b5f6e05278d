"""``python -m lesionjax.evaluate``: the comparison files from synthetic results, the one-line
errors, and (slow) both commands end to end on a tiny trained run."""

import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lesionjax import evaluate
from lesionjax.eval import stats
from lesionjax.eval.metrics import volume_metrics
from lesionjax.eval.report import write_comparison

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    from matplotlib.image import imread

    assert path.is_file(), f"{path} was not written"
    assert path.read_bytes()[:8] == PNG_MAGIC
    pixels = imread(path)
    assert min(pixels.shape[:2]) >= 200 and pixels[..., :3].var() > 0, path


def per_volume(shift: int, n: int = 10, seed: int = 0) -> list[dict]:
    """Real metrics of a square lesion predicted ``shift`` voxels off; volumes 0, 1 lesion-free."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        gt = np.zeros((32, 32, 2), bool)
        if i >= 2:
            size = int(rng.integers(4, 10))
            gt[8 : 8 + size, 8 : 8 + size, :] = True
        pred = np.roll(gt, shift + int(rng.integers(0, 2)), axis=0)
        metrics = volume_metrics(pred, gt, spacing=(1.0, 1.0, 3.0))
        subtypes = "subdural" if i % 2 else "epidural;subdural"
        out.append(
            {"case_id": f"v{i}", "fold": 0, "subtypes": subtypes if i >= 2 else "", **metrics}
        )
    return out


def write_results(folder: Path, volumes: list[dict], split: str = "test") -> Path:
    """A run folder holding only its saved evaluation (no config, no checkpoint)."""
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "per_volume.json").write_text(json.dumps(volumes))
    (folder / "eval" / "summary.json").write_text(json.dumps({"split": split}))
    return folder


def read_csv(path: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def run_main(argv, capsys) -> tuple[int, str, str]:
    rc = evaluate.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ------------------------------------------------------------------------------ comparison


def test_write_comparison_tables_tests_and_figures(tmp_path):
    methods = {"A": per_volume(0), "B": per_volume(2, seed=1), "C": per_volume(4, seed=2)}
    written = write_comparison(tmp_path, methods, sources={"A": "runs/a"})
    keys = stats.metric_keys(*methods.values())
    assert keys[:4] == ["dice", "iou", "precision", "recall"] and "rvd" in keys
    assert "gt_ml" not in keys and "fold" not in keys

    for group in ("all", "lesion"):
        rows = read_csv(tmp_path / f"table_{group}.csv")
        assert [r["method"] for r in rows] == ["A", "B", "C"]
        for row in rows:
            vols = stats.group_volumes(methods[row["method"]], group)
            dice = np.array([v["dice"] for v in vols])
            assert int(row["n"]) == len(vols) == (10 if group == "all" else 8)
            assert float(row["dice_mean"]) == pytest.approx(dice.mean())
            assert float(row["dice_std"]) == pytest.approx(dice.std())
            # rvd is NaN on lesion-free volumes: counted separately.
            assert int(row["rvd_n"]) == 8

    tests = read_csv(tmp_path / "welch_tests.csv")
    assert len(tests) == 2 * 3 * len(keys)  # groups x pairs x metrics
    row = next(
        r for r in tests if (r["group"], r["metric"], r["a"], r["b"]) == ("all", "dice", "A", "C")
    )
    expected = scipy_stats.ttest_ind(
        [v["dice"] for v in methods["A"]], [v["dice"] for v in methods["C"]], equal_var=False
    )
    assert float(row["p"]) == pytest.approx(expected.pvalue, rel=1e-9)
    assert float(row["p"]) < 0.05

    report = (tmp_path / "report.md").read_text()
    assert "**A**: runs/a" in report and "(boxplots.png)" in report and "(p_values.png)" in report
    assert "| A | 10 |" in (tmp_path / "table.md").read_text()
    assert "| all | dice | A | C |" in (tmp_path / "welch_tests.md").read_text()
    assert "overlays" not in written  # none given
    for name in ("boxplots", "p_values"):
        assert_png(written[name])


def test_write_comparison_rejects_different_volumes(tmp_path):
    methods = {"A": per_volume(0), "B": per_volume(1)[:-1]}
    with pytest.raises(
        ValueError, match=r"different volumes \(10 vs 9; only in A: v9; only in B: -\)"
    ):
        write_comparison(tmp_path, methods)
    with pytest.raises(ValueError, match="metric 'nope'"):
        write_comparison(tmp_path, {"A": per_volume(0), "B": per_volume(1)}, metric="nope")


def test_compare_command_on_saved_results(tmp_path, capsys):
    a = write_results(tmp_path / "unet", per_volume(0))
    b = write_results(tmp_path / "resunet", per_volume(3, seed=1))
    out = tmp_path / "cmp"
    rc, stdout, err = run_main(["--compare", a, b, "--out", out, "--metric", "dice"], capsys)
    assert rc == 0, err
    assert f"report: {out / 'report.md'}" in stdout
    rows = read_csv(out / "table_all.csv")
    assert [r["method"] for r in rows] == ["unet", "resunet"]  # folder names by default
    report = (out / "report.md").read_text()
    # No checkpoints beside these results: the overlays are left out, with the reason.
    assert "Overlays: unet left out" in report and not (out / "overlays.png").exists()
    for name in ("boxplots.png", "p_values.png"):
        assert_png(out / name)
    assert {p.name for p in out.iterdir()} == {
        "report.md",
        "table.md",
        "table_all.csv",
        "table_lesion.csv",
        "welch_tests.csv",
        "welch_tests.md",
        "boxplots.png",
        "p_values.png",
    }


def test_compare_names_and_eval_folders(tmp_path, capsys):
    a = write_results(tmp_path / "x" / "run", per_volume(0))
    b = write_results(tmp_path / "y" / "run", per_volume(1))
    out = tmp_path / "cmp"
    # Eval folders work as well as run folders; --names labels the methods.
    rc, _, err = run_main(
        ["--compare", a / "eval", b, "--out", out, "--names", "base,new", "--n-overlays", "0"],
        capsys,
    )
    assert rc == 0, err
    assert [r["method"] for r in read_csv(out / "table_lesion.csv")] == ["base", "new"]
    rc, _, err = run_main(["--compare", a, b, "--out", out, "--n-overlays", "0"], capsys)
    assert rc == 0, err  # both folders are called "run": the paths name them
    assert [r["method"] for r in read_csv(out / "table_all.csv")] == [str(a), str(b)]


def test_compare_errors_are_one_line(tmp_path, capsys):
    a = write_results(tmp_path / "a", per_volume(0))
    b = write_results(tmp_path / "b", per_volume(1)[:8])
    out = tmp_path / "cmp"
    rc, _, err = run_main(["--compare", a, b, "--out", out], capsys)
    assert_one_line_error(rc, err, "different volumes", f"only in {a / 'eval'}: v8, v9;")
    assert not out.exists()

    c = write_results(tmp_path / "c", per_volume(1), split="val")
    rc, _, err = run_main(["--compare", a, c, "--out", out], capsys)
    assert_one_line_error(rc, err, "different splits")

    d = write_results(tmp_path / "d", per_volume(1))
    rc, _, err = run_main(["--compare", a, d, "--out", out, "--names", "x"], capsys)
    assert_one_line_error(rc, err, "--names gives 1 names for 2 runs")
    rc, _, err = run_main(["--compare", a, d, "--out", out, "--metric", "hd99"], capsys)
    assert_one_line_error(rc, err, "metric 'hd99'")

    empty = tmp_path / "empty"
    empty.mkdir()
    rc, _, err = run_main(["--compare", a, empty, "--out", out], capsys)
    assert_one_line_error(rc, err, f"{empty}: no eval/per_volume.json")
    (d / "eval" / "per_volume.json").write_text("[{")
    rc, _, err = run_main(["--compare", a, d, "--out", out], capsys)
    assert_one_line_error(rc, err, "per_volume.json: not valid JSON")


def test_workdir_errors_are_one_line(tmp_path, capsys):
    rc, _, err = run_main(["--workdir", tmp_path / "missing"], capsys)
    assert_one_line_error(rc, err, "missing: no such run folder")
    rc, _, err = run_main(["--workdir", tmp_path], capsys)
    assert_one_line_error(rc, err, "config.json: not found")

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
    try:
        import demo
    finally:
        sys.path.pop(0)
    (tmp_path / "config.json").write_text(demo.get_config("tiny").to_json_best_effort())
    rc, _, err = run_main(["--workdir", tmp_path], capsys)
    assert_one_line_error(rc, err, "checkpoints: no checkpoint")
    (tmp_path / "config.json").write_text('{"name": "x"}')
    rc, _, err = run_main(["--workdir", tmp_path], capsys)
    assert_one_line_error(rc, err, "not a lesionjax run config")


def test_3d_cascade_folders_are_refused_with_the_way_out(tmp_path, capsys):
    """A whole cascade and one fold of a stage: each a one-line error naming what does run
    them (the main job's table, lesionjax-predict), not a search for shards in the fold."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "configs"))
    try:
        import demo3d
    finally:
        sys.path.pop(0)
    config = demo3d.get_config("tiny").to_json_best_effort()
    cascade = tmp_path / "cascade"
    fold = cascade / "stage2_fullres" / "fold_0"
    (fold / "checkpoints" / "3").mkdir(parents=True)
    (fold / "config.json").write_text(config)
    (cascade / "config.json").write_text(config)
    (cascade / "cascade.json").write_text('{"rows": []}')
    rc, _, err = run_main(["--workdir", fold], capsys)
    assert_one_line_error(rc, err, "one fold of a 3D cascade stage")
    assert f"lesionjax-predict --model {cascade}" in err and "cascade.md" in err
    rc, _, err = run_main(["--workdir", cascade], capsys)
    assert_one_line_error(rc, err, "a whole 3D cascade")


# ------------------------------------------------------------------------------ features


@pytest.mark.parametrize("name", ["unet2d", "resunet2d"])
def test_bottleneck_features_are_the_pooled_deepest_level(name):
    import jax
    import optax
    from flax import nnx

    from lesionjax.eval.evaluate_volumes import make_features_fn
    from lesionjax.models.registry import build_model
    from lesionjax.train import step as step_lib

    # Jitted init: eager per-op initialization compiles dozens of tiny programs (slow on CPU).
    graphdef, init = step_lib.make_init_fn(
        lambda rngs: build_model(name, 2, 1, (4, 8, 16), rngs=rngs), optax.identity()
    )
    state = jax.jit(init)(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 16, 16, 2))

    @jax.jit
    def deepest(state, x):
        return nnx.merge(graphdef, state.params, state.model_state).bottleneck_features(x)

    deep = deepest(state, x)
    assert deep.shape == (3, 4, 4, 16)
    pooled = jax.jit(make_features_fn(graphdef))(state, x)
    assert pooled.shape == (3, 16, 1)
    np.testing.assert_allclose(pooled[..., 0], deep.mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)
    # Different slices, different features (the features depend on the input).
    assert float(abs(pooled[0] - pooled[1]).max()) > 0


def test_feature_slices_are_balanced_and_labelled(tiny_shards):
    from lesionjax.data.shards import ShardSet
    from lesionjax.eval.evaluate_volumes import select_feature_slices, slice_subtype_labels

    shards = ShardSet.load(tiny_shards)
    cases = [v["case_id"] for v in shards.volumes]
    lesion = {(v["case_id"], z) for v in shards.volumes for z in v["lesion_slices"]}
    slices = select_feature_slices(shards, cases, max_slices=20, seed=0)
    assert len(slices) == 20 and len(set(slices)) == 20
    assert sum(s in lesion for s in slices) == 10  # half lesion, half lesion-free
    assert slices == sorted(slices, key=lambda s: (cases.index(s[0]), s[1]))
    assert select_feature_slices(shards, cases, max_slices=20, seed=0) == slices
    everything = select_feature_slices(shards, cases, max_slices=10_000)
    assert len(everything) == sum(v["n_slices"] for v in shards.volumes)
    for v in shards.volumes:
        flags = slice_subtype_labels(shards, v["case_id"])
        labels = np.asarray(v["slice_labels"], bool)
        assert flags.shape == (v["n_slices"], 5)
        np.testing.assert_array_equal(flags, labels[:, 1:])  # columns in SLICE_LABELS order
        assert not flags[~labels[:, 0]].any()  # no subtype on a lesion-free slice


# ------------------------------------------------------------------------------ end to end


@pytest.fixture(scope="session")
def trained_run(tiny_run) -> Path:
    """The tiny demo trained once (1 epoch, ~20 s), with its main-job evaluation (conftest's
    ``tiny_run``; tests here may rewrite its eval folder)."""
    return tiny_run


def _without_nan(volumes: list[dict]) -> list[dict]:
    return [
        {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in vol.items()}
        for vol in volumes
    ]


@pytest.mark.slow
def test_reevaluate_command_reproduces_the_main_job(trained_run, child_env, capsys):
    main_job = json.loads((trained_run / "eval" / "per_volume.json").read_text())
    main_summary = json.loads((trained_run / "eval" / "summary.json").read_text())
    cmd = [sys.executable, "-m", "lesionjax.evaluate", f"--workdir={trained_run}", "--no-progress"]
    out = subprocess.run(cmd, env=child_env(2), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert f"report: {trained_run / 'eval' / 'report.md'}" in out.stdout

    summary = json.loads((trained_run / "eval" / "summary.json").read_text())
    steps = [int(p.name) for p in (trained_run / "checkpoints").iterdir() if p.name.isdigit()]
    assert summary["checkpoint_step"] == main_summary["checkpoint_step"] in steps
    # The demo config's NSD tolerance (one 1.8 mm voxel), recorded by both.
    assert summary["nsd_tolerance_mm"] == main_summary["nsd_tolerance_mm"] == 1.8
    assert summary["evaluated_by"] == "lesionjax.evaluate"
    # Same checkpoint, same volumes, same threshold: the same per-volume numbers.
    again = json.loads((trained_run / "eval" / "per_volume.json").read_text())
    assert _without_nan(again) == _without_nan(main_job)
    assert all("subtypes" in v for v in again)
    report = (trained_run / "eval" / "report.md").read_text()
    for name in ("training_curves", "overlays", "dice_boxplot", "tsne"):
        assert f"({name}.png)" in report
        assert_png(trained_run / "eval" / f"{name}.png")

    rc, _, err = run_main(["--workdir", trained_run, "--step", 99999], capsys)
    assert_one_line_error(rc, err, f"no checkpoint at step 99999 (have: {steps[0]}")


@pytest.mark.slow
def test_nsd_tolerance_comes_from_the_config(trained_run, tmp_path):
    # With a tolerance larger than the head, every boundary point is within it: NSD = 1 wherever
    # both masks have a surface (0.42 mm, the old fixed value, gives less on these 3.6 mm voxels).
    run = tmp_path / "wide"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["eval"]["nsd_tolerance_mm"] = 1000.0
    (run / "config.json").write_text(json.dumps(config))
    # A low threshold: the model trained for one epoch predicts lesions somewhere.
    summary = evaluate.reevaluate(run, threshold=0.02, tsne_slices=0, progress=False)
    assert summary["nsd_tolerance_mm"] == 1000.0
    per_volume = json.loads((run / "eval" / "per_volume.json").read_text())
    both = [v for v in per_volume if v["gt_voxels"] > 0 and v["pred_voxels"] > 0]
    assert both and all(v["nsd"] == 1.0 for v in both)


@pytest.mark.slow
def test_volumes_without_masks_are_refused_for_evaluation(trained_run, tmp_path, capsys):
    run = tmp_path / "unlabelled"
    shutil.copytree(trained_run, run)
    manifest_path = run / "shards" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    test_ids = [v["case_id"] for v in manifest["volumes"] if v["fold"] == 0]
    for v in manifest["volumes"]:
        v["has_mask"] = v["fold"] != 0  # the test fold as if it came without masks
    manifest_path.write_text(json.dumps(manifest))
    rc, _, err = run_main(["--workdir", run, "--no-progress"], capsys)
    shown = ", ".join(test_ids[:3]) + (", ..." if len(test_ids) > 3 else "")
    assert rc == 1
    assert err.splitlines() == [
        f"error: {manifest_path}: {len(test_ids)} of the {len(test_ids)} volumes for evaluation "
        f"(test) have no lesion mask (has_mask: false; {shown}); segmentation needs masks, "
        "and dataset 'pairs' has none for them"
    ]


@pytest.mark.slow
def test_compare_command_end_to_end(trained_run, tmp_path, capsys):
    # A second "method": the same model at a lower threshold, re-evaluated in its own folder.
    low = tmp_path / "low"
    shutil.copytree(trained_run, low)
    summary = evaluate.reevaluate(low, threshold=0.05, tsne_slices=0, progress=False)
    assert summary["threshold"] == 0.05 and summary["split"] == "test"
    assert (low / "eval" / "summary.json").is_file()

    out = tmp_path / "cmp"
    rc, _, err = run_main(
        ["--compare", trained_run, low, "--out", out, "--names", "t=0.5,t=0.05"], capsys
    )
    assert rc == 0, err
    report = (out / "report.md").read_text()
    assert "Overlays:" not in report, report  # no run was left out of the overlays
    assert "(overlays.png)" in report
    for name in ("boxplots", "p_values", "overlays"):
        assert_png(out / f"{name}.png")
    rows = {r["method"]: r for r in read_csv(out / "table_all.csv")}
    for name, run in (("t=0.5", trained_run), ("t=0.05", low)):
        volumes = json.loads((run / "eval" / "per_volume.json").read_text())
        pred = np.mean([v["pred_voxels"] for v in volumes])
        assert float(rows[name]["dice_mean"]) == pytest.approx(
            np.mean([v["dice"] for v in volumes])
        )
        rows[name]["pred"] = pred
    # A lower threshold never predicts fewer voxels.
    assert rows["t=0.05"]["pred"] >= rows["t=0.5"]["pred"]

    partial = tmp_path / "partial"
    volumes = json.loads((low / "eval" / "per_volume.json").read_text())
    write_results(partial, volumes[1:])
    rc, _, err = run_main(["--compare", trained_run, partial, "--out", tmp_path / "x"], capsys)
    assert_one_line_error(rc, err, "different volumes")


@pytest.mark.slow
def test_compare_leaves_out_runs_it_cannot_restore_and_says_why(trained_run, tmp_path, capsys):
    """A run whose shards are gone is left out of the overlays with the reason; a run whose
    evaluated checkpoint was deleted since is re-predicted at its best step, with a note."""
    no_shards, moved = tmp_path / "no_shards", tmp_path / "moved"
    for run in (no_shards, moved):
        shutil.copytree(trained_run, run)
    shutil.rmtree(no_shards / "shards")
    summary_path = moved / "eval" / "summary.json"
    summary = json.loads(summary_path.read_text())
    evaluated = summary["checkpoint_step"]
    summary["checkpoint_step"] = 99999  # a step that is no longer saved
    summary_path.write_text(json.dumps(summary))
    out = tmp_path / "cmp"
    rc, _, err = run_main(
        ["--compare", trained_run, no_shards, moved, "--out", out, "--names", "a,b,c"], capsys
    )
    assert rc == 0, err
    report = (out / "report.md").read_text()
    manifest = no_shards / "shards" / "manifest.json"
    assert (
        f"Overlays: b left out ({manifest}: no manifest; build shards first with python -m "
        "data_prep.build_shards)." in report
    )
    assert (
        f"Overlays: c re-predicted at step {evaluated} (step 99999, which was evaluated, is no "
        "longer saved)." in report
    )
    assert (out / "overlays.png").is_file()


@pytest.fixture(scope="session")
def other_runs(
    trained_run, tiny_run_seed1, tiny_main_command, child_env, tmp_path_factory
) -> dict[str, Path]:
    """Two more tiny runs: another seed on the same folds, and one holding out another fold."""
    fold = tmp_path_factory.mktemp("ensemble") / "fold2"
    command = tiny_main_command(fold, "--config.train.epochs=1", "--config.data.test_fold=2")
    subprocess.run(command, env=child_env(2), check=True, capture_output=True)
    return {"seed": tiny_run_seed1, "fold": fold}


@pytest.mark.slow
def test_ensemble_with_tta_averages_the_members_and_their_mirrors(
    trained_run, other_runs, tmp_path, capsys
):
    run = tmp_path / "a"
    shutil.copytree(trained_run, run)
    rc, out, err = run_main(
        [
            "--workdir",
            run,
            "--ensemble",
            other_runs["seed"],
            "--tta",
            "--shard-grid",
            "--tsne-slices",
            "0",
            "--no-progress",
            "--threshold",
            "0.3",
        ],
        capsys,
    )
    assert rc == 0, err
    folder = run / "eval_ensemble_tta"
    summary = json.loads((folder / "summary.json").read_text())
    assert [m["run"] for m in summary["members"]] == [str(run), str(other_runs["seed"])]
    assert summary["tta"] is True and summary["grid"] == "shard"
    # The same average computed here, by hand, from each run's own predictor.
    members = [evaluate.load_run(run), evaluate.load_run(other_runs["seed"])]
    shards = members[0].shards
    for v in json.loads((folder / "per_volume.json").read_text()):
        vol = shards.read_volume(v["case_id"])
        image = vol["image"]
        probs = []
        for m in members:
            probs.append(m.predictor.predict_volume(m.state, image))
            mirrored = np.ascontiguousarray(image[::-1])
            probs.append(m.predictor.predict_volume(m.state, mirrored)[::-1])
        pred = np.mean(probs, axis=0) >= 0.3
        gt = vol["mask"] > 0
        expected = volume_metrics(pred, gt, spacing=shards.volume(v["case_id"])["shard_spacing"])
        assert v["pred_voxels"] == expected["pred_voxels"]
        assert v["dice"] == pytest.approx(expected["dice"])
    # The run's own evaluation is left as it was.
    assert (run / "eval" / "summary.json").read_text() == (
        trained_run / "eval" / "summary.json"
    ).read_text()


@pytest.mark.slow
def test_an_ensemble_member_that_trained_on_the_volumes_is_refused(trained_run, other_runs, capsys):
    rc, _, err = run_main(
        ["--workdir", trained_run, "--ensemble", other_runs["fold"], "--no-progress"], capsys
    )
    assert_one_line_error(rc, err, str(other_runs["fold"]), "must share their held-out volumes")
