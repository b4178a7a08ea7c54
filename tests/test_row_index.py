"""Issue 24: stage two's indexes are arrays, not one Python object per person — the store's row
index (sorted ids searched), a row's metadata read from the file instead of kept per process,
stage two's item lists, and the dataset cache's columns memory-mapped."""

from __future__ import annotations

import os
import pickle
from dataclasses import fields

import numpy as np
import pytest
from store_helpers import sample_affines, sample_maps, sample_meta, sample_store
from torch.utils.data import DistributedSampler

from uniskel.core import dataset_cache
from uniskel.core.datasets import load_dataset
from uniskel.core.errors import UniError
from uniskel.stores.reader import open_store
from uniskel.stores.verify import missing_instances
from uniskel.stores.writer import write_store
from uniskel.student.data import Persons, PoseSamples, all_items, split_items
from uniskel.student.run_data import ArraySampler
from uniskel.student.sources import drop_damaged


def test_store_rows_by_sorted_ids_also_when_the_store_is_not_sorted(tmp_path):
    ids = np.array([50, 10, 40, 20, 30, 5, 60, 70, 80, 90, 100, 1])
    path = tmp_path / "u.h5"
    write_store(path, sample_meta(), ids, sample_maps(12), sample_affines(12))
    r = open_store(path)
    assert not hasattr(r, "row_of")
    np.testing.assert_array_equal(r.find([1, 50, 20, 999, -3]), [11, 0, 3, -1, -1])
    np.testing.assert_array_equal(r.rows(ids[::-1]), np.arange(12)[::-1])
    assert r.find(40)[0] == 2 and r.row(40) == 2 and r.row(1) == 11 and r.row(999) == -1
    assert r.row(0) == -1 and r.row(-5) == -1
    with pytest.raises(UniError, match=r"instance 999 is not in this store \(2 of 3"):
        r.rows([1, 999, 998])
    assert not r.instance_ids.flags.writeable and not r.done.flags.writeable


def test_reads_take_a_rows_metadata_from_the_file_and_a_check_lets_go(tmp_path):
    path, ids, maps, aff = sample_store(tmp_path)
    r = open_store(path)
    q, scales, a = r.read_raw(4)
    assert r._full is None  # a read keeps nothing per row of the store
    np.testing.assert_array_equal(a, aff[4])
    assert scales.shape == (maps.shape[1],) and (scales > 0).all()
    assert not r.check().problems and r._full is not None
    np.testing.assert_array_equal(r._scales[4], scales)  # the check's whole arrays agree
    r.close()
    assert r._full is None
    np.testing.assert_array_equal(r.read_raw(4)[0], q)


def test_missing_instances_is_vectorised_and_keeps_order():
    store = np.array([30, 10, 20, 40])
    done = np.array([1, 0, 1, 0], np.uint8)
    assert missing_instances([40, 10, 20, 30, 99], store, done, {10: "gone"}) == [40, 99]
    assert missing_instances(np.array([], np.int64), store, done, {}) == []
    assert missing_instances([1, 2], np.array([], np.int64), np.array([], bool), {2: "x"}) == [1]


def test_items_are_arrays_and_damaged_instances_drop_as_arrays(data_dir):
    sets = [load_dataset(f"coco:{data_dir}/coco/test_coco.json"),
            load_dataset(f"mpii:{data_dir}/mpii/test_mpii.json")]
    train, held = split_items(sets, 0.25, 0)
    assert train.dtype == held.dtype == np.int64 and train.shape[1] == held.shape[1] == 2
    every = all_items(sets)
    both = np.concatenate([train, held])
    assert len(both) == len(every) and len(np.unique(both, axis=0)) == len(every)
    again, none = split_items(sets, 0.0, 0)
    np.testing.assert_array_equal(again, every)
    assert none.shape == (0, 2)
    victim = int(sets[1].instance_ids[2])
    bad = {sets[1].dataset_id: {victim}}
    kept = drop_damaged(bad, "x: broken", sets, every, skip_corrupt=True, verbose=False)
    assert len(kept) == len(every) - 1 and [1, 2] not in kept.tolist()
    with pytest.raises(UniError, match="x: broken; 1 damaged"):
        drop_damaged(bad, "x: broken", sets, every, skip_corrupt=False)


