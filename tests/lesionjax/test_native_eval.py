"""The final evaluation on the scans' native grids (``eval.native``): predictions mapped back to
each scan's own voxels and scored against the original mask files, checked against counts read
from those files with nibabel."""

from __future__ import annotations

import ml_collections
import nibabel as nib
import numpy as np
import pytest

from data_prep.layouts.pairs import read_pairs_layout
from lesionjax.data.shards import ShardSet
from lesionjax.eval.evaluate_volumes import evaluate_cases
from lesionjax.tasks.native import NativeTruthError, native_truth


class Constant:
    """A stand-in predictor: the same probability everywhere."""

    def __init__(self, value: float):
        self.value = value

    def predict_volume(self, state, image):
        return np.full(image.shape[:3], self.value, np.float32)


@pytest.fixture(scope="module")
def resized(tiny_phantom, build, tmp_path_factory):
    """The tiny phantom (64x64x12, 3.6 mm) prepared at 40x40 with the slices 2..9 kept."""
    out = tmp_path_factory.mktemp("native")
    _, skipped = build(
        read_pairs_layout(tiny_phantom), out, windows=["brain"], size=[40, 40], slice_range=[2, 10]
    )
    assert not skipped
    return ShardSet.load(out)


def _config(raw_dir):
    c = ml_collections.ConfigDict()
    c.data = ml_collections.ConfigDict({"dataset": "pairs", "raw_dir": str(raw_dir)})
    return c


def test_native_metrics_count_the_original_mask_files(resized, tiny_phantom, tmp_path):
    truth = native_truth(_config(tiny_phantom), tmp_path)
    case_ids = [v["case_id"] for v in resized.volumes[:3]]
    for value, name in ((0.0, "nothing"), (1.0, "everything")):
        per_volume, _ = evaluate_cases(
            Constant(value),
            None,
            resized,
            case_ids,
            n_overlays=0,
            progress=False,
            native_truth=truth,
        )
        for v in per_volume:
            src = nib.load(str(tiny_phantom / "masks" / f"{v['case_id']}.nii.gz"))
            mask = np.asarray(src.dataobj) > 0
            voxel_ml = float(np.prod(src.header.get_zooms()[:3])) / 1000.0
            assert v["grid"] == "native"
            assert v["gt_voxels"] == int(mask.sum())
            assert v["gt_ml"] == pytest.approx(mask.sum() * voxel_ml)
            if name == "nothing":
                assert v["pred_voxels"] == 0
            else:
                # Every kept slice (2..9) of the native 64x64 grid, none of the dropped ones.
                assert v["pred_voxels"] == 64 * 64 * 8
                kept = mask[:, :, 2:10].sum()
                assert v["precision"] == pytest.approx(kept / (64 * 64 * 8))
                if mask.any():
                    assert v["recall"] == pytest.approx(kept / mask.sum())
    shard, _ = evaluate_cases(Constant(1.0), None, resized, case_ids, n_overlays=0, progress=False)
    assert shard[0]["grid"] == "shard" and shard[0]["pred_voxels"] == 40 * 40 * 8


def test_a_case_missing_from_the_dataset_is_named(resized, tiny_phantom, tmp_path):
    import shutil

    other = tmp_path / "raw"
    for folder in ("images", "masks"):
        (other / folder).mkdir(parents=True)
        shutil.copy(tiny_phantom / folder / "phantom_000.nii.gz", other / folder / "other.nii.gz")
    truth = native_truth(_config(other), tmp_path)
    with pytest.raises(NativeTruthError, match="not in the dataset"):
        evaluate_cases(
            Constant(0.5),
            None,
            resized,
            [resized.volumes[0]["case_id"]],
            n_overlays=0,
            progress=False,
            native_truth=truth,
        )


class Replay:
    """A stand-in predictor that outputs each volume's own shard mask (found by its image)."""

    def __init__(self, shards: ShardSet):
        self.masks = {}
        for v in shards.volumes:
            vol = shards.read_volume(v["case_id"])
            self.masks[vol["image"].tobytes()] = vol["mask"].astype(np.float32)

    def predict_volume(self, state, image):
        return self.masks[np.asarray(image).tobytes()]


def test_native_scores_of_a_flipped_resized_scan_match_its_original_mask(
    tiny_phantom, build, tmp_path
):
    """The phantom's three largest lesions, stored as they are (RAS) and stored LPS (x and y
    flipped, affine to match), prepared at 48x48 (from 64x64): each volume's shard mask mapped
    back to its native grid overlaps the original mask file, and the LPS copies score exactly
    as the RAS ones (the flips are undone; what is lost is the resize's, the same for both)."""
    results = {}
    for flipped in (False, True):
        raw = tmp_path / f"raw_{flipped}"
        for folder in ("images", "masks"):
            (raw / folder).mkdir(parents=True)
        for case in ("phantom_000", "phantom_004", "phantom_007"):
            for folder in ("images", "masks"):
                src = nib.load(str(tiny_phantom / folder / f"{case}.nii.gz"))
                data, affine = np.asarray(src.dataobj), src.affine
                if flipped:
                    data = data[::-1, ::-1].copy()
                    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
                    flip[:2, 3] = np.asarray(data.shape[:2]) - 1
                    affine = affine @ flip
                nib.save(nib.Nifti1Image(data, affine), str(raw / folder / f"{case}.nii.gz"))
        out = tmp_path / f"shards_{flipped}"
        _, skipped = build(read_pairs_layout(raw), out, windows=["brain"], size=[48, 48], n_folds=3)
        assert not skipped
        shards = ShardSet.load(out)
        per_volume, _ = evaluate_cases(
            Replay(shards),
            None,
            shards,
            [v["case_id"] for v in shards.volumes],
            n_overlays=0,
            progress=False,
            native_truth=native_truth(_config(raw), tmp_path),
        )
        for v in per_volume:
            mask_file = raw / "masks" / f"{v['case_id']}.nii.gz"
            truth = np.asarray(nib.load(str(mask_file)).dataobj) > 0
            assert v["grid"] == "native" and v["gt_voxels"] == int(truth.sum()) > 200
            # Lesions 5-6 voxels across, resized 64 -> 48 -> 64: about a voxel of rim lost.
            assert v["dice"] > 0.75, (v["case_id"], v["dice"])
        results[flipped] = [(v["case_id"], v["dice"], v["pred_voxels"]) for v in per_volume]
    assert results[True] == results[False]
