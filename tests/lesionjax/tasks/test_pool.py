"""The slice-labelled pretext pool: synthetic head CTs built with per-slice labels and no masks,
disjoint from a segmentation set."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    import importlib.util

    from lesionjax.tasks.pool import run_pool

    spec = importlib.util.spec_from_file_location("pool", REPO / "configs" / "pretext" / "pool.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("tiny")
    config.unlock()
    config.progress = False
    workdir = tmp_path_factory.mktemp("pool") / "run"
    return workdir, run_pool(config, workdir)


def test_the_pool_has_the_generators_slice_labels_and_no_masks(pool):
    from lesionjax.core.labels import SLICE_LABELS
    from lesionjax.data.shards import ShardSet

    workdir, result = pool
    shards = ShardSet.load(workdir / "shards")
    with open(workdir / "phantom" / "slice_labels.csv") as f:
        rows = list(csv.DictReader(f))
    expected: dict[str, list] = {}
    for row in rows:
        expected.setdefault(row["case_id"], []).append([int(row[k]) for k in SLICE_LABELS])
    assert sorted(expected) == [f"pool_{i:03d}" for i in range(6)]
    n_ich = 0
    for v in shards.volumes:
        assert not v["has_mask"] and v["lesion_voxels"] == 0
        assert v["slice_labels"] == expected[v["case_id"]]
        assert not shards.read_volume(v["case_id"])["mask"].any()
        n_ich += sum(s[0] for s in v["slice_labels"])
    assert 0 < n_ich < result["slices"]  # both classes, as the pretext tasks need
    assert result["slices_per_label"]["any"] == n_ich
    assert result["volumes_with_masks"] == 0
    assert json.loads((workdir / "pool.json").read_text())["slices"] == result["slices"]


def test_segmentation_refuses_the_pool(pool):
    from lesionjax.data.shards import ShardSet
    from lesionjax.tasks.segment2d import NoMasksError, check_has_masks

    shards = ShardSet.load(pool[0] / "shards")
    with pytest.raises(NoMasksError, match="no lesion mask"):
        check_has_masks(shards, [v["case_id"] for v in shards.volumes], "training")


def test_no_pool_volume_is_one_of_the_segmentation_sets(pool, tmp_path):
    """The demo's segmentation set uses seed 0 and the ids phantom_000 ...: generated here at
    the pool's size, none of its images equals a pool image."""
    from data_prep.synthetic import phantom

    workdir, _ = pool
    phantom.generate_dataset(
        tmp_path, 6, 0, shape=(64, 64, 12), spacing=(3.6, 3.6, 12.0), progress=False
    )
    segmentation = [np.asarray(nib.load(str(f)).dataobj) for f in (tmp_path / "images").iterdir()]
    for f in sorted((workdir / "phantom" / "images").iterdir()):
        image = np.asarray(nib.load(str(f)).dataobj)
        assert f.name.startswith("pool_")
        assert not any(np.array_equal(image, other) for other in segmentation)