def test_cached_columns_are_read_only_memory_maps(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("UNI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset_cache, "MIN_INSTANCES", 0)
    spec = f"coco:{data_dir}/coco/test_coco.json"
    first = load_dataset(spec)  # parsed, saved, then mapped
    again = load_dataset(spec)
    for ds in (first, again):
        for name in ("instance_ids", "keypoints", "bboxes", "image_paths"):
            col = getattr(ds, name)
            assert isinstance(col.base, np.memmap) and not col.flags.writeable, name
    monkeypatch.setenv("UNI_CACHE_DIR", "off")
    parsed = load_dataset(spec)
    for name in ("instance_ids", "image_index", "keypoints", "bboxes", "head_boxes", "areas",
                 "image_ids", "image_paths", "crowd_index", "ignore_offsets"):
        np.testing.assert_array_equal(getattr(again, name), getattr(parsed, name))
    assert again.instance(3).instance_id == parsed.instance(3).instance_id


@pytest.mark.parametrize(("n", "world", "drop_last"), [(10, 1, False), (10, 3, False),
                                                       (2, 5, False), (11, 4, True)])
def test_array_sampler_gives_distributed_samplers_order(n, world, drop_last):
    data = list(range(n))
    for rank in range(world):
        for shuffle in (True, False):
            kw = dict(num_replicas=world, rank=rank, shuffle=shuffle, seed=7,
                      drop_last=drop_last)
            want, got = DistributedSampler(data, **kw), ArraySampler(data, **kw)
            for epoch in (0, 3):
                want.set_epoch(epoch)
                got.set_epoch(epoch)
                order = list(got)
                assert order == list(want) and len(got) == len(want)
                assert all(type(i) is int for i in order)


def _mapped_rss_kb(path) -> int:
    """This process's resident kB of its maps of `path` (/proc/self/smaps)."""
    total, mine = 0, False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if head and not head[0].endswith(":"):  # a mapping's first line: range perms … path
            mine = head[-1] == str(path)
        elif mine and head[0] == "Rss:":
            total += int(head[1])
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="Linux /proc only")
def test_samples_read_cached_columns_row_by_row_without_mapping_them(tmp_path, monkeypatch,
                                                                     data_dir):
    spec = f"coco:{data_dir}/coco/test_coco.json"
    monkeypatch.setenv("UNI_CACHE_DIR", "off")
    parsed = load_dataset(spec)
    assert isinstance(Persons.of(parsed).keypoints, np.ndarray)  # in memory: the arrays
    monkeypatch.setenv("UNI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset_cache, "MIN_INSTANCES", 0)
    ds = load_dataset(spec)
    (entry,) = (tmp_path / "cache").glob("*.npz")
    persons = Persons.of(ds)
    again = pickle.loads(pickle.dumps(persons))  # as a spawned worker gets them
    for f in fields(Persons):
        assert isinstance(getattr(persons, f.name), dataset_cache.FileRows), f.name
    for p in (persons, again):
        for row in range(len(parsed.instance_ids)):
            assert p.instance_ids[row] == parsed.instance_ids[row]
            np.testing.assert_array_equal(p.keypoints[row], parsed.keypoints[row])
            np.testing.assert_array_equal(p.bboxes[row], parsed.bboxes[row])
            assert p.image_paths[p.image_index[row]] == parsed.image_paths[
                parsed.image_index[row]]
    with pytest.raises(IndexError):
        persons.keypoints[len(parsed.instance_ids)]
    samples = PoseSamples([ds], (48, 64), augment=None)
    assert samples[0]["index"] == 0 and samples[5]["index"] == 5
    assert _mapped_rss_kb(entry.resolve()) == 0  # read through pread: no page of it mapped
