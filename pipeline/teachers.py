"""ONNX teachers: what a model declares about itself, and person crops → soft heatmaps.

A teacher is any ONNX pose model whose description is stamped into its metadata_props (keys
``uni.<field>``, values JSON) by ``describe_model`` / ``uni describe-teacher``. The description
says everything needed to run it — input size and normalisation, which outputs hold keypoints,
how to turn them into probabilities — so third-party models need no special cases.

Output of every teacher: (N, K, h, w) float32 non-negative soft heatmaps on the "store grid" in
the teacher's native keypoint order. Heatmap heads keep their native grid; SimCC heads are
turned into 2-D maps on the input/4 grid (outer product of the x and y marginals).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from uniskel.core.crops import DEFAULT_MEAN, DEFAULT_STD, normalize
from uniskel.core.errors import UniError
from uniskel.core.files import atomic_write, file_sha256
from uniskel.core.geometry import PADDING
from uniskel.core.heatmaps import merge_flipped
from uniskel.core.skeletons import SKELETONS, Skeleton
from uniskel.pipeline.devices import CUDA, provider_used, resolve_device, session_providers

HEADS = ("heatmap", "simcc")
ACTIVATIONS = ("none", "sigmoid", "softmax")
# SimCC maps land on the input/4 grid, like heatmap heads
# (docs/conventions.md "Crop and heatmap conventions").
SIMCC_STRIDE = 4
_PREFIX = "uni."


@dataclass(frozen=True)
class TeacherInfo:
    """A teacher's self-description, stored in its ONNX metadata_props as ``uni.<field>``.

    outputs: heatmap head → (name,); SimCC → (x name, y name); empty = the model's first one/two.
    num_keypoints: leading output channels that are keypoints (must equal the skeleton's count);
    any further channels are ignored. activation turns raw outputs into probabilities: heatmap
    heads 'none' (MSE-trained maps, negatives clipped) | 'sigmoid' | 'softmax' (over h×w);
    SimCC heads 'softmax' (logits) | 'none' (already probabilities).
    """

    name: str
    skeleton: str
    head: str
    input_wh: tuple[int, int]
    mean: tuple[float, float, float] = DEFAULT_MEAN
    std: tuple[float, float, float] = DEFAULT_STD
    bgr: bool = False
    simcc_split: float = 2.0
    outputs: tuple[str, ...] = ()
    num_keypoints: int = 0  # 0 = the skeleton's count
    activation: str = "none"
    padding: float = PADDING
    # The skeleton's whole definition, stamped into the model so that running it needs no
    # skeleton file (a user's skeleton); when absent (older models), the known one by name.
    skeleton_def: Skeleton | None = None

    def __post_init__(self) -> None:
        # JSON round trips give lists; keep tuples so infos compare and hash equal.
        for f in ("input_wh", "mean", "std", "outputs"):
            object.__setattr__(self, f, tuple(getattr(self, f)))
        if isinstance(self.skeleton_def, dict):
            object.__setattr__(self, "skeleton_def", Skeleton.from_json(
                self.skeleton_def, "teacher field 'skeleton_def'"))
        if self.skeleton_def is None and self.skeleton in SKELETONS:
            object.__setattr__(self, "skeleton_def", SKELETONS[self.skeleton])
        if not self.num_keypoints and self.skeleton_def is not None:
            object.__setattr__(self, "num_keypoints", self.skeleton_def.num_keypoints)

    def to_metadata(self) -> dict[str, str]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.skeleton_def is not None:
            values["skeleton_def"] = self.skeleton_def.to_json()
        return {_PREFIX + k: json.dumps(v) for k, v in values.items()}


_REQUIRED = ("name", "skeleton", "head", "input_wh")


def _check_fields(info: TeacherInfo, where: str) -> None:
    """Values that make sense on their own (no model needed)."""
    if info.skeleton_def is None:
        raise UniError(f"{where}: field 'skeleton': unknown {info.skeleton!r}; "
                       f"known: {', '.join(SKELETONS)} (or add it with --skeletons FILE)")
    if info.skeleton_def.name != info.skeleton:
        raise UniError(f"{where}: field 'skeleton_def': defines {info.skeleton_def.name!r}, "
                       f"not the skeleton {info.skeleton!r}")
    if info.head not in HEADS:
        raise UniError(f"{where}: field 'head': {info.head!r} is not one of {', '.join(HEADS)}")
    ok = ("softmax", "none") if info.head == "simcc" else ACTIVATIONS
    if info.activation not in ok:
        raise UniError(f"{where}: field 'activation': {info.activation!r} is not one of "
                       f"{', '.join(ok)} for a {info.head} head")
    if len(info.input_wh) != 2 or min(info.input_wh) <= 0:
        raise UniError(f"{where}: field 'input_wh': expected two positive sizes, "
                       f"got {list(info.input_wh)}")
    for f in ("mean", "std"):
        if len(getattr(info, f)) != 3:
            raise UniError(f"{where}: field {f!r}: expected 3 numbers")
    if min(info.std) <= 0 or info.simcc_split <= 0 or info.padding <= 0:
        raise UniError(f"{where}: fields 'std', 'simcc_split', 'padding' must be positive")
    k = info.skeleton_def.num_keypoints
    if info.num_keypoints != k:
        raise UniError(f"{where}: field 'num_keypoints': {info.num_keypoints} but skeleton "
                       f"{info.skeleton} has {k} keypoints")
    n_out = 2 if info.head == "simcc" else 1
    if info.outputs and len(info.outputs) != n_out:
        raise UniError(f"{where}: field 'outputs': a {info.head} head names {n_out} output(s), "
                       f"got {len(info.outputs)}")


def _dims(value_info) -> list[int | None]:
    """Static dims of an ONNX value as ints, symbolic ones as None."""
    return [d.dim_value if d.HasField("dim_value") else None
            for d in value_info.type.tensor_type.shape.dim]


def _load_onnx(path: Path):
    import onnx

    if not Path(path).is_file():
        raise UniError(f"{path}: model file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises several types for a bad file
        raise UniError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None


def _output_names(info: TeacherInfo, model_outputs: list[str]) -> tuple[str, ...]:
    return info.outputs or tuple(model_outputs[: 2 if info.head == "simcc" else 1])


def _check_model(info: TeacherInfo, model, where: str) -> None:
    """The model's input and outputs agree with what the description declares."""
    inputs = [i for i in model.graph.input
              if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise UniError(f"{where}: expected one image input, the model has {len(inputs)}")
    d = _dims(inputs[0])
    w, h = info.input_wh
    if len(d) != 4 or d[1] not in (3, None):
        raise UniError(f"{where}: input {inputs[0].name!r} has shape {d}, expected (N, 3, H, W)")
    if (d[2] is not None and d[2] != h) or (d[3] is not None and d[3] != w):
        raise UniError(f"{where}: field 'input_wh' is {w} wide, {h} high but input "
                       f"{inputs[0].name!r} is {d[3]} wide, {d[2]} high")
    outs = {o.name: _dims(o) for o in _infer_shapes(model).graph.output}
    _check_outputs(info, outs, where)


def _infer_shapes(model):
    """The model with output shapes inferred where exporters left them symbolic."""
    import onnx

    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference is best effort; Teacher checks real shapes on a probe run
        return model


def _check_output(shape: list[int | None], axes: tuple[str, ...], what: str, info: TeacherInfo,
                  where: str) -> None:
    """One output's rank is len(axes), and its axis 1 holds at least the keypoints."""
    if len(shape) != len(axes):
        raise UniError(f"{where}: {what} has rank {len(shape)}, "
                       f"expected {len(axes)} ({', '.join(axes)})")
    k = info.num_keypoints
    if shape[1] is not None and shape[1] < k:
        raise UniError(f"{where}: {what} has {shape[1]} channels, fewer "
                       f"than the {k} keypoints of {info.skeleton}")


def _check_outputs(info: TeacherInfo, outs: dict[str, list[int | None]], where: str) -> None:
    """Output shapes (None = unknown dim) agree with the declared head, keypoints and sizes."""
    w, h = info.input_wh
    names = _output_names(info, list(outs))
    for name in names:
        if name not in outs:
            raise UniError(f"{where}: field 'outputs': the model has no output {name!r} "
                           f"(it has {', '.join(outs)})")
    if info.head == "heatmap":
        _check_output(outs[names[0]], ("N", "K", "h", "w"), f"heatmap output {names[0]!r}",
                      info, where)
        return
    for name, size, axis in zip(names, (w, h), "xy", strict=True):
        s = outs[name]
        bins = round(size * info.simcc_split)
        _check_output(s, ("N", "K", "bins"), f"SimCC {axis} output {name!r}", info, where)
        if s[2] is not None and s[2] != bins:
            raise UniError(f"{where}: SimCC {axis} output {name!r} has {s[2]} bins, expected "
                           f"{size} x simcc_split {info.simcc_split} = {bins}")


def read_info(path: Path) -> TeacherInfo:
    """The TeacherInfo stamped into a model; UniError (one line) when missing or inconsistent."""
    model = _load_onnx(path)
    props = {p.key[len(_PREFIX):]: p.value for p in model.metadata_props
             if p.key.startswith(_PREFIX)}
    if not props:
        raise UniError(f"{path}: no uni teacher metadata; describe it first with "
                       "`uni describe-teacher MODEL --skeleton ... --head ...`")
    missing = [f for f in _REQUIRED if f not in props]
    if missing:
        raise UniError(f"{path}: teacher metadata lacks field(s) {', '.join(missing)}")
    known = {f.name for f in fields(TeacherInfo)}
    values = {}
    for key, raw in props.items():
        if key not in known:
            continue  # written by a newer uni; ignoring keeps old readers working
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            raise UniError(f"{path}: metadata field 'uni.{key}' is not JSON: "
                           f"{raw[:40]!r}") from None
    if values.get("skeleton_def") is not None:  # checked like a skeleton file, named here
        values["skeleton_def"] = Skeleton.from_json(values["skeleton_def"],
                                                    f"{path}: metadata field 'uni.skeleton_def'")
    try:
        info = TeacherInfo(**values)
    except TypeError as e:
        raise UniError(f"{path}: bad teacher metadata ({e})") from None
    _check_fields(info, str(path))
    _check_model(info, model, str(path))
    return info


def model_input_wh(path: Path) -> tuple[int, int] | None:
    """(W, H) of a model's image input when both are static, else None."""
    model = _load_onnx(path)
    init = {t.name for t in model.graph.initializer}
    d = _dims(next(i for i in model.graph.input if i.name not in init))
    return (d[3], d[2]) if len(d) == 4 and d[2] and d[3] else None


def describe_model(src: Path, info: TeacherInfo, dst: Path | None = None) -> Path:
    """Stamp `info` into the model's metadata (in place when dst is None); checked first."""
    import onnx

    dst = Path(dst or src)
    model = _load_onnx(src)
    _check_fields(info, str(src))
    _check_model(info, model, str(src))
    keep = [p for p in model.metadata_props if not p.key.startswith(_PREFIX)]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    for k, v in info.to_metadata().items():
        model.metadata_props.add(key=k, value=v)
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(dst, lambda p: onnx.save(model, str(p)))
    return dst


# --------------------------------------------------------------------------- running


def _softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def simcc_to_grid(p: np.ndarray, split: float, stride: float, size: int) -> np.ndarray:
    """1-D SimCC probabilities p: (..., bins) → mass per store-grid pixel: (..., size).

    Bin i sits at crop coordinate i/split and covers [i - 0.5, i + 0.5) in bin units; grid pixel
    j covers crop [j·stride - 0.5, (j+1)·stride - 0.5) (geometry's crop → heatmap convention).
    The mass of each pixel is read off the piecewise-linear CDF, so the total is preserved.
    """
    bins = p.shape[-1]
    cdf = np.concatenate([np.zeros(p.shape[:-1] + (1,)), np.cumsum(p, -1, dtype=np.float64)], -1)
    xp = np.arange(bins + 1) - 0.5  # bin boundaries, bin units
    x = split * (np.arange(size + 1) * stride - 0.5)  # grid pixel boundaries, bin units
    flat = cdf.reshape(-1, bins + 1)
    # np.interp(x, xp, row) for every row at once, with its arithmetic (the same bits): the
    # boundaries are shared, so one search serves all rows instead of a Python loop over them.
    j = np.clip(np.searchsorted(xp, x, side="right") - 1, 0, bins - 1)
    at = (flat[:, j + 1] - flat[:, j]) / (xp[j + 1] - xp[j]) * (x - xp[j]) + flat[:, j]
    at = np.where(x >= xp[-1], flat[:, -1:], np.where(x < xp[0], flat[:, :1], at))
    return np.diff(at, axis=-1).reshape(p.shape[:-1] + (size,)).astype(np.float32)


class Teacher:
    """An ONNX teacher ready to run: crops → (N, K, h, w) soft heatmaps in its native order."""

    def __init__(self, path: Path, providers: list[str] | None = None, threads: int = 0,
                 device: str = "auto", slot: int = 0):
        """providers: onnxruntime's, as given (tests); else from device (pipeline.devices:
        auto | cpu | cuda | cuda:N) and slot (the worker's, for round-robin over GPUs)."""
        import onnxruntime as ort

        self.path = Path(path)
        self.info = read_info(self.path)
        self.sha256 = file_sha256(self.path)
        self.skeleton = self.info.skeleton_def  # embedded, or the known one by name
        concrete = None if providers else resolve_device(device, slot)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # 0 = onnxruntime's default (all cores)
        opts.inter_op_num_threads = 1 if threads else 0
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts,
                providers=list(providers) if providers else session_providers(concrete))
        except Exception as e:  # onnxruntime raises its own types for bad graphs
            raise UniError(f"{self.path}: onnxruntime cannot load it ({str(e)[:200]})") from None
        self.provider = provider_used(self.session)  # what it really runs on
        if concrete and concrete != "cpu" and self.provider != f"{CUDA}:{concrete[5:]}":
            raise UniError(f"{self.path}: onnxruntime runs it on {self.provider}, not {concrete} "
                           "(--device)")
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.fixed_batch = inp.shape[0] if isinstance(inp.shape[0], int) else None
        self.output_names = list(_output_names(
            self.info, [o.name for o in self.session.get_outputs()]))
        w, h = self.info.input_wh
        # One probe run: the real output shapes, whatever the graph declares.
        probe = self._run(np.zeros((1, 3, h, w), np.float32))
        _check_outputs(self.info, {n: list(o.shape) for n, o in zip(
            self.output_names, probe, strict=True)}, str(self.path))
        if self.info.head == "simcc":
            self.heatmap_wh = (round(w / SIMCC_STRIDE), round(h / SIMCC_STRIDE))
        else:
            self.heatmap_wh = (probe[0].shape[3], probe[0].shape[2])

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        """x: (N, 3, H, W) float32 → raw outputs, batched as the model allows."""
        b = self.fixed_batch or len(x)
        parts = []
        for i in range(0, len(x), b):
            chunk = x[i:i + b]
            n = len(chunk)
            if n < b:  # fixed-batch model: pad the last chunk
                chunk = np.concatenate([chunk, np.zeros((b - n,) + chunk.shape[1:], chunk.dtype)])
            outs = self.session.run(self.output_names, {self.input_name: chunk})
            parts.append([o[:n] for o in outs])
        return [np.concatenate(p) for p in zip(*parts, strict=True)]

    def _to_heatmaps(self, outs: list[np.ndarray]) -> np.ndarray:
        """Raw outputs → (N, K, h, w) float32 non-negative maps on the store grid."""
        k, act = self.info.num_keypoints, self.info.activation
        if self.info.head == "heatmap":
            hm = outs[0][:, :k].astype(np.float32)
            if act == "sigmoid":
                return 1.0 / (1.0 + np.exp(-hm))
            if act == "softmax":
                n, _, h, w = hm.shape
                return _softmax(hm.reshape(n, k, h * w), -1).reshape(n, k, h, w)
            return np.maximum(hm, 0.0)
        w, h = self.heatmap_wh
        px, py = (o[:, :k].astype(np.float32) for o in outs)
        if act == "softmax":
            px, py = _softmax(px, -1), _softmax(py, -1)
        else:
            px, py = np.maximum(px, 0.0), np.maximum(py, 0.0)
        split = self.info.simcc_split
        gx = simcc_to_grid(px, split, self.info.input_wh[0] / w, w)  # (N, K, w)
        gy = simcc_to_grid(py, split, self.info.input_wh[1] / h, h)  # (N, K, h)
        return gy[..., :, None] * gx[..., None, :]

    def _check_crops(self, crops: np.ndarray) -> None:
        w, h = self.info.input_wh
        if crops.ndim != 4 or crops.shape[1:] != (h, w, 3):
            raise ValueError(f"crops must be (N, {h}, {w}, 3), got {crops.shape}")

    def predict(self, crops: np.ndarray, flip_test: bool = True) -> np.ndarray:
        """crops: (N, H, W, 3) uint8 RGB → (N, K, h, w) float32 soft heatmaps, native order.

        Flip test: core.heatmaps.merge_flipped of the crop's and its mirror's maps.
        """
        self._check_crops(crops)
        n = len(crops)
        if flip_test:  # mirrored as uint8: a quarter of the bytes of a float copy
            crops = np.concatenate([crops, crops[:, :, ::-1]])
        x = normalize(crops, self.info.mean, self.info.std, self.info.bgr)  # (N, 3, H, W)
        hm = self._to_heatmaps(self._run(x))
        if not flip_test:
            return hm
        return merge_flipped(hm[:n], hm[n:], self.skeleton.flip_index)

    def simcc_outputs(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """crops: (N, H, W, 3) uint8 RGB → a SimCC head's raw outputs, native order, no
        activation: simcc_x (N, K, Wb), simcc_y (N, K, Hb) float32 (what MMPose decodes)."""
        if self.info.head != "simcc":
            raise UniError(f"{self.path}: a {self.info.head} head has no SimCC outputs")
        self._check_crops(crops)
        x = normalize(crops, self.info.mean, self.info.std, self.info.bgr)  # (N, 3, H, W)
        k = self.info.num_keypoints
        px, py = self._run(x)
        return px[:, :k].astype(np.float32), py[:, :k].astype(np.float32)
