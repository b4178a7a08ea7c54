"""Teacher runtime: metadata round trip and checks, provider and device choice (GPU round-robin,
the refusal of cuda where it cannot run), heatmap / SimCC outputs, flip test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from conftest import make_heatmap_teacher, make_simcc_teacher
from hypothesis import given, settings
from hypothesis import strategies as st

from uniskel.core.crops import normalize
from uniskel.core.errors import UniError
from uniskel.core.skeletons import SKELETONS
from uniskel.pipeline import devices
from uniskel.pipeline.teachers import Teacher, TeacherInfo, describe_model, read_info, simcc_to_grid

UNI = [sys.executable, "-m", "uniskel"]  # the installed package's uni command

CPU = ["CPUExecutionProvider"]
REPO = Path(__file__).resolve().parents[1]


def _raw(path: Path, crops: np.ndarray, info: TeacherInfo) -> list[np.ndarray]:
    """A direct onnxruntime run, independent of Teacher."""
    sess = ort.InferenceSession(str(path), providers=CPU)
    x = normalize(crops, info.mean, info.std, info.bgr)
    return sess.run(None, {sess.get_inputs()[0].name: x})


def test_metadata_round_trip(heatmap_teacher, tmp_path):
    info = read_info(heatmap_teacher)
    assert info.skeleton == "coco17" and info.head == "heatmap" and info.input_wh == (48, 64)
    assert info.num_keypoints == 17 and info.activation == "sigmoid"
    other = TeacherInfo(name="b", skeleton="coco17", head="heatmap", input_wh=(48, 64),
                        mean=(0, 0, 0), std=(255, 255, 255), bgr=True, padding=1.5)
    out = describe_model(heatmap_teacher, other, tmp_path / "b.onnx")
    assert read_info(out) == other
    assert read_info(heatmap_teacher) == info  # --out leaves the source alone


def _metadata_error(path: Path) -> str:
    """read_info(path)'s UniError: one line naming the file. (Not conftest.one_line_error, which
    checks a CLI run.)"""
    with pytest.raises(UniError) as e:
        read_info(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    return msg


def test_missing_and_mismatched_metadata(tmp_path, heatmap_teacher):
    bare = make_heatmap_teacher(tmp_path / "bare.onnx")
    assert "no uni teacher metadata" in _metadata_error(bare)

    def stamp(name: str, **kw) -> Path:
        model = onnx.load(str(heatmap_teacher))
        props = {p.key: p.value for p in model.metadata_props}
        props.update({f"uni.{k}": v for k, v in kw.items()})
        del model.metadata_props[:]
        for k, v in props.items():
            model.metadata_props.add(key=k, value=v)
        onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    assert "'outputs'" in _metadata_error(stamp("a.onnx", outputs='["nope"]'))
    # 17 channels cannot hold the 21 unified keypoints.
    assert "17 channels" in _metadata_error(
        stamp("b.onnx", skeleton='"unified21"', num_keypoints="21", skeleton_def="null"))
    # The embedded definition must be the named skeleton's.
    assert "'uni.skeleton_def'" in _metadata_error(stamp("b2.onnx", skeleton_def='{"name": 1}'))
    assert "defines 'coco17'" in _metadata_error(stamp("b3.onnx", skeleton='"unified21"'))
    assert "input_wh" in _metadata_error(stamp("c.onnx", input_wh="[64, 64]"))
    assert "'head'" in _metadata_error(stamp("d.onnx", head='"regression"'))
    model = onnx.load(str(heatmap_teacher))
    keep = [p for p in model.metadata_props if p.key != "uni.skeleton"]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    onnx.save(model, str(tmp_path / "e.onnx"))
    assert "skeleton" in _metadata_error(tmp_path / "e.onnx")


def test_simcc_bins_must_match_input(tmp_path):
    path = make_simcc_teacher(tmp_path / "s.onnx", k=16, split=3.0)  # 144 / 192 bins
    info = TeacherInfo(name="s", skeleton="mpii16", head="simcc", input_wh=(48, 64),
                       activation="softmax", simcc_split=2.0)
    with pytest.raises(UniError, match="144 bins, expected 48 x simcc_split 2.0 = 96"):
        describe_model(path, info)
    with pytest.raises(UniError, match="rank 4"):  # a heatmap model declared as SimCC
        describe_model(make_heatmap_teacher(tmp_path / "h.onnx", k=16), info)


def test_creating_a_teacher_is_quiet(heatmap_teacher, capfd):
    devices.cuda_problem.cache_clear()
    providers = devices.pick_providers()
    t = Teacher(heatmap_teacher)
    t.predict(np.zeros((1, 64, 48, 3), np.uint8))
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    assert providers[-1] == "CPUExecutionProvider"
    assert t.session.get_providers()[0] == providers[0]
    assert t.provider.startswith(providers[0])  # "CUDAExecutionProvider:0" on a GPU


# --------------------------------------------------------------------------- devices


def test_parse_device():
    assert [devices.parse_device(d) for d in ("auto", " CPU", "cuda", "cuda:3")] == [
        "auto", "cpu", "cuda", "cuda:3"]
    for bad in ("gpu", "cuda:", "cuda:x", "cuda:1:2", ""):
        with pytest.raises(UniError, match="expected one of auto, cpu, cuda, cuda:N") as e:
            devices.parse_device(bad)
        assert "\n" not in str(e.value)


def _machine(monkeypatch, gpus: int) -> None:
    """Make pipeline.devices see `gpus` working GPUs (0: CUDA cannot run)."""
    monkeypatch.setattr(devices, "cuda_problem", lambda: None if gpus else "no NVIDIA driver")
    monkeypatch.setattr(devices, "cuda_device_count", lambda: gpus)


def test_device_resolution_and_round_robin(monkeypatch):
    _machine(monkeypatch, 0)
    assert devices.resolve_device("auto", 3) == devices.resolve_device("cpu") == "cpu"
    for d in ("cuda", "cuda:0"):
        with pytest.raises(UniError, match=f"--device {d}: CUDA cannot run here "
                                           r"\(no NVIDIA driver\)"):
            devices.resolve_device(d)
    _machine(monkeypatch, 2)
    # Workers 0..3 (LocalCluster names) over 2 GPUs: round-robin through device_id.
    slots = [devices.worker_slot(n, f"tcp://h:{n}", None) for n in range(4)]
    assert [devices.resolve_device("cuda", s) for s in slots] == [
        "cuda:0", "cuda:1", "cuda:0", "cuda:1"]
    assert [devices.resolve_device("auto", s) for s in slots][:2] == ["cuda:0", "cuda:1"]
    assert devices.resolve_device("cuda:1", 0) == "cuda:1"
    assert devices.resolve_device("cpu") == "cpu"
    with pytest.raises(UniError, match="cuda:2: this process sees 2 GPU"):
        devices.resolve_device("cuda:2")
    assert devices.session_providers("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert devices.session_providers("cpu") == ["CPUExecutionProvider"]
    # `dask worker` processes are named by address: their rank on their host.
    workers = {"tcp://a:9": {"host": "a"}, "tcp://a:7": {"host": "a"},
               "tcp://b:8": {"host": "b"}, "tcp://a:8": {"host": "a"}}
    assert [devices.worker_slot(a, a, workers) for a in sorted(workers)] == [0, 1, 2, 0]
    assert devices.worker_slot("7", "tcp://a:9", workers) == 7  # a numeric --name


def test_teacher_refuses_cuda_where_it_cannot_run(heatmap_teacher, tiny_student_run, tmp_path):
    t = Teacher(heatmap_teacher, device="cpu")
    assert t.provider == "CPUExecutionProvider"
    if devices.cuda_problem() is None:
        pytest.skip("CUDA runs here")
    with pytest.raises(UniError, match="--device cuda: CUDA cannot run here"):
        Teacher(heatmap_teacher, device="cuda")
    image = sorted((REPO / "samples/coco/images").iterdir())[0]
    uni = [*UNI]
    for cmd, words in (
            (["predict", str(heatmap_teacher), str(image), "--out", str(tmp_path / "p")],
             "CUDA cannot run here"),
            (["predict", str(tiny_student_run), str(image), "--out", str(tmp_path / "p")],
             "torch sees no usable GPU"),
            (["evaluate", str(heatmap_teacher), "--data",
              f"coco:{REPO / 'samples/coco/test_coco.json'}"], "CUDA cannot run here")):
        r = subprocess.run(uni + cmd + ["--device", "cuda:0"], cwd=REPO, capture_output=True,
                           text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr


def test_heatmap_teacher_matches_onnxruntime(heatmap_teacher, coco_crops):
    t = Teacher(heatmap_teacher, providers=CPU)
    assert t.heatmap_wh == (12, 16) and t.fixed_batch is None
    got = t.predict(coco_crops, flip_test=False)
    (raw,) = _raw(heatmap_teacher, coco_crops, t.info)
    np.testing.assert_allclose(got, 1 / (1 + np.exp(-raw)), rtol=1e-5, atol=1e-6)
    assert got.dtype == np.float32 and got.shape == (12, 17, 16, 12)


def test_extra_channels_and_relu_activation(tmp_path, coco_crops):
    path = make_heatmap_teacher(tmp_path / "x.onnx", k=16, extra=3)
    describe_model(path, TeacherInfo(name="x", skeleton="mpii16", head="heatmap",
                                     input_wh=(48, 64), activation="none"))
    t = Teacher(path, providers=CPU)
    got = t.predict(coco_crops[:3], flip_test=False)
    (raw,) = _raw(path, coco_crops[:3], t.info)
    assert raw.shape[1] == 19 and got.shape[1] == 16
    np.testing.assert_allclose(got, np.maximum(raw[:, :16], 0), rtol=1e-5, atol=1e-6)
    assert (raw[:, :16] < 0).any()  # the clip did something


def test_flip_test_is_mirror_equivariant(heatmap_teacher, simcc_teacher, coco_crops):
    """With flip test, predict(mirror(crop)) == mirror + swap(predict(crop)) for any model."""
    for path in (heatmap_teacher, simcc_teacher):
        t = Teacher(path, providers=CPU)
        a = t.predict(coco_crops[:4])
        b = t.predict(np.ascontiguousarray(coco_crops[:4, :, ::-1]))
        flip_index = SKELETONS[t.info.skeleton].flip_index
        np.testing.assert_allclose(b, a[:, flip_index, :, ::-1], rtol=1e-5, atol=1e-7)
        plain = t.predict(coco_crops[:4], flip_test=False)
        assert not np.allclose(a, plain, atol=1e-4)  # the flipped run was actually used


def test_flip_test_averages_the_mirrored_run(heatmap_teacher, coco_crops):
    t = Teacher(heatmap_teacher, providers=CPU)
    crops = coco_crops[:3]
    (raw,) = _raw(heatmap_teacher, crops, t.info)
    (raw_f,) = _raw(heatmap_teacher, np.ascontiguousarray(crops[:, :, ::-1]), t.info)
    sig = 1 / (1 + np.exp(-raw))
    sig_f = 1 / (1 + np.exp(-raw_f))
    # coco17: channel 1 (left_eye) of the mirrored run is the right eye, and so on.
    swap = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
    want = (sig + sig_f[:, swap, :, ::-1]) / 2
    np.testing.assert_allclose(t.predict(crops), want, rtol=1e-5, atol=1e-6)


def _brute_force_grid(p: np.ndarray, split: float, stride: float, size: int) -> np.ndarray:
    """Spread each bin's mass uniformly over its crop interval, bucket fine sub-samples."""
    sub = 64
    offsets = (np.arange(sub) + 0.5) / sub - 0.5
    out = np.zeros(size)
    for i, mass in enumerate(p):
        x_crop = (i + offsets) / split
        x_grid = (x_crop + 0.5) / stride - 0.5
        j = np.floor(x_grid + 0.5).astype(int)
        ok = (j >= 0) & (j < size)
        np.add.at(out, j[ok], mass / sub)
    return out


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 95), st.floats(0.3, 3.0), st.sampled_from([2.0, 3.0]))
def test_simcc_to_grid_mass_and_peak(centre, width, split):
    w_in, stride = 48, 4.0
    bins = round(w_in * split)
    centre = centre * bins // 96
    x = np.arange(bins)
    p = np.exp(-0.5 * ((x - centre) / width) ** 2)
    p /= p.sum()
    grid = simcc_to_grid(p[None], split, stride, w_in // 4)[0]
    np.testing.assert_allclose(grid, _brute_force_grid(p, split, stride, w_in // 4), atol=2e-3)
    # The peak lands on the grid pixel holding the marginal's peak crop coordinate.
    peak_grid = (centre / split + 0.5) / stride - 0.5
    assert abs(grid.argmax() - peak_grid) <= 0.5 + 1e-9 + 1.0 / (split * stride)
    # Mass is kept for the part of each bin's crop interval that lies on the grid.
    lo, hi = (np.arange(bins) - 0.5) / split, (np.arange(bins) + 0.5) / split
    on_grid = np.clip(np.minimum(hi, w_in - 0.5) - np.maximum(lo, -0.5), 0, None) * split
    assert grid.sum() == pytest.approx((p * on_grid).sum(), abs=1e-5)


def test_simcc_teacher_is_outer_product_of_marginals(simcc_teacher, coco_crops):
    t = Teacher(simcc_teacher, providers=CPU)
    assert t.heatmap_wh == (12, 16)
    hm = t.predict(coco_crops[:4], flip_test=False)  # (4, 16, 16, 12)
    raw_x, raw_y = _raw(simcc_teacher, coco_crops[:4], t.info)
    px = np.exp(raw_x - raw_x.max(-1, keepdims=True))
    px /= px.sum(-1, keepdims=True)
    py = np.exp(raw_y - raw_y.max(-1, keepdims=True))
    py /= py.sum(-1, keepdims=True)
    for n in range(4):
        for k in range(16):
            gx = _brute_force_grid(px[n, k], 2.0, 4.0, 12)
            gy = _brute_force_grid(py[n, k], 2.0, 4.0, 16)
            np.testing.assert_allclose(hm[n, k], np.outer(gy, gx), atol=2e-4)
            y, x = np.unravel_index(hm[n, k].argmax(), hm[n, k].shape)
            assert (x, y) == (gx.argmax(), gy.argmax())


def test_fixed_batch_model_runs_one_crop_at_a_time(tmp_path, heatmap_teacher, coco_crops):
    model = onnx.load(str(heatmap_teacher))
    for v in list(model.graph.input) + list(model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, str(tmp_path / "fixed.onnx"))
    fixed = Teacher(tmp_path / "fixed.onnx", providers=CPU)
    assert fixed.fixed_batch == 1
    want = Teacher(heatmap_teacher, providers=CPU).predict(coco_crops[:5])
    np.testing.assert_allclose(fixed.predict(coco_crops[:5]), want, rtol=1e-5, atol=1e-6)


def test_cli_describe_teacher(tmp_path):
    bare = make_simcc_teacher(tmp_path / "s.onnx", k=16)
    uni = [*UNI]
    r = subprocess.run(uni + ["describe-teacher", str(bare), "--skeleton", "mpii16", "--head",
                              "simcc", "--name", "mpii-t", "--mean", "0,0,0", "--std",
                              "255,255,255", "--out", str(tmp_path / "d.onnx")],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    info = read_info(tmp_path / "d.onnx")
    assert (info.name, info.input_wh, info.activation, info.std) == (
        "mpii-t", (48, 64), "softmax", (255.0, 255.0, 255.0))
    r = subprocess.run(uni + ["describe-teacher", str(bare), "--skeleton", "coco17", "--head",
                              "heatmap"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "rank 3" in r.stderr


def test_cli_describe_teacher_writes_a_copy_unless_in_place(tmp_path):
    """Issue 16: the user's model file is left alone (same sha256) unless --in-place."""
    from click.testing import CliRunner

    from uniskel.cli import uni
    from uniskel.core.files import file_sha256

    bare = make_simcc_teacher(tmp_path / "s.onnx", k=16)
    before = file_sha256(bare)
    args = ["describe-teacher", str(bare), "--skeleton", "mpii16", "--head", "simcc"]
    res = CliRunner().invoke(uni, args)
    copy = tmp_path / "s.described.onnx"
    assert res.exit_code == 0, res.output
    assert file_sha256(bare) == before and f"wrote {copy}, a described copy" in res.stderr
    assert read_info(copy).name == "s" and read_info(copy).skeleton == "mpii16"
    with pytest.raises(UniError, match="no uni teacher metadata"):
        read_info(bare)
    res = CliRunner().invoke(uni, [*args, "--in-place", "--out", str(tmp_path / "x.onnx")])
    assert res.exit_code == 2 and res.output.count("\n") == 1 and "not both" in res.output
    res = CliRunner().invoke(uni, [*args, "--in-place"])
    assert res.exit_code == 0 and f"rewrote {bare} in place" in res.stderr, res.output
    assert file_sha256(bare) != before and read_info(bare).skeleton == "mpii16"


def test_cli_describe_teacher_input_size_is_h_by_w(tmp_path):
    bare = make_simcc_teacher(tmp_path / "s.onnx", k=16)  # input 64 high, 48 wide
    uni = [*UNI, "describe-teacher", str(bare), "--skeleton", "mpii16",
           "--head", "simcc", "--out", str(tmp_path / "d.onnx"), "--input-size"]
    r = subprocess.run(uni + ["64x48"], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert read_info(tmp_path / "d.onnx").input_wh == (48, 64)
    for size, words in (("48x64", "64 wide, 48 high"), ("64", "HxW")):
        r = subprocess.run(uni + [size], cwd=REPO, capture_output=True, text=True)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and words in r.stderr, r.stderr
