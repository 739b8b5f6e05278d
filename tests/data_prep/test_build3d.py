"""3D shard sets: fingerprint, plans3d.json, one shard set per cascade stage at its spacing,
folds shared between the stages, whole volumes kept, and the command line."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from data_prep import build_shards
from data_prep.build3d import build_3d, stage_dir
from data_prep.resample import target_shape
from data_prep.synthetic.phantom_layouts import write_layout
from lesionjax.core import records
from lesionjax.data.shards import ShardSet

SHAPE, SPACING = (40, 36, 10), (2.0, 2.0, 5.0)


@pytest.fixture(scope="module")
def instance_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("instance3d")
    return write_layout("instance2022", root, 5, 3, shape=SHAPE, spacing=SPACING)


@pytest.fixture(scope="module")
def built(instance_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("shards3d")
    plan, manifests, skipped = build_3d(
        "instance2022",
        instance_root,
        out,
        {"windows": ("brain", "subdural", "wide")},
        memory_gb=0.05,
        min_lowres_factor=2.0,
        n_folds=5,
        progress=False,
    )
    return out, plan, manifests, skipped


def test_plan_and_fingerprint_are_written_next_to_the_shards(built):
    out, plan, manifests, skipped = built
    assert not skipped
    on_disk = json.loads((out / "plans3d.json").read_text())
    assert on_disk["stages"] == json.loads(json.dumps(plan["stages"]))
    assert on_disk["in_channels"] == 3 and len(on_disk["windows"]) == 3
    fingerprint = json.loads((out / "fingerprint.json").read_text())
    assert len(fingerprint["cases"]) == 5
    for case in fingerprint["cases"]:
        np.testing.assert_allclose(case["spacing"], SPACING, rtol=1e-5)
        assert case["shape"] == list(SHAPE)
    # The phantom's blood is 50-90 HU: the statistics inside the masks are those of blood.
    fg = fingerprint["foreground_intensity"]
    assert 40.0 < fg["median"] < 100.0 and fg["percentile_00_5"] <= fg["median"]
    # Every case has the same spacing: the target is that spacing, stage 1 twice as coarse
    # in-plane (z, 2.5x the in-plane spacing, is not among the finest axes).
    np.testing.assert_allclose(plan["stages"]["fullres"]["spacing"], SPACING)
    np.testing.assert_allclose(plan["stages"]["lowres"]["spacing"], (4.0, 4.0, 5.0))


def test_each_stage_holds_whole_volumes_at_its_spacing(built, instance_root):
    out, plan, manifests, _ = built
    for stage in ("fullres", "lowres"):
        shards = ShardSet.load(stage_dir(out, stage))
        spacing = plan["stages"][stage]["spacing"]
        for v in shards.volumes:
            want = target_shape(SHAPE, SPACING, spacing)
            assert tuple(v["shard_shape"][:3]) == want and v["n_slices"] == want[2]
            np.testing.assert_allclose(v["shard_spacing"], spacing, rtol=1e-6)
        # One record per axial slice, (X, Y, 3) uint8 image and (X, Y) mask.
        v = shards.volumes[0]
        rec = records.decode_record(shards.source()[v["record_offset"] + 1])
        assert rec["slice"] == 1 and rec["image"].shape == (want[0], want[1], 3)


def test_the_full_resolution_mask_is_the_source_mask(built, instance_root):
    out, _, manifests, _ = built
    shards = ShardSet.load(stage_dir(out, "fullres"))
    v = next(v for v in shards.volumes if v["lesion_voxels"] > 0)
    src = shards.source()
    mask = np.stack(
        [records.decode_record(src[v["record_offset"] + k])["mask"] for k in range(v["n_slices"])],
        axis=-1,
    )
    label_file = [p for p in instance_root.rglob(f"{v['case_id']}*") if "label" in str(p)][0]
    ras = nib.as_closest_canonical(nib.load(label_file))
    np.testing.assert_array_equal(mask, (np.asarray(ras.dataobj) > 0).astype(np.uint8))


def test_both_stages_share_the_folds(built):
    _, _, manifests, _ = built
    folds = [{v["case_id"]: v["fold"] for v in m["volumes"]} for m in manifests.values()]
    assert folds[0] == folds[1] and len(set(folds[0].values())) == 5


def test_command_line_layout_3d(instance_root, tmp_path, capsys):
    out = tmp_path / "cli3d"
    rc = build_shards.main(
        [
            "--layout", "3d", "--dataset", "instance2022", "--src", str(instance_root),
            "--out", str(out), "--memory-gb", "0.05", "--workers", "1", "--no-progress",
        ]
    )  # fmt: skip
    assert rc == 0
    text = capsys.readouterr().out
    assert "plans3d.json" in text and "3d_fullres" in text
    assert (out / "3d_fullres" / "manifest.json").is_file()
    # Same spacing everywhere and a patch covering the volume: nnU-Net plans no stage 1.
    assert not (out / "3d_lowres").exists()
