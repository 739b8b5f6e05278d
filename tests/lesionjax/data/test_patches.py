"""3D patches: crops against the whole volume, padding at the borders, the forced-foreground
fraction, determinism, disjoint per-process shares of one stream, and iterator state."""

from __future__ import annotations

import json

import numpy as np
import pytest

from data_prep.build3d import build_3d, stage_dir
from data_prep.synthetic.phantom_layouts import write_layout
from lesionjax.data.patches import PatchSampler, make_patch_dataset, read_patch, start_bounds
from lesionjax.data.shards import ShardSet

SIZE = (24, 20, 8)


@pytest.fixture(scope="module")
def shards3d(tmp_path_factory) -> ShardSet:
    root = write_layout(
        "instance2022", tmp_path_factory.mktemp("raw3d"), 6, 5, shape=(40, 36, 10),
        spacing=(2.0, 2.0, 5.0), lesion_fraction=0.67,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("sh3d")
    build_3d("instance2022", root, out, {}, memory_gb=0.05, progress=False)
    return ShardSet.load(stage_dir(out, "fullres"))


def _padded(shards, case_id, start, size):
    vol = shards.read_volume(case_id)
    pad = 64
    image = np.pad(vol["image"], [(pad, pad)] * 3 + [(0, 0)])
    mask = np.pad(vol["mask"], [(pad, pad)] * 3)
    s = tuple(slice(a + pad, a + pad + n) for a, n in zip(start, size, strict=True))
    return image[s], mask[s][..., None]


@pytest.mark.parametrize("start", [(0, 0, 0), (10, 7, 2), (-5, -3, -2), (30, 30, 6), (-30, 0, 0)])
def test_a_patch_is_the_volume_cropped_with_zero_padding(shards3d, start):
    v = shards3d.volumes[0]
    got = read_patch(shards3d.source(), v, start, SIZE)
    image, mask = _padded(shards3d, v["case_id"], start, SIZE)
    np.testing.assert_array_equal(got["image"], image)
    np.testing.assert_array_equal(got["mask"], mask)


def test_start_bounds_follow_nnunets_need_to_pad():
    assert start_bounds(40, 24, 24) == (0, 16)
    assert start_bounds(40, 32, 24) == (-4, 12)  # margin 8: half of it past each border
    assert start_bounds(10, 16, 16) == (-3, -3)  # smaller than the patch: centred
    assert start_bounds(10, 16, 12) == (-3, -3)


def test_forced_samples_contain_foreground_and_the_fraction_is_nnunets(shards3d):
    lesion = [v["case_id"] for v in shards3d.volumes if v["lesion_voxels"] > 0]
    sampler = PatchSampler(shards3d, lesion, SIZE, batch=3, fg_fraction=1 / 3, seed=0)
    forced = [sampler.forced(i) for i in range(30)]
    assert forced == [False, False, True] * 10
    for i in range(2, 60, 3):  # every forced sample, cases in turn
        patch = sampler(i, i % len(lesion))
        assert patch["forced"] and patch["mask"].sum() > 0
    # Unforced random patches of small lesions often miss them: the forcing is what finds them.
    hits = np.mean([sampler(i, i % len(lesion))["mask"].sum() > 0 for i in range(0, 60, 3)])
    assert hits < 1.0


def test_random_starts_stay_within_bounds_and_reach_the_border(shards3d):
    ids = [v["case_id"] for v in shards3d.volumes]
    final = (16, 16, 8)
    sampler = PatchSampler(shards3d, ids, SIZE, final=final, batch=2, fg_fraction=0.0, seed=1)
    starts = np.array([sampler(i, 0)["start"] for i in range(200)])
    shape = shards3d.volumes[0]["shard_shape"][:3]
    for axis in range(3):
        lo, hi = start_bounds(shape[axis], SIZE[axis], final[axis])
        assert starts[:, axis].min() == lo and starts[:, axis].max() == hi


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_the_stream_is_deterministic_and_seeded(shards3d):
    ids = [v["case_id"] for v in shards3d.volumes]
    a = _take(iter(make_patch_dataset(shards3d, ids, SIZE, global_batch=2, seed=3)), 4)
    b = _take(iter(make_patch_dataset(shards3d, ids, SIZE, global_batch=2, seed=3)), 4)
    c = _take(iter(make_patch_dataset(shards3d, ids, SIZE, global_batch=2, seed=4)), 4)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["start"], y["start"])
    assert any((x["start"] != z["start"]).any() for x, z in zip(a, c, strict=True))
    # One patch per case per epoch: the first 6 samples visit the 6 cases once each.
    first = np.concatenate([x["index"] for x in a[:3]])
    assert sorted(first.tolist()) == list(range(6))


def test_processes_read_disjoint_shares_of_the_one_process_stream(shards3d):
    ids = [v["case_id"] for v in shards3d.volumes]
    one = _take(iter(make_patch_dataset(shards3d, ids, SIZE, global_batch=4, seed=0)), 3)
    parts = [
        _take(
            iter(
                make_patch_dataset(
                    shards3d, ids, SIZE, global_batch=4, seed=0, process_index=p, process_count=2
                )
            ),
            3,
        )
        for p in range(2)
    ]
    for step in range(3):
        for key in ("image", "mask", "start", "forced"):
            joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
            np.testing.assert_array_equal(joined, one[step][key])


def test_a_restored_iterator_continues_the_stream(shards3d):
    ids = [v["case_id"] for v in shards3d.volumes]
    it = iter(make_patch_dataset(shards3d, ids, SIZE, global_batch=2, seed=0))
    _take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 3)
    resumed = iter(make_patch_dataset(shards3d, ids, SIZE, global_batch=2, seed=0))
    resumed.set_state(state)
    for x, y in zip(_take(resumed, 3), expected, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["start"], y["start"])
