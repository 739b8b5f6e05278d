"""grain pipeline: split, sampling policies, determinism, disjoint per-process shares."""

import itertools

import numpy as np
import pytest

from lesionjax.data import pipeline, sampling
from lesionjax.data.shards import ShardSet


@pytest.fixture(scope="module")
def shards(tiny_shards):
    return ShardSet.load(tiny_shards)


def _all_ids(shards):
    return [v["case_id"] for v in shards.volumes]


def test_split_uses_volume_folds(shards):
    split = sampling.split_case_ids(shards, test_fold=0, val_fold=1)
    assert sorted(sum(split.values(), [])) == sorted(_all_ids(shards))
    assert all(shards.volume(c)["fold"] == 0 for c in split["test"])
    assert all(shards.volume(c)["fold"] == 1 for c in split["val"])
    with pytest.raises(ValueError, match="must differ"):
        sampling.split_case_ids(shards, 0, 0)


def test_policies_select_the_right_slices(shards):
    ids = _all_ids(shards)
    lesion_total = shards.manifest["counts"]["lesion_slices"]
    idx, w = sampling.sample_training_slices(shards, ids, "all")
    assert len(idx) == shards.manifest["counts"]["slices"] and (w == 1).all()
    idx, w = sampling.sample_training_slices(shards, ids, "lesion")
    assert len(idx) == lesion_total and (w == 1).all()
    source = shards.source()
    from lesionjax.core.records import decode_record

    assert all(decode_record(source[int(i)])["mask"].any() for i in idx)
    idx, w = sampling.sample_training_slices(
        shards, ids, "mixed", normal_ratio=0.5, normal_weight=0.2
    )
    n_normal = round(0.5 * lesion_total)
    assert len(idx) == lesion_total + n_normal == len(set(idx.tolist()))
    assert np.count_nonzero(w == 0.2) == n_normal
    normal = idx[w == 0.2]
    assert not any(decode_record(source[int(i)])["mask"].any() for i in normal)


def _take(dataset, n):
    return [b["index"].copy() for b in itertools.islice(iter(dataset), n)]


def test_pipeline_is_deterministic_from_the_seed(shards):
    idx, w = sampling.sample_training_slices(shards, _all_ids(shards), "all")
    make = lambda seed: pipeline.make_train_dataset(shards, idx, w, global_batch=4, seed=seed)  # noqa: E731
    a, b, c = _take(make(1), 6), _take(make(1), 6), _take(make(2), 6)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))
    assert not all((x == y).all() for x, y in zip(a, c, strict=True))


def test_processes_read_disjoint_shares_covering_each_epoch(shards):
    idx, w = sampling.sample_training_slices(shards, _all_ids(shards), "all")
    n_proc, global_batch = 2, 4
    steps = len(idx) // global_batch
    shares = []
    for p in range(n_proc):
        ds = pipeline.make_train_dataset(
            shards, idx, w, global_batch=global_batch, seed=0, process_index=p, process_count=n_proc
        )
        shares.append(np.concatenate(_take(ds, steps)))
    assert not set(shares[0].tolist()) & set(shares[1].tolist())
    seen = np.concatenate(shares)
    assert len(seen) == steps * global_batch == len(set(seen.tolist()))
    assert set(seen.tolist()) <= set(idx.tolist())


def test_epochs_are_reshuffled(shards):
    idx, w = sampling.sample_training_slices(shards, _all_ids(shards), "all")
    n = len(idx)
    ds = pipeline.make_train_dataset(shards, idx, w, global_batch=1, seed=0)
    stream = np.concatenate(_take(ds, 2 * n))
    first, second = stream[:n], stream[n:]
    assert sorted(first.tolist()) == sorted(second.tolist()) == sorted(idx.tolist())
    assert (first != second).any()


def test_batches_carry_uint8_slices_and_weights(shards):
    idx, w = sampling.sample_training_slices(shards, _all_ids(shards), "mixed", normal_weight=0.2)
    batch = next(iter(pipeline.make_train_dataset(shards, idx, w, global_batch=4, seed=0)))
    assert batch["image"].shape == (4, 64, 64, 2) and batch["image"].dtype == np.uint8
    assert batch["mask"].shape == (4, 64, 64, 1) and batch["mask"].dtype == np.uint8
    lookup = dict(zip(idx.tolist(), w.tolist(), strict=True))
    np.testing.assert_allclose(batch["weight"], [lookup[int(i)] for i in batch["index"]])


def test_too_few_slices_for_a_batch_is_a_clear_error(shards):
    idx, w = sampling.sample_training_slices(shards, _all_ids(shards)[:1], "lesion")
    with pytest.raises(ValueError, match="training slices for a global batch"):
        pipeline.make_train_dataset(shards, idx, w, global_batch=1000, seed=0)


def test_worker_processes_give_the_stream_of_one_process_and_resume_from_its_state(shards):
    """mp_prefetch workers (the pickled dataset, the stop-signal-ignoring initializer) give the
    batches the in-process pipeline gives, and a restored iterator state goes on where it was."""
    idx, w = sampling.sample_training_slices(shards, _all_ids(shards), "all")
    steps = 2 * len(idx) // 4 + 3  # into a third epoch
    inline = _take(pipeline.make_train_dataset(shards, idx, w, global_batch=4, seed=5), steps)
    ds = pipeline.make_train_dataset(shards, idx, w, global_batch=4, seed=5, worker_count=1)
    it = iter(ds)
    first = [next(it)["index"] for _ in range(steps - 4)]
    state = it.get_state()
    resumed = iter(ds)
    resumed.set_state(state)
    rest = [next(resumed)["index"] for _ in range(4)]
    for a, b in zip(inline, first + rest, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_epoch_shuffle_is_numpys_permutation_per_epoch():
    import grain

    ds = pipeline.EpochShuffled(grain.MapDataset.range(7), seed=3)
    for epoch in (0, 1, 5):
        expected = np.random.default_rng([3, epoch]).permutation(7)
        assert [ds[epoch * 7 + i] for i in range(7)] == expected.tolist()
