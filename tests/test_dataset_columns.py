"""Datasets as columns (core/datasets.py, columns.py, annotations.py, json_stream.py,
dataset_cache.py): the streamed parse equals json.load, problems are found in the documented
order, loading holds arrays rather than per-person objects, and the on-disk cache of parsed
columns."""

from __future__ import annotations

import json
import random
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniskel.core import annotations, columns, dataset_cache
from uniskel.core import datasets as datasets_module
from uniskel.core.datasets import Instance, load_dataset, summarize
from uniskel.core.errors import UniError
from uniskel.core.files import read_json
from uniskel.core.json_stream import Streamed, read_json_stream

json_any = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                               max_size=4),
    max_leaves=20)


def _collect(value):
    """A read_json_stream result with its streamed lists put back."""
    if isinstance(value, Streamed):
        assert len(value.sink.items) == value.length
        return value.sink.items
    if isinstance(value, dict):
        return {k: _collect(v) for k, v in value.items()}
    return value


class _Keep:
    def __init__(self):
        self.items = []

    def __call__(self, element):
        self.items.append(element)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=st.one_of(json_any, st.dictionaries(st.sampled_from(["images", "annotations", "x"]),
                                               json_any | st.lists(json_any), max_size=3)),
       indent=st.sampled_from([None, 0, 2]), ascii_only=st.booleans(),
       encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-32"]),
       block=st.integers(1, 12))
def test_stream_equals_json_load(tmp_path, doc, indent, ascii_only, encoding, block):
    """Every block size, encoding and layout gives json.load's values; cut numbers (12|34,
    1e|5) and strings are read whole."""
    f = tmp_path / "a.json"
    f.write_bytes(json.dumps(doc, indent=indent, ensure_ascii=ascii_only).encode(encoding))
    sinks = {key: _Keep for key in ("images", "annotations", None)}
    assert _collect(read_json_stream(f, sinks, block=block)) == read_json(f)


@pytest.mark.parametrize("text", ['{"images": [1, 2', '{"images": [1,, 2]}', '[{"a": 1} {"b": 2}]',
                                  '{"a": 1} x', '{"images": [1e5, 2]] ', "", '{"a" 1}',
                                  '[1, 2,]', '{"images": [{"id": 1}, {"id": 2]}',
                                  b"\xff\xfd{}", b'{"images": ["\xc3\x28"]}'])
@pytest.mark.parametrize("block", [1, 3, 1 << 20])
def test_stream_not_json_says_what_json_load_says(tmp_path, text, block):
    f = tmp_path / "a.json"
    f.write_bytes(text.encode() if isinstance(text, str) else text)
    with pytest.raises(UniError) as want:
        read_json(f)
    with pytest.raises(UniError) as got:
        read_json_stream(f, {"images": _Keep, None: _Keep}, block=block)
    assert str(got.value) == str(want.value) and "not valid JSON" in str(got.value)


# --------------------------------------------------------------------------- columns


@pytest.fixture(scope="module")
def coco(data_dir):
    return load_dataset(f"coco:{data_dir}/coco/test_coco.json")


def test_columns_are_the_instances(coco, data_dir):
    n = len(coco.instance_ids)
    assert coco.instance_ids.dtype == np.int64 and coco.image_index.dtype == np.int32
    assert coco.bboxes.shape == (n, 4) and coco.keypoints.shape == (n, 17, 3)
    assert coco.head_boxes.shape == (n, 4) and not coco.has_head_box.any()
    assert coco.areas.shape == (n,) and coco.unified.shape == (n, 21, 3)
    assert len(coco.image_paths) == coco.num_images == 4  # each image once
    assert (np.diff(coco.instance_ids) > 0).all()
    for r, inst in enumerate(coco.instances):
        assert isinstance(inst, Instance) and inst.instance_id == coco.instance_ids[r]
        assert inst.image_path == Path(coco.image_paths[coco.image_index[r]]) == \
            coco.image_path(r)
        np.testing.assert_array_equal(inst.bbox, coco.bboxes[r])
        np.testing.assert_array_equal(inst.unified, coco.unified[r])
        assert inst.area == coco.areas[r] and inst.head_box is None
    for a in (coco.bboxes, coco.keypoints, coco.instance_ids, coco.unified):
        with pytest.raises(ValueError):
            a[0] = 0  # read-only: an Instance's arrays are views of these
    assert coco.instances[-1].instance_id == coco.instance_ids[-1]
    assert [i.instance_id for i in coco.instances[1:3]] == coco.instance_ids[1:3].tolist()
    with pytest.raises(IndexError):
        coco.instances[n]


def test_by_id_and_rows_of(coco):
    ids = coco.instance_ids.tolist()
    by_id = coco.by_id()
    assert len(by_id) == len(ids) and list(by_id) == ids
    assert by_id[ids[3]].instance_id == ids[3] and ids[3] in by_id
    for absent in (-1, ids[0] - 1, ids[-1] + 1, 2**70, "7", 1.0, True):
        assert absent not in by_id
    with pytest.raises(KeyError):
        by_id[ids[-1] + 1]
    np.testing.assert_array_equal(coco.rows_of([ids[5], 12345, ids[0]]), [5, -1, 0])


