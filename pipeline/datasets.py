"""Dataset readers: annotation files → one flat list of person instances.

A data spec names a dataset everywhere: ``FORMAT:ANNOTATIONS[:IMAGE_ROOT]`` with FORMAT in
coco | mpii | halpe and IMAGE_ROOT defaulting to ``images/`` beside the annotation file.
An instance is addressed by (dataset id = sha256 of the annotation file, instance id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UniError
from pipeline.files import file_sha256, json_int, read_json
from pipeline.geometry import mpii_bbox
from pipeline.skeletons import UNIFIED_NAMES, Skeleton, get_skeleton, native_to_unified

FORMATS = {"coco": "coco17", "mpii": "mpii16", "halpe": "halpe26"}


@dataclass(frozen=True)
class DataSpec:
    format: str
    annotations: Path
    image_root: Path

    def __str__(self) -> str:
        return f"{self.format}:{self.annotations}:{self.image_root}"


def parse_spec(spec: str | DataSpec) -> DataSpec:
    """'FORMAT:ANNOTATIONS[:IMAGE_ROOT]' → DataSpec (paths are not checked here)."""
    if isinstance(spec, DataSpec):
        return spec
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise UniError(f"data spec {spec!r}: expected FORMAT:ANNOTATIONS[:IMAGE_ROOT]")
    fmt = parts[0].lower()
    if fmt not in FORMATS:
        raise UniError(f"data spec {spec!r}: unknown format {parts[0]!r}; "
                       f"use one of {', '.join(FORMATS)}")
    ann = Path(parts[1])
    root = Path(parts[2]) if len(parts) == 3 else ann.parent / "images"
    return DataSpec(fmt, ann, root)


@dataclass(slots=True)
class Instance:
    """One annotated person. Keypoint arrays are (K, 3) float64 [x, y, v], v in {0, 1, 2}."""

    instance_id: int
    image_id: int
    image_path: Path
    bbox: np.ndarray  # (4,) x, y, w, h in image pixels: the person box crops are made from
    keypoints: np.ndarray  # (K, 3) native order
    unified: np.ndarray  # (21, 3); keypoints the dataset does not label have v = 0
    head_box: np.ndarray | None = None  # (4,) x1, y1, x2, y2 (MPII, when known)
    area: float = 0.0


@dataclass
class Dataset:
    spec: DataSpec
    skeleton: Skeleton
    dataset_id: str  # sha256 of the annotation file
    instances: list[Instance]
    num_images: int

    @property
    def format(self) -> str:
        return self.spec.format

    def by_id(self) -> dict[int, Instance]:
        return {inst.instance_id: inst for inst in self.instances}

    def read_annotations(self) -> dict | list:
        """The annotation file as parsed JSON, read again (not kept: it is most of a dataset's
        memory); UniError when the file changed since the dataset was loaded."""
        if file_sha256(self.spec.annotations) != self.dataset_id:
            raise UniError(f"{self.spec.annotations}: changed since it was loaded "
                           "(sha256 differs)")
        return read_json(self.spec.annotations)


def _image_path(root: Path, name: object, where: str) -> Path:
    if not isinstance(name, str) or not name:
        raise UniError(f"{where}: image file name must be a non-empty string")
    try:
        path = (root / name).resolve()
    except (OSError, ValueError) as e:  # NUL bytes, symlink loops
        raise UniError(f"{where}: bad image file name {name!r:.60} ({e})") from None
    if not path.is_relative_to(root.resolve()):
        raise UniError(f"{where}: image path {name!r} escapes the image root {root}")
    return path


def _floats(value: object, n: int | None, where: str) -> np.ndarray:
    """A flat list of finite numbers, of length n when given."""
    try:
        arr = np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError, OverflowError):
        raise UniError(f"{where}: expected a list of numbers") from None
    if n is not None and arr.size != n:
        raise UniError(f"{where}: expected {n} numbers, got {arr.size}")
    if not np.isfinite(arr).all():
        raise UniError(f"{where}: contains NaN or inf")
    return arr


def _field(record: object, key: str, where: str):
    if not isinstance(record, dict):
        raise UniError(f"{where}: expected an object, got {type(record).__name__}")
    if key not in record:
        raise UniError(f"{where}: missing field {key!r}")
    return record[key]


def _check_box(bbox: np.ndarray, where: str) -> None:
    if bbox[2] <= 0 or bbox[3] <= 0:
        raise UniError(f"{where}: bbox width and height must be positive, got {bbox.tolist()}")


def _by_id(data: dict, key: str, src: str, noun: str) -> dict[int, tuple[str, dict]]:
    """{id: (where, record)} of the list data[key]; UniError on a bad or duplicate id."""
    out = {}
    for i, record in enumerate(data[key]):
        where = f"{src}: {key}[{i}]"
        record_id = json_int(_field(record, "id", where), f"{where} field 'id'", "an integer id")
        if record_id in out:
            raise UniError(f"{where} field 'id': duplicate {noun} id {record_id}")
        out[record_id] = where, record
    return out


def _load_coco_like(spec: DataSpec, data: object, skeleton: Skeleton) -> tuple[list[Instance], int]:
    """COCO and Halpe: COCO-format JSON {images, annotations}; crowd / unlabeled people skipped."""
    src = str(spec.annotations)
    for key in ("images", "annotations"):
        if not isinstance(_field(data, key, src), list):
            raise UniError(f"{src}: field {key!r} must be a list")
    images = {image_id: _image_path(spec.image_root, _field(img, "file_name", where), where)
              for image_id, (where, img) in _by_id(data, "images", src, "image").items()}
    anns = _by_id(data, "annotations", src, "annotation")
    k = skeleton.num_keypoints
    instances = []
    for ann_id in sorted(anns):
        ann = anns[ann_id][1]
        where = f"{src}: annotation id {ann_id}"
        if ann.get("iscrowd", 0) or ann.get("num_keypoints", 1) == 0:
            continue
        kp = _floats(_field(ann, "keypoints", where), None, f"{where} field 'keypoints'")
        # Halpe ships 136 whole-body keypoints whose first 26 are the body.
        if kp.size % 3 or kp.size < 3 * k or (kp.size != 3 * k and spec.format != "halpe"):
            raise UniError(f"{where} field 'keypoints': expected {3 * k} numbers, got {kp.size}")
        kp = kp[: 3 * k].reshape(k, 3)
        if not (kp[:, 2] > 0).any():
            continue
        bbox = _floats(_field(ann, "bbox", where), 4, f"{where} field 'bbox'")
        _check_box(bbox, f"{where} field 'bbox'")
        image_id = json_int(_field(ann, "image_id", where), f"{where} field 'image_id'",
                            "an integer id")
        if image_id not in images:
            raise UniError(f"{where} field 'image_id': no image with id {image_id}")
        area = (_floats(ann["area"], 1, f"{where} field 'area'")[0] if "area" in ann
                else bbox[2] * bbox[3])
        instances.append(Instance(
            instance_id=ann_id, image_id=image_id, image_path=images[image_id],
            bbox=bbox, keypoints=kp, unified=native_to_unified(kp, skeleton), area=float(area)))
    return instances, len(images)


def _load_mpii(spec: DataSpec, data: object, skeleton: Skeleton,
               head_boxes: np.ndarray | None) -> tuple[list[Instance], int]:
    """MMPose's MPII JSON: a list of {image, center, scale, joints, joints_vis[, head_box]}.

    MPII coordinates are 1-based (MATLAB); instances are 0-based like everything else.
    """
    src = str(spec.annotations)
    if not isinstance(data, list):
        raise UniError(f"{src}: expected a list of MPII person records")
    if head_boxes is not None and len(head_boxes) != len(data):
        raise UniError(f"{src}: {len(data)} persons but the head-box file has {len(head_boxes)}")
    image_ids: dict[str, int] = {}
    instances = []
    for i, rec in enumerate(data):
        where = f"{src}: record {i}"
        name = _field(rec, "image", where)
        path = _image_path(spec.image_root, name, f"{where} field 'image'")
        image_id = image_ids.setdefault(name, len(image_ids))
        center = _floats(_field(rec, "center", where), 2, f"{where} field 'center'") - 1.0
        scale = _floats(_field(rec, "scale", where), 1, f"{where} field 'scale'")[0]
        if scale <= 0:
            raise UniError(f"{where} field 'scale': must be positive, got {scale}")
        joints = _floats(_field(rec, "joints", where), 32, f"{where} field 'joints'")
        vis = _floats(_field(rec, "joints_vis", where), 16, f"{where} field 'joints_vis'")
        kp = np.zeros((16, 3))
        kp[:, :2] = joints.reshape(16, 2) - 1.0
        kp[:, 2] = np.where(vis > 0, 2.0, 0.0)
        kp[kp[:, 2] == 0, :2] = 0.0
        if head_boxes is not None:
            head = head_boxes[i]
        elif "head_box" in rec:
            head = _floats(rec["head_box"], 4, f"{where} field 'head_box'") - 1.0
        else:
            head = None
        bbox = mpii_bbox(center, scale)
        instances.append(Instance(
            instance_id=i, image_id=image_id, image_path=path, bbox=bbox, keypoints=kp,
            unified=native_to_unified(kp, skeleton), head_box=head,
            area=float(bbox[2] * bbox[3])))
    return instances, len(image_ids)


def load_mpii_head_boxes(mat_path: Path) -> np.ndarray:
    """Official mpii_gt_val.mat → (N, 4) head boxes x1, y1, x2, y2, 0-based."""
    import scipy.io  # 0.2 s to import, more than the rest of this module: only .mat files need it

    if not Path(mat_path).is_file():
        raise UniError(f"{mat_path}: head-box file not found")
    try:
        mat = scipy.io.loadmat(str(mat_path))
    except Exception as e:  # scipy raises several types for a bad file
        raise UniError(f"{mat_path}: not a readable .mat file ({e})") from None
    if "headboxes_src" not in mat:
        raise UniError(f"{mat_path}: missing field 'headboxes_src'")
    boxes = np.asarray(mat["headboxes_src"], dtype=np.float64)  # (2, 2, N)
    if boxes.ndim != 3 or boxes.shape[:2] != (2, 2):
        raise UniError(f"{mat_path} field 'headboxes_src': expected shape (2, 2, N), "
                       f"got {boxes.shape}")
    return boxes.transpose(2, 0, 1).reshape(-1, 4) - 1.0


def load_dataset(spec: str | DataSpec, head_boxes: Path | None = None) -> Dataset:
    """Read a dataset named by a data spec; raises UniError naming the file and field at fault."""
    spec = parse_spec(spec)
    skeleton = get_skeleton(FORMATS[spec.format])
    data = read_json(spec.annotations)
    if spec.format == "mpii":
        hb = load_mpii_head_boxes(head_boxes) if head_boxes else None
        instances, n_images = _load_mpii(spec, data, skeleton, hb)
    else:
        instances, n_images = _load_coco_like(spec, data, skeleton)
    return Dataset(spec, skeleton, file_sha256(spec.annotations), instances, n_images)


def head_size(head_box: np.ndarray) -> float:
    """MPII head size: 0.6 × the diagonal of the head box (x1, y1, x2, y2)."""
    return 0.6 * math.hypot(head_box[2] - head_box[0], head_box[3] - head_box[1])


def summarize(dataset: Dataset) -> dict:
    """{"images", "instances", "keypoints": {unified name: labeled (v > 0) count}}."""
    counts = np.zeros(len(UNIFIED_NAMES), dtype=np.int64)
    for inst in dataset.instances:
        counts += inst.unified[:, 2] > 0
    return {"images": int(dataset.num_images), "instances": len(dataset.instances),
            "keypoints": {n: int(c) for n, c in zip(UNIFIED_NAMES, counts, strict=True)}}
