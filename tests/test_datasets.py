"""Dataset readers on the real sample files, head boxes, and bad input (core/datasets.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import one_line_error
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniskel.core.datasets import (
    head_size,
    load_dataset,
    load_mpii_head_boxes,
    parse_spec,
    summarize,
)
from uniskel.core.errors import UniError
from uniskel.core.skeletons import UNIFIED_NAMES

U = {n: i for i, n in enumerate(UNIFIED_NAMES)}


@pytest.fixture(scope="module")
def coco(data_dir):
    return load_dataset(f"coco:{data_dir}/coco/test_coco.json")


@pytest.fixture(scope="module")
def mpii(data_dir):
    return load_dataset(f"mpii:{data_dir}/mpii/test_mpii.json")


@pytest.fixture(scope="module")
def halpe(data_dir):
    return load_dataset(f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images")


def _raw(path: Path):
    return json.loads(path.read_text())


def test_parse_spec(tmp_path):
    s = parse_spec(f"COCO:{tmp_path}/a.json")
    assert s.kind == "coco" and s.image_root == tmp_path / "images"
    s = parse_spec(f"mpii:{tmp_path}/a.json:{tmp_path}/imgs")
    assert s.image_root == tmp_path / "imgs"
    for bad in ("coco", "coco:", "foo:a.json", "coco:a:b:c", ":a.json"):
        with pytest.raises(UniError):
            parse_spec(bad)


def test_coco_counts_skip_crowd_and_empty(coco, data_dir):
    raw = _raw(data_dir / "coco" / "test_coco.json")
    kept = [a for a in raw["annotations"] if not a.get("iscrowd") and a["num_keypoints"] > 0]
    assert (coco.num_images, len(coco.instances)) == (4, 12) == (len(raw["images"]), len(kept))
    assert [i.instance_id for i in coco.instances] == sorted(a["id"] for a in kept)
    assert len(coco.dataset_id) == 64
    for inst in coco.instances:
        assert inst.image_path.is_file()


def test_coco_known_annotation(coco, data_dir):
    raw = {a["id"]: a for a in _raw(data_dir / "coco" / "test_coco.json")["annotations"]}
    inst = coco.by_id()[442619]
    assert inst.image_id == 785 and inst.image_path.name == "000000000785.jpg"
    np.testing.assert_allclose(inst.bbox, raw[442619]["bbox"])
    np.testing.assert_allclose(inst.bbox, [280.79, 44.73, 218.7, 346.68])
    assert inst.area == pytest.approx(raw[442619]["area"])
    kp = np.array(raw[442619]["keypoints"], float).reshape(17, 3)
    np.testing.assert_array_equal(inst.keypoints, kp)
    np.testing.assert_array_equal(inst.unified[:17], kp)
    assert (inst.unified[17:] == 0).all()  # pelvis, thorax, upper_neck, head_top unlabeled


def test_coco_summary_counts_labeled_keypoints(coco, data_dir):
    raw = _raw(data_dir / "coco" / "test_coco.json")
    kept = [a for a in raw["annotations"] if not a.get("iscrowd") and a["num_keypoints"] > 0]
    s = summarize(coco)
    assert (s["images"], s["instances"]) == (4, 12)
    for k, name in enumerate(UNIFIED_NAMES[:17]):
        assert s["keypoints"][name] == sum(a["keypoints"][3 * k + 2] > 0 for a in kept)
    assert all(s["keypoints"][n] == 0 for n in UNIFIED_NAMES[17:])


def test_mpii_counts_and_one_based_shift(mpii, data_dir):
    raw = _raw(data_dir / "mpii" / "test_mpii.json")
    assert (mpii.num_images, len(mpii.instances)) == (5, 5)
    for rec, inst in zip(raw, mpii.instances, strict=True):
        joints = np.array(rec["joints"], float)
        vis = np.array(rec["joints_vis"]) > 0
        np.testing.assert_allclose(inst.keypoints[vis, :2], joints[vis] - 1.0)
        assert (inst.keypoints[vis, 2] == 2).all() and (inst.keypoints[~vis, 2] == 0).all()
        # Box from (center, scale) in 0-based pixels: side 200·s, centre y + 15·s.
        c, s = np.array(rec["center"], float) - 1.0, rec["scale"]
        np.testing.assert_allclose(inst.bbox, [c[0] - 100 * s, c[1] + 15 * s - 100 * s,
                                               200 * s, 200 * s])
        assert inst.head_box is None
        # Mapped by name: MPII head_top → unified head_top; face unlabeled.
        for native, name in ((9, "head_top"), (0, "right_ankle"), (13, "left_shoulder")):
            np.testing.assert_array_equal(inst.unified[U[name]], inst.keypoints[native])
        assert (inst.unified[:5] == 0).all()


def test_halpe_maps_head_neck_hip(halpe, data_dir):
    raw = _raw(data_dir / "halpe" / "test_halpe.json")
    assert (halpe.num_images, len(halpe.instances)) == (4, 12)
    by_id = {a["id"]: a for a in raw["annotations"]}
    for inst in halpe.instances:
        kp = np.array(by_id[inst.instance_id]["keypoints"], float).reshape(-1, 3)[:26]
        np.testing.assert_array_equal(inst.keypoints, kp)
        np.testing.assert_array_equal(inst.unified[U["head_top"]], kp[17])
        np.testing.assert_array_equal(inst.unified[U["upper_neck"]], kp[18])
        np.testing.assert_array_equal(inst.unified[U["pelvis"]], kp[19])
        assert (inst.unified[U["thorax"]] == 0).all()
        assert inst.image_path.parent == (data_dir / "coco" / "images").resolve()
    assert summarize(halpe)["keypoints"]["head_top"] == 12


def _head_mat(path: Path, boxes_x1y1x2y2: np.ndarray) -> None:
    import scipy.io

    n = len(boxes_x1y1x2y2)
    hb = boxes_x1y1x2y2.reshape(n, 2, 2).transpose(1, 2, 0)  # (2 corners, 2 xy, N)
    scipy.io.savemat(str(path), {"headboxes_src": hb, "jnt_missing": np.zeros((16, n)),
                                 "pos_gt_src": np.zeros((16, 2, n)),
                                 "dataset_joints": np.array(["r_ankle"] * 16, dtype=object)})


def test_mpii_head_boxes_from_mat(tmp_path, data_dir):
    boxes = np.array([[11.0, 21.0, 41.0, 61.0], [1.0, 1.0, 31.0, 1.0], [5, 5, 6, 6],
                      [100, 50, 160, 130], [0, 0, 3, 4]], float)  # 1-based, like MATLAB
    mat = tmp_path / "mpii_gt_val.mat"
    _head_mat(mat, boxes)
    np.testing.assert_allclose(load_mpii_head_boxes(mat), boxes - 1.0)
    ds = load_dataset(f"mpii:{data_dir}/mpii/test_mpii.json", head_boxes=mat)
    sizes = [head_size(i.head_box) for i in ds.instances]
    np.testing.assert_allclose(sizes, [0.6 * 50.0, 0.6 * 30.0, 0.6 * math.sqrt(2), 0.6 * 100.0,
                                       0.6 * 5.0])


def test_mpii_head_box_count_mismatch(tmp_path, data_dir):
    mat = tmp_path / "h.mat"
    _head_mat(mat, np.zeros((3, 4)))
    with pytest.raises(UniError, match="5 persons but the head-box file has 3"):
        load_dataset(f"mpii:{data_dir}/mpii/test_mpii.json", head_boxes=mat)


def test_mpii_head_box_field_is_one_based(tmp_path, data_dir):
    raw = _raw(data_dir / "mpii" / "test_mpii.json")[:1]
    raw[0]["head_box"] = [11, 21, 41, 61]
    ann = tmp_path / "m.json"
    ann.write_text(json.dumps(raw))
    ds = load_dataset(f"mpii:{ann}:{data_dir}/mpii/images")
    np.testing.assert_allclose(ds.instances[0].head_box, [10, 20, 40, 60])


# ---------------------------------------------------------------- bad input, via the CLI


def _cli(args: list[str]):
    from click.testing import CliRunner

    from uniskel.cli import uni

    return CliRunner().invoke(uni, args)


def _coco_copy(tmp_path: Path, data_dir: Path, edit=None) -> str:
    raw = _raw(data_dir / "coco" / "test_coco.json")
    if edit:
        edit(raw)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(raw))
    return f"coco:{ann}:{data_dir}/coco/images"


def _set(path: tuple, value):
    def edit(raw):
        obj = raw
        for key in path[:-1]:
            obj = obj[key]
        obj[path[-1]] = value
    return edit


def _delete(path: tuple):
    def edit(raw):
        obj = raw
        for key in path[:-1]:
            obj = obj[key]
        del obj[path[-1]]
    return edit


BAD_COCO = {
    "missing field": (_delete(("annotations", 0, "bbox")), ["ann.json", "'bbox'", "442619"]),
    "wrong keypoint length": (_set(("annotations", 0, "keypoints"), [1, 2, 2] * 16),
                              ["ann.json", "'keypoints'", "expected 51", "got 48"]),
    "escaping path": (_set(("images", 0, "file_name"), "../../../etc/passwd"),
                      ["ann.json", "images[0]", "escapes"]),
    "zero bbox": (_set(("annotations", 0, "bbox"), [1, 2, 0, 5]), ["ann.json", "'bbox'"]),
    "nan": (_set(("annotations", 0, "bbox"), [1, float("nan"), 3, 5]),
            ["ann.json", "'bbox'", "NaN"]),
    "images not a list": (_set(("images",), {"a": 1}), ["ann.json", "'images'"]),
    "unknown image id": (_set(("annotations", 0, "image_id"), 999), ["ann.json", "'image_id'"]),
}


@pytest.mark.parametrize("case", sorted(BAD_COCO))
def test_bad_coco_input_one_line_exit_2(case, tmp_path, data_dir):
    edit, fragments = BAD_COCO[case]
    one_line_error(_cli(["inspect-data", _coco_copy(tmp_path, data_dir, edit)]),
                   *fragments)


def test_missing_file_invalid_json_unknown_format(tmp_path):
    one_line_error(_cli(["inspect-data", f"coco:{tmp_path}/none.json"]),
                   "none.json", "not found")
    bad = tmp_path / "bad.json"
    bad.write_text("{ not json")
    one_line_error(_cli(["inspect-data", f"coco:{bad}"]), "bad.json", "not valid JSON")
    one_line_error(_cli(["inspect-data", f"openpose:{bad}"]), "openpose", "dataset kind")


def test_bad_mpii_record_names_record_and_field(tmp_path, data_dir):
    raw = _raw(data_dir / "mpii" / "test_mpii.json")
    raw[2]["joints"] = raw[2]["joints"][:15]
    ann = tmp_path / "m.json"
    ann.write_text(json.dumps(raw))
    one_line_error(_cli(["inspect-data", f"mpii:{ann}"]),
                   "m.json", "record 2", "'joints'", "expected 32")
    raw = _raw(data_dir / "mpii" / "test_mpii.json")
    raw[1]["scale"] = float("nan")
    ann.write_text(json.dumps(raw))
    one_line_error(_cli(["inspect-data", f"mpii:{ann}"]), "record 1", "'scale'", "NaN")


def test_missing_head_box_file(tmp_path, data_dir):
    one_line_error(_cli(["inspect-data", f"mpii:{data_dir}/mpii/test_mpii.json",
                         "--head-boxes", str(tmp_path / "no.mat")]), "no.mat")


# ---------------------------------------------------------------- fuzzing the readers

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                               max_size=4),
    max_leaves=12)
keys_coco = st.sampled_from(["id", "image_id", "file_name", "keypoints", "bbox", "iscrowd",
                             "num_keypoints", "area", "category_id"])
near_valid_ann = st.fixed_dictionaries({}, optional={
    "id": st.integers(-3, 3) | json_values, "image_id": st.integers(-3, 3) | json_values,
    "keypoints": st.lists(st.integers(-2, 700) | json_values, max_size=52) | json_values,
    "bbox": st.lists(st.floats(-5, 50) | json_values, max_size=5) | json_values,
    "iscrowd": st.integers(0, 1) | json_values, "num_keypoints": st.integers(0, 17) | json_values,
    "area": json_values, "category_id": json_values})
near_valid_img = st.fixed_dictionaries({}, optional={
    "id": st.integers(-3, 3) | json_values,
    "file_name": st.sampled_from(["a.jpg", "", "../x.jpg", "/abs.jpg", "a\x00b"]) | json_values})
coco_like = st.fixed_dictionaries({}, optional={
    "images": st.lists(near_valid_img | json_values, max_size=3) | json_values,
    "annotations": st.lists(near_valid_ann | json_values, max_size=3) | json_values,
    "categories": json_values}) | json_values
mpii_like = st.lists(st.fixed_dictionaries({}, optional={
    "image": st.sampled_from(["a.jpg", "", "../x.jpg"]) | json_values,
    "center": st.lists(st.floats(-10, 10) | json_values, max_size=3) | json_values,
    "scale": st.floats(-1, 3) | json_values,
    "joints": st.lists(st.lists(st.floats(0, 9), min_size=2, max_size=2) | json_values,
                       min_size=15, max_size=17) | json_values,
    "joints_vis": st.lists(st.integers(0, 1) | json_values, min_size=15, max_size=17)
    | json_values,
    "head_box": st.lists(st.floats(0, 9) | json_values, max_size=5) | json_values,
}) | json_values, max_size=3) | json_values


def _loads_or_raises_unierror(spec: str) -> None:
    """A fuzzed file either loads into sane instances or raises one line of UniError."""
    try:
        ds = load_dataset(spec)
    except UniError as e:
        assert "\n" not in str(e)
        return
    for inst in ds.instances:
        assert inst.unified.shape == (21, 3) and np.isfinite(inst.bbox).all()
        assert inst.bbox[2] > 0 and inst.bbox[3] > 0 and np.isfinite(inst.keypoints).all()
    summarize(ds)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["coco", "halpe", "mpii"]), coco_data=coco_like, mpii_data=mpii_like)
def test_fuzz_readers_load_or_raise_unierror(tmp_path, kind, coco_data, mpii_data):
    ann = tmp_path / "fuzz.json"
    ann.write_text(json.dumps(mpii_data if kind == "mpii" else coco_data))
    _loads_or_raises_unierror(f"{kind}:{ann}:{tmp_path}")


def _paths(obj, prefix=()):
    """Every key path inside a JSON structure."""
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) \
        else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _sample(kind: str, data_dir: Path):
    if kind == "mpii":
        return _raw(data_dir / "mpii" / "test_mpii.json")[:2]
    raw = _raw(data_dir / kind / f"test_{kind}.json")
    raw["images"] = raw["images"][:2]
    ids = {im["id"] for im in raw["images"]}
    raw["annotations"] = [a for a in raw["annotations"] if a["image_id"] in ids][:3]
    return raw


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(["coco", "halpe", "mpii"]), data=st.data())
def test_fuzz_mutated_real_files_load_or_raise_unierror(tmp_path, data_dir, kind, data):
    """Real files with a few fields replaced by random JSON or deleted: deep fields get hit."""
    raw = _sample(kind, data_dir)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(raw) if p]
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        parent = raw
        for key in path[:-1]:
            parent = parent[key]
        if data.draw(st.booleans()):
            parent[path[-1]] = data.draw(json_values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
        else:
            parent.pop(path[-1])
    ann = tmp_path / "fuzz.json"
    ann.write_text(json.dumps(raw))
    root = data_dir / ("mpii" if kind == "mpii" else "coco") / "images"
    _loads_or_raises_unierror(f"{kind}:{ann}:{root}")
