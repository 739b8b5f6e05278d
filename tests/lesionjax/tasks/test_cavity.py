"""Intracranial-cavity models: the cavity target of the shards, the union of two models' masks,
and the trained cavity run applied to a lesion model's predictions (predict --cavity-mask RUN,
eval.cavity_mask)."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


def _shard_volumes(root: Path) -> dict[str, dict[str, np.ndarray]]:
    from lesionjax.data.shards import ShardSet

    shards = ShardSet.load(root)
    return {v["case_id"]: shards.read_volume(v["case_id"]) for v in shards.volumes}


def test_cavity_target_shards_hold_each_case_cavity_mask(
    tiny_phantom, tiny_shards, build, tmp_path
):
    """Built with target "cavity", the shards' mask is the cavity mask the lesion build stores
    beside the lesion mask (``icm``), and the lesion slices are the slices with cavity."""
    from data_prep.layouts.pairs import read_pairs_layout

    manifest, skipped = build(
        read_pairs_layout(tiny_phantom), tmp_path / "cav", windows=["tissue"], target="cavity"
    )
    assert not skipped
    assert manifest["plan"]["target"] == "cavity"
    lesion, cavity = _shard_volumes(tiny_shards), _shard_volumes(tmp_path / "cav")
    assert set(lesion) == set(cavity)
    for case_id, vol in cavity.items():
        icm = lesion[case_id]["icm"]
        assert icm.any() and not np.array_equal(icm, lesion[case_id]["mask"])
        np.testing.assert_array_equal(vol["mask"], icm)
    for v in manifest["volumes"]:
        with_cavity = np.flatnonzero(cavity[v["case_id"]]["mask"].any(axis=(0, 1)))
        assert v["lesion_slices"] == with_cavity.tolist()


def test_a_case_without_cavity_mask_is_named_and_skipped(tiny_phantom, build, tmp_path):
    from data_prep.layouts.pairs import read_pairs_layout

    cases = read_pairs_layout(tiny_phantom)
    cases = [dataclasses.replace(cases[0], icm=None), *cases[1:4]]
    manifest, skipped = build(cases, tmp_path / "cav", windows=["tissue"], target="cavity")
    assert [s["case_id"] for s in skipped] == [cases[0].case_id]
    assert "no intracranial-cavity mask" in skipped[0]["error"]
    assert str(cases[0].image) in skipped[0]["error"]
    assert len(manifest["volumes"]) == 3


def test_the_default_plan_hashes_as_before_a_target_existed():
    """Older shards and exported models stay valid: the default target is not written."""
    from data_prep.plan import resolve_plan

    lesion = resolve_plan("pairs", "CT", {})
    assert "target" not in lesion.to_dict()
    cavity = resolve_plan("pairs", "CT", {"target": "cavity"})
    assert cavity.to_dict()["target"] == "cavity"
    assert cavity.fingerprint() != lesion.fingerprint()
    assert cavity.for_inference().fingerprint() == lesion.fingerprint()


class _Fixed:
    """A predictor whose probabilities are a fixed volume on the shard grid."""

    def __init__(self, probs):
        self.probs = probs

    def predict_volume(self, state, image):
        assert image.shape[:3] == self.probs.shape
        return self.probs


def test_cavity_union_is_the_or_of_the_two_models_masks(tiny_phantom):
    """Model A sees the left half of the head, model B the front half (probabilities 0.9, else
    0.2): the union is the L-shaped region both halves cover, on the native grid (RAS phantom,
    no resampling, so native voxel (i, j, k) is shard voxel (i, j, k))."""
    from data_prep.layouts.pairs import read_pairs_layout
    from data_prep.plan import resolve_plan
    from lesionjax.tasks.cavity_mask import CavityModel

    case = read_pairs_layout(tiny_phantom)[0]
    shape = nib.load(str(case.image)).shape
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    left = np.broadcast_to((x < shape[0] // 2)[..., None], shape)
    front = np.broadcast_to((y >= shape[1] // 2)[..., None], shape)
    probs_a, probs_b = np.where(left, 0.9, 0.2), np.where(front, 0.9, 0.2)
    models = [
        types.SimpleNamespace(predictor=_Fixed(p), state=None, workdir=Path(n))
        for p, n in ((probs_a, "tissue"), (probs_b, "bone"))
    ]
    plans = [resolve_plan("pairs", "CT", {"windows": (w,)}) for w in ("tissue", "bone")]
    model = CavityModel(Path("unused"), models, plans, threshold=0.5)
    union = model.native_mask(case)
    assert union.shape == shape
    np.testing.assert_array_equal(union, left | front)
    assert 0 < union.mean() < 1 and not np.array_equal(union, left)


@pytest.fixture(scope="module")
def cavity_run(tiny_phantom, tmp_path_factory, child_env):
    """configs/cavity.py:tiny trained once (both windows, 1 epoch) on the tiny phantom set."""
    workdir = tmp_path_factory.mktemp("cavity") / "run"
    command = [
        sys.executable,
        "-m",
        "lesionjax.main",
        f"--config={REPO / 'configs' / 'cavity.py'}:tiny",
        f"--workdir={workdir}",
        "--config.progress=False",
        "--config.data.source=folder",
        f"--config.data.raw_dir={tiny_phantom}",
    ]
    result = subprocess.run(command, env=child_env(1), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_cavity_run_trains_both_windows_and_reports_their_union(cavity_run):
    result = json.loads((cavity_run / "cavity.json").read_text())
    assert result["complete"] and result["windows"] == ["tissue", "bone"]
    for window in ("tissue", "bone"):
        config = json.loads((cavity_run / window / "config.json").read_text())
        assert config["data"]["windows"] == [window] and config["data"]["target"] == "cavity"
        manifest = json.loads(Path(config["data"]["shards_dir"], "manifest.json").read_text())
        assert manifest["plan"]["target"] == "cavity"
    rows = result["per_volume"]
    assert rows and len(rows) == result["n_volumes"]
    for name in ("tissue", "bone", "union"):
        mean = np.mean([r[name]["dice"] for r in rows])
        assert result["mean"][name]["dice"] == pytest.approx(mean)
    for r in rows:  # the union's recall is at least either model's (it holds both masks)
        assert r["union"]["recall"] >= max(r["tissue"]["recall"], r["bone"]["recall"]) - 1e-9
    assert "| union |" in (cavity_run / "cavity.md").read_text()


@pytest.mark.slow
def test_predict_cavity_mask_run_zeroes_outside_the_predicted_cavity(
    cavity_run, tiny_run, tiny_phantom, tmp_path, child_env
):
    """The same lesion model with and without --cavity-mask RUN: inside the cavity the masks
    agree, outside it the cavity-masked one is empty."""
    from data_prep.layouts.pairs import read_pairs_layout
    from lesionjax.tasks.cavity_mask import CavityModel

    case = read_pairs_layout(tiny_phantom)[0]
    outputs = {}
    for name, extra in (("plain", []), ("cavity", ["--cavity-mask", str(cavity_run)])):
        out = tmp_path / name
        command = [
            sys.executable, "-m", "lesionjax.predict", "--model", str(tiny_run),
            "--input", str(case.image), "--output", str(out), "--no-progress",
            "--no-overlays", "--threshold", "0.05", *extra,
        ]  # fmt: skip
        result = subprocess.run(command, env=child_env(1), capture_output=True, text=True)
        assert result.returncode == 0, result.stderr[-3000:]
        case_id = json.loads((out / "predictions.json").read_text())["cases"][0]["case"]
        outputs[name] = np.asarray(nib.load(str(out / f"{case_id}_mask.nii.gz")).dataobj) > 0
        assert json.loads((out / "predictions.json").read_text())["cases"][0]["cavity_mask"] == (
            name == "cavity"
        )
    cavity = CavityModel.load(cavity_run).native_mask(case)
    assert outputs["plain"][~cavity].any(), "the test needs lesion voxels outside the cavity"
    assert not outputs["cavity"][~cavity].any()
    np.testing.assert_array_equal(outputs["cavity"][cavity], outputs["plain"][cavity])


@pytest.mark.slow
def test_prep_with_a_cavity_model_gives_cases_without_one_the_models_mask(
    cavity_run, tiny_phantom, tmp_path, child_env
):
    """A copy of the phantom set without its icm/ folder, built by lesionjax-prep
    --cavity-model RUN: every volume gets a cavity mask, the one the models predict for it
    (RAS phantom, no resampling: native grid = shard grid); the shard builder alone refuses the
    option in one line."""
    from data_prep.layouts.pairs import read_pairs_layout
    from lesionjax.data.shards import ShardSet
    from lesionjax.tasks.cavity_mask import CavityModel

    src = tmp_path / "no_icm"
    for sub in ("images", "masks"):
        (src / sub).mkdir(parents=True)
        for f in sorted((tiny_phantom / sub).iterdir())[:3]:
            (src / sub / f.name).symlink_to(f)
    out = tmp_path / "shards"
    args = ["--dataset", "pairs", "--src", str(src), "--out", str(out), "--windows", "ich",
            "--folds", "3", "--workers", "1", "--no-progress",
            "--cavity-model", str(cavity_run)]  # fmt: skip
    alone = subprocess.run(
        [sys.executable, "-m", "data_prep.build_shards", *args],
        env=child_env(1), capture_output=True, text=True,
    )  # fmt: skip
    assert alone.returncode == 2 and "use lesionjax-prep" in alone.stderr, alone.stderr
    assert not out.exists()
    done = subprocess.run(
        [sys.executable, "-m", "lesionjax.prep", *args],
        env=child_env(1), capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    shards = ShardSet.load(out)
    assert len(shards.volumes) == 3 and all(v["has_icm"] for v in shards.volumes)
    model = CavityModel.load(cavity_run)
    for files in read_pairs_layout(src):
        assert files.icm is None
        expected = model.native_mask(files)
        assert 0 < expected.mean() < 1
        np.testing.assert_array_equal(shards.read_volume(files.case_id)["icm"] > 0, expected)
    assert sorted(p.name for p in (out / "cavity_masks").iterdir()) == sorted(
        [f"{v['case_id']}.nii.gz" for v in shards.volumes] + ["sources.json"]
    )
    # A mask that no longer matches its source (here: written by another run) is recomputed.
    first = out / "cavity_masks" / f"{shards.volumes[0]['case_id']}.nii.gz"
    record = out / "cavity_masks" / "sources.json"
    sources = json.loads(record.read_text())
    sources[shards.volumes[0]["case_id"]]["run"] = "/elsewhere"
    record.write_text(json.dumps(sources))
    before = first.stat().st_mtime_ns
    again = subprocess.run(
        [sys.executable, "-m", "lesionjax.prep", *args],
        env=child_env(1), capture_output=True, text=True,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert first.stat().st_mtime_ns != before
    assert json.loads(record.read_text())[shards.volumes[0]["case_id"]]["run"] == str(
        cavity_run.resolve()
    )


@pytest.mark.slow
def test_evaluate_with_cavity_masks_counts_only_the_predicted_voxels_inside_them(
    tiny_run, tmp_path
):
    """``lesionjax-evaluate --cavity-mask`` (the cases' own icm/ files): each volume's
    predicted voxels are those of the plain prediction (mapped to the native grid, computed here
    from the model) that lie inside the case's cavity mask; at a low threshold the plain
    prediction has voxels outside it, so the filter is seen to act."""
    import shutil

    from data_prep.layouts.pairs import read_pairs_layout
    from data_prep.preprocess import native_mask
    from lesionjax.core.geometry import GridChain
    from lesionjax.evaluate import load_run, reevaluate

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    threshold = 0.05
    reevaluate(
        run_dir, cavity_mask="dataset", threshold=threshold, tsne_slices=0, progress=False,
        native=True,
    )  # fmt: skip
    rows = json.loads((run_dir / "eval_icm" / "per_volume.json").read_text())
    assert json.loads((run_dir / "eval_icm" / "summary.json").read_text())["cavity_mask"] == (
        "dataset"
    )
    run = load_run(run_dir)
    cases = {c.case_id: c for c in read_pairs_layout(Path(run.config.data.raw_dir))}
    outside = 0
    for row in rows:
        vol = run.shards.read_volume(row["case_id"])
        grid = GridChain.from_dict(run.shards.volume(row["case_id"])["grid"])
        probs = run.predictor.predict_volume(run.state, vol["image"])
        pred = grid.to_native(probs, order=1, fill=0.0) >= threshold
        icm = native_mask(cases[row["case_id"]], grid, "cavity") > 0
        assert row["pred_voxels"] == int((pred & icm).sum()), row["case_id"]
        outside += int((pred & ~icm).sum())
    assert outside > 0
