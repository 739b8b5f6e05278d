"""Offline shard building: manifest contents, slices, folds, re-use and atomic output."""

import json

import nibabel as nib
import numpy as np
import pytest

from data_prep import build_shards as bs
from data_prep.layouts.pairs import read_pairs_layout
from data_prep.shard_writer import assign_folds
from lesionjax.core.windows import window_to_uint8
from lesionjax.data.shards import ShardSet


def test_manifest_describes_every_volume(tiny_phantom, tiny_shards):
    manifest = json.loads((tiny_shards / "manifest.json").read_text())
    assert manifest["schema_version"] == 2
    assert manifest["windows"] == [[0.0, 80.0], [-50.0, 150.0]]
    assert manifest["plan"]["windows"] == manifest["windows"]
    assert manifest["plan"]["modality"] == "CT" and manifest["plan"]["size"] is None
    assert manifest["counts"]["volumes"] == 10
    offsets = [v["record_offset"] for v in manifest["volumes"]]
    assert offsets == list(np.cumsum([0] + [v["n_slices"] for v in manifest["volumes"]])[:-1])
    for v in manifest["volumes"]:
        img = nib.load(tiny_phantom / "images" / f"{v['case_id']}.nii.gz")
        assert v["shape"] == list(img.shape)
        np.testing.assert_allclose(v["affine"], img.affine, atol=1e-5)
        assert v["sources"]["image"]["path"].endswith(f"{v['case_id']}.nii.gz")
        assert v["spacing"] == pytest.approx([3.6, 3.6, 12.0])


def test_slices_hold_windowed_image_and_mask(tiny_phantom, tiny_shards):
    shards = ShardSet.load(tiny_shards)
    v = max(shards.volumes, key=lambda v: v["lesion_voxels"])
    vol = shards.read_volume(v["case_id"])
    hu = np.asarray(nib.load(tiny_phantom / "images" / f"{v['case_id']}.nii.gz").dataobj)
    mask = np.asarray(nib.load(tiny_phantom / "masks" / f"{v['case_id']}.nii.gz").dataobj)
    np.testing.assert_array_equal(vol["image"], window_to_uint8(hu, [(0, 80), (-50, 150)]))
    np.testing.assert_array_equal(vol["mask"], mask)
    assert v["lesion_slices"] == np.flatnonzero(mask.any(axis=(0, 1))).tolist()
    assert v["lesion_voxels"] == int(mask.sum())


def test_folds_are_stratified_by_lesion_presence():
    entries = [{"case_id": f"c{i}", "lesion_voxels": int(i < 6)} for i in range(10)]
    folds = assign_folds(entries, 2, seed=0)
    for fold in (0, 1):
        members = [e for e in entries if folds[e["case_id"]] == fold]
        assert sum(e["lesion_voxels"] > 0 for e in members) == 3
        assert len(members) == 5


def test_rerun_reuses_volumes_and_rebuilds_changed_ones(build, tiny_phantom, tmp_path):
    cases = read_pairs_layout(tiny_phantom)[:3]
    build(cases, tmp_path, n_folds=2, windows=["ich"])
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.array_record")}
    build(cases, tmp_path, n_folds=2, windows=["ich"])
    again = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.array_record")}
    assert again == mtimes  # nothing rewritten
    build(cases, tmp_path, n_folds=2, windows=["brain"])
    changed = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "shards").glob("*.array_record")}
    assert all(changed[k] != mtimes[k] for k in mtimes)  # new settings: all rebuilt
    assert not list(tmp_path.rglob("*.tmp*"))


def test_in_plane_resize_keeps_mask_aligned(build, tiny_phantom, tmp_path):
    cases = read_pairs_layout(tiny_phantom)[:2]
    manifest, _ = build(cases, tmp_path, windows=["ich"], size=(32, 32))
    v = manifest["volumes"][0]
    assert v["shard_shape"][:2] == [32, 32] and v["shard_spacing"][0] == pytest.approx(7.2)
    vol = ShardSet.load(tmp_path).read_volume(v["case_id"])
    assert vol["image"].shape == (32, 32, 12, 1) and vol["mask"].shape == (32, 32, 12)


def test_a_broken_case_is_skipped_and_reported(tiny_phantom, tmp_path):
    src = tmp_path / "src"
    for sub in ("images", "masks"):
        (src / sub).mkdir(parents=True)
        for f in sorted((tiny_phantom / sub).iterdir())[:2]:
            (src / sub / f.name).write_bytes(f.read_bytes())
    (src / "images" / "broken.nii.gz").write_bytes(b"not a nifti file")
    any_mask = sorted((src / "masks").iterdir())[0]
    (src / "masks" / "broken.nii.gz").write_bytes(any_mask.read_bytes())
    out = tmp_path / "out"
    code = bs.main(["--src", str(src), "--out", str(out), "--workers", "1", "--no-progress"])
    assert code == 1
    skipped = json.loads((out / "skipped.json").read_text())
    assert [s["case_id"] for s in skipped] == ["broken"]
    assert "cannot read as NIfTI" in skipped[0]["error"]
    assert json.loads((out / "manifest.json").read_text())["counts"]["volumes"] == 2
    assert bs.main(["--src", str(src), "--out", str(out), "--allow-skips", "--no-progress"]) == 0


def test_parallel_build_matches_serial(build, tiny_phantom, tmp_path):
    cases = read_pairs_layout(tiny_phantom)[:4]
    serial, _ = build(cases, tmp_path / "a", windows=["ich"])
    parallel, _ = build(cases, tmp_path / "b", workers=2, windows=["ich"])
    for a, b in zip(serial["volumes"], parallel["volumes"], strict=True):
        assert a["case_id"] == b["case_id"] and a["fold"] == b["fold"]
        assert (tmp_path / "a" / a["shard"]).read_bytes() == (
            tmp_path / "b" / b["shard"]
        ).read_bytes()


def test_cavity_model_with_a_configs_3d_layout_is_refused_before_any_work(tmp_path, capsys):
    """--cavity-model fills 2D cases; a 3D layout set by the config (not --layout) is refused
    too, before the cavity function or the build runs."""
    config = tmp_path / "exp.py"
    config.write_text(
        "from lesionjax.config_defaults import cascade3d_config\n"
        "def get_config(arg=None):\n"
        "    return cascade3d_config()\n"
    )
    called = []
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        bs.main(
            ["--config", str(config), "--src", str(tmp_path), "--out", str(out),
             "--cavity-model", str(tmp_path / "run")],
            cavity_masks=lambda *a, **k: called.append(a),
        )  # fmt: skip
    assert exit_info.value.code == 2
    assert "--cavity-model builds 2D shards" in capsys.readouterr().err
    assert not called and not out.exists()