def test_mpii_columns_and_head_boxes(data_dir, tmp_path):
    raw = json.loads((data_dir / "mpii" / "test_mpii.json").read_text())
    raw[1]["head_box"] = [11, 21, 41, 61]
    ann = tmp_path / "m.json"
    ann.write_text(json.dumps(raw + raw[:2]))  # two images seen again
    ds = load_dataset(f"mpii:{ann}:{data_dir}/mpii/images")
    assert ds.num_images == 5 and len(ds.instance_ids) == 7
    np.testing.assert_array_equal(ds.instance_ids, np.arange(7))
    np.testing.assert_array_equal(ds.image_index[5:], ds.image_index[:2])
    np.testing.assert_array_equal(ds.has_head_box, [0, 1, 0, 0, 0, 0, 1])
    np.testing.assert_allclose(ds.instances[1].head_box, [10, 20, 40, 60])
    assert ds.instances[0].head_box is None


def test_image_paths_resolved_like_path_resolve(tmp_path):
    """Folders resolved once, files looked at once: the same paths and errors as resolving each
    name whole (columns.image_path), symlinks and escapes included."""
    root, outside = tmp_path / "images", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    for f in (root / "a.jpg", root / "sub" / "a.jpg", outside / "o.jpg"):
        f.write_bytes(b"x")
    (root / "link_out.jpg").symlink_to(outside / "o.jpg")
    (root / "link_in.jpg").symlink_to(root / "sub" / "a.jpg")
    (root / "linkdir").symlink_to(outside)
    (root / "sublink").symlink_to(root / "sub")
    names = ["a.jpg", "sub/a.jpg", "link_out.jpg", "link_in.jpg", "linkdir/o.jpg",
             "sublink/a.jpg", "../images/a.jpg", "../images", "../outside/o.jpg", "/abs.jpg",
             "sub/../a.jpg", "a.jpg/", ".", "..", "", "a\x00b", 5, None, "missing/x.jpg",
             "sub//a.jpg", "./a.jpg", "sub/.", "sub/.."]
    resolve = columns.ImagePaths(root)

    def outcome(f, name):
        try:
            return str(f(name, "w"))
        except UniError as e:
            return f"error: {e}"

    for name in names * 2:  # the second round hits the folder cache
        assert outcome(resolve, name) == outcome(
            lambda n, w: columns.image_path(root, n, w), name), name
    assert outcome(resolve, "link_out.jpg").startswith("error: w: image path")


# --------------------------------------------------------------------------- problem order


def _ann(i: int, image_id: int = 1, **kw) -> dict:
    kp = [10.0 + i % 7, 20.0, 2] * 17
    return {"id": i, "image_id": image_id, "keypoints": kp, "bbox": [1, 2, 30, 40],
            "iscrowd": 0, "num_keypoints": 17, "area": 1200.0, **kw}


def _coco_file(tmp_path: Path, anns: list, images=None, tail: str = "") -> str:
    images = images if images is not None else [{"id": 1, "file_name": "a.jpg"}]
    f = tmp_path / "c.json"
    # annotations before images: the reader must not depend on the order of the fields
    text = json.dumps({"annotations": anns, "images": images})
    f.write_text(text[:-1] + tail if tail else text)
    return f"coco:{f}:{tmp_path}"


def _error(spec: str) -> str:
    with pytest.raises(UniError) as e:
        load_dataset(spec)
    return str(e.value)


@pytest.mark.parametrize("block", [1, 3, 2048])
def test_problems_in_documented_order(tmp_path, monkeypatch, block):
    monkeypatch.setattr(annotations, "_BLOCK", block)
    ok = [_ann(i) for i in range(30, 0, -1)]  # ids out of order in the file
    ds = load_dataset(_coco_file(tmp_path, ok))
    assert ds.instance_ids.tolist() == list(range(1, 31))
    # The smallest annotation id with a problem speaks, wherever it sits in the file.
    anns = [_ann(i) for i in range(30, 10, -1)] + [
        _ann(9, bbox=[1, 2, 0, 4]), _ann(40, image_id=7), _ann(5, image_id=7)]
    assert "annotation id 5 field 'image_id': no image with id 7" in _error(
        _coco_file(tmp_path, anns))
    # For one annotation its image comes before its area; a smaller id's area comes first.
    anns = [_ann(i) for i in range(1, 10)] + [_ann(20, image_id=7, area="x")]
    assert "annotation id 20 field 'image_id'" in _error(_coco_file(tmp_path, anns))
    anns[3] = _ann(4, area=[float("inf")])
    assert "annotation id 4 field 'area'" in _error(_coco_file(tmp_path, anns))
    # Ids before anything else about annotations, in file order: a repeat, then a bad id.
    anns = [_ann(i) for i in range(1, 10)] + [_ann(2), {"image_id": 1}]
    anns[0] = _ann(1, bbox=None)
    assert "annotations[9] field 'id': duplicate annotation id 2" in _error(
        _coco_file(tmp_path, anns))
    anns[4] = {"id": "5"}
    assert "annotations[4] field 'id': expected an integer id" in _error(
        _coco_file(tmp_path, anns))
    assert "outside the 64-bit" in _error(_coco_file(tmp_path, [_ann(2**64)]))
    # Images before annotations; and a file that is not JSON further on says so first.
    bad_images = [{"id": 1, "file_name": "a.jpg"}, {"id": 1, "file_name": "b.jpg"}]
    assert "images[1] field 'id': duplicate image id 1" in _error(
        _coco_file(tmp_path, anns, bad_images))
    assert "not valid JSON" in _error(_coco_file(tmp_path, anns, bad_images, tail="]"))


def _big_coco(tmp_path: Path, n: int, name: str) -> str:
    rng = random.Random(n)
    anns = [_ann(i + 1, image_id=1 + i % 50) for i in range(n)]
    rng.shuffle(anns)
    f = tmp_path / name
    f.write_text(json.dumps({"images": [{"id": j, "file_name": f"{j}.jpg"}
                                        for j in range(1, 51)], "annotations": anns}))
    return f"coco:{f}:{tmp_path}"


def test_loading_holds_arrays_not_person_objects(tmp_path, monkeypatch):
    """Peak Python memory while loading grows by the columns (~0.5 KB a person), not by the
    parsed file (~3 KB a person for json.load) or a record object per person (~4 KB). Ids out
    of order cost one column's copy while sorting."""
    monkeypatch.setenv("UNI_CACHE_DIR", "off")
    peaks = {}
    for n in (1_000, 7_000):
        spec = _big_coco(tmp_path, n, f"c{n}.json")
        tracemalloc.start()
        ds = load_dataset(spec)
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert len(ds.instance_ids) == n
        del ds
    per_person = (peaks[7_000] - peaks[1_000]) / 6_000
    assert per_person < 1500, per_person


# --------------------------------------------------------------------------- the cache


def test_cache_round_trip_and_invalidation(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("UNI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset_cache, "MIN_INSTANCES", 0)
    spec = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    first = load_dataset(spec)
    entries = list((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 1

    def no_parse(*_):
        raise AssertionError("parsed although cached")

    monkeypatch.setattr(datasets_module, "coco_columns", no_parse)
    again = load_dataset(spec)
    assert again.dataset_id == first.dataset_id and summarize(again) == summarize(first)
    for name in ("instance_ids", "image_index", "bboxes", "keypoints", "areas", "image_paths"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    with pytest.raises(AssertionError, match="parsed although cached"):
        load_dataset(f"halpe:{data_dir}/halpe/test_halpe.json:{tmp_path}")  # another root
    entries[0].write_bytes(entries[0].read_bytes()[:200])  # torn: ignored, parsed again
    with pytest.raises(AssertionError, match="parsed although cached"):
        load_dataset(spec)
    monkeypatch.undo()
    monkeypatch.setenv("UNI_CACHE_DIR", "off")
    monkeypatch.setattr(dataset_cache, "MIN_INSTANCES", 0)
    load_dataset(spec)
    assert dataset_cache.cache_dir() is None


def test_cache_follows_the_file(tmp_path, monkeypatch, data_dir):
    monkeypatch.setenv("UNI_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(dataset_cache, "MIN_INSTANCES", 0)
    raw = json.loads((data_dir / "coco" / "test_coco.json").read_text())
    ann = tmp_path / "c.json"
    ann.write_text(json.dumps(raw))
    spec = f"coco:{ann}:{data_dir}/coco/images"
    before = load_dataset(spec)
    raw["annotations"] = raw["annotations"][:5]
    ann.write_text(json.dumps(raw))
    after = load_dataset(spec)
    assert after.dataset_id != before.dataset_id
    assert len(after.instance_ids) < len(before.instance_ids)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2


def test_pose_samples_index_arrays(data_dir):
    from uniskel.student.data import PoseSamples, split_items

    sets = [load_dataset(f"coco:{data_dir}/coco/test_coco.json"),
            load_dataset(f"mpii:{data_dir}/mpii/test_mpii.json")]
    samples = PoseSamples(sets, (64, 128), augment=None)
    assert samples.items.dtype == np.int64 and samples.items.shape == (17, 2)
    train, held = split_items(sets, 0.25, 0)
    assert len(train) + len(held) == 17 and len(held) == 4
    samples = PoseSamples(sets, (64, 128), augment=None, instances=held)
    np.testing.assert_array_equal(samples.items, held)
    d, i = held[0]
    assert samples[0]["index"] == 0 and "image" in samples[0]
    assert sets[d].instance(i).instance_id == sets[d].instance_ids[i]
