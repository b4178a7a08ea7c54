"""Regenerate the MMPose 1.3.2 reference fixtures beside this file (README.md here says how to
build the scratch venv it needs); uni itself never imports MMPose.

    /tmp/mmvenv/bin/python tests/data/mmpose_ref/make_reference.py [--ckpt-dir DIR] [--time-step]
"""

from __future__ import annotations

import argparse
import importlib.abc
import importlib.machinery
import importlib.util
import json
import statistics
import sys
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
TESTS = HERE.parents[1]
# name → (deepen_factor, widen_factor, head in_channels), as configs/body_2d_keypoint/rtmpose/coco
ARCHS = {"rtmpose-t": (0.167, 0.375, 384), "rtmpose-s": (0.33, 0.5, 512),
         "rtmpose-m": (0.67, 0.75, 768)}
SIGMA = (4.9, 5.66)  # the 256x192 configs' SimCCLabel sigma
SPLIT = 2.0
EXTRA = ("rtmpose-t", 21, (256, 256))  # another K and input size, to prove the build is general


def _ref():
    """tests/mmpose_ref.py, loaded by path (tests/ is no package)."""
    spec = importlib.util.spec_from_file_location("mmpose_ref", TESTS / "mmpose_ref.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Answers every import of mmcv.ops… and xtcocotools… with an empty module whose attributes
    are a class that raises when used: mmcv-lite has no compiled ops and xtcocotools needs a
    compiler, yet mmpose/mmdet import them at module level; nothing here calls them."""

    PREFIXES = ("mmcv.ops", "xtcocotools")

    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + ".") for p in self.PREFIXES):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        class Missing:
            def __init__(self, *args, **kwargs):
                raise RuntimeError(f"{module.__name__} is stubbed")

        def attr(name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return Missing

        module.__path__ = []
        module.__getattr__ = attr


def _stub_compiled() -> None:
    sys.meta_path.insert(0, _StubFinder())


def _config(arch: str, num_keypoints: int, input_wh: tuple[int, int]) -> dict:
    """The TopdownPoseEstimator of configs/body_2d_keypoint/rtmpose/coco/rtmpose-*_8xb256-420e_
    coco-256x192.py, BN for SyncBN, no data preprocessor or pretrained init."""
    deepen, widen, channels = ARCHS[arch]
    codec = dict(type="SimCCLabel", input_size=input_wh, sigma=SIGMA, simcc_split_ratio=SPLIT,
                 normalize=False, use_dark=False)
    return dict(
        type="TopdownPoseEstimator",
        backbone=dict(_scope_="mmdet", type="CSPNeXt", arch="P5", expand_ratio=0.5,
                      deepen_factor=deepen, widen_factor=widen, out_indices=(4,),
                      channel_attention=True, norm_cfg=dict(type="BN"),
                      act_cfg=dict(type="SiLU")),
        head=dict(type="RTMCCHead", in_channels=channels, out_channels=num_keypoints,
                  input_size=input_wh, in_featuremap_size=tuple(s // 32 for s in input_wh),
                  simcc_split_ratio=SPLIT, final_layer_kernel_size=7,
                  gau_cfg=dict(hidden_dims=256, s=128, expansion_factor=2, dropout_rate=0.,
                               drop_path=0., act_fn="SiLU", use_rel_bias=False, pos_enc=False),
                  loss=dict(type="KLDiscretLoss", use_target_weight=True, beta=10.,
                            label_softmax=True),
                  decoder=codec),
        test_cfg=dict(flip_test=True))


def _build(arch: str, num_keypoints: int, input_wh: tuple[int, int]):
    # MMPose exists only in the scratch venv (README.md), so it is imported here, not at the top.
    import mmpose.models  # noqa: F401 — registers the models (register_all_modules would need
    from mmengine.registry import init_default_scope  # torchvision, for the visualizer)
    from mmpose.registry import MODELS

    init_default_scope("mmpose")
    return MODELS.build(_config(arch, num_keypoints, input_wh))


def _shapes(model) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(v.shape)) for k, v in model.state_dict().items()]


def _complexity(model, input_wh: tuple[int, int]) -> dict:
    """FLOPs and params as tools/analysis_tools/get_flops.py reports them (forward = _forward)."""
    from mmengine.analysis import get_model_complexity_info

    model.forward = model._forward
    info = get_model_complexity_info(model, (3, input_wh[1], input_wh[0]), show_table=False,
                                     show_arch=False)
    del model.forward
    return {"flops": int(info["flops"]), "flops_str": info["flops_str"],
            "params": int(info["params"]), "params_str": info["params_str"]}


def _outputs(ref, model, input_wh: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    model.load_state_dict(ref.reference_state_dict(_shapes(model), seed=0), strict=True)
    model.eval()
    with torch.no_grad():
        x, y = model.head(model.backbone(ref.reference_input(input_wh, seed=1)))
    return x.numpy().astype(np.float32), y.numpy().astype(np.float32)


def keys_and_outputs(ref) -> dict:
    """rtmpose_keys.json + outputs.npz; returns the built models' shapes (for checkpoints)."""
    keys, arrays, shapes = {}, {}, {}
    runs = [(a, 17, (192, 256)) for a in ARCHS] + [EXTRA]
    for arch, k, wh in runs:
        name = arch if (k, wh) == (17, (192, 256)) else f"{arch}_k{k}_{wh[0]}x{wh[1]}"
        model = _build(arch, k, wh)
        shapes[name] = _shapes(model)
        entry = {"arch": arch, "num_keypoints": k, "input_wh": list(wh),
                 "num_params": sum(p.numel() for p in model.parameters()),
                 "keys": [[key, list(s)] for key, s in shapes[name]]}
        try:
            entry["complexity"] = _complexity(model, wh)
        except Exception as e:  # noqa: BLE001 — recorded, not fatal: the keys are what matters
            entry["complexity"] = {"error": f"{type(e).__name__}: {e}"}
        keys[name] = entry
        arrays[f"{name}/simcc_x"], arrays[f"{name}/simcc_y"] = _outputs(ref, model, wh)
        print(name, entry["num_params"], entry["complexity"], flush=True)
    (HERE / "rtmpose_keys.json").write_text(json.dumps(keys, indent=1) + "\n")
    np.savez_compressed(HERE / "outputs.npz", **arrays)
    return shapes


def _listed(a: np.ndarray) -> list:
    return np.asarray(a).tolist()


def simcc_cases() -> None:
    """simcc_cases.json: SimCCLabel encodings, get_simcc_maximum / decode, flip_vectors and
    KLDiscretLoss on small inputs."""
    from mmpose.codecs import SimCCLabel
    from mmpose.codecs.utils import get_simcc_maximum
    from mmpose.models.losses import KLDiscretLoss
    from mmpose.models.utils.tta import flip_vectors

    wh = (192, 256)
    codec = SimCCLabel(input_size=wh, sigma=SIGMA, simcc_split_ratio=SPLIT, normalize=False,
                       use_dark=False)
    # crop px: fractional, a half bin (rounds to even), both borders, just past the right edge
    # (3σ window still on the bins), far outside, invisible, slightly negative.
    points = np.array([[50.3, 100.7], [10.25, 33.75], [0.0, 0.0], [191.5, 255.5],
                       [192.0, 256.0], [-30.0, 300.0], [96.0, 128.0], [-2.0, 10.6]])
    visible = np.array([1, 1, 1, 1, 1, 1, 0, 1], dtype=np.float32)
    encode = []
    for idx in ([0, 1, 2], [3, 4, 5], [6, 7]):
        enc = codec.encode(points[None, idx], visible[None, idx])
        encode.append({"points": _listed(points[idx]), "visible": _listed(visible[idx] > 0.5),
                       "input_wh": list(wh), "sigma": list(SIGMA), "split": SPLIT,
                       "target_x": _listed(enc["keypoint_x_labels"][0]),
                       "target_y": _listed(enc["keypoint_y_labels"][0]),
                       "keypoint_weights": _listed(enc["keypoint_weights"][0])})

    rng = np.random.RandomState(3)
    simcc_x = rng.randn(2, 3, 12).astype(np.float32)
    simcc_y = rng.randn(2, 3, 16).astype(np.float32)
    simcc_x[0, 1] = -np.abs(simcc_x[0, 1]) - 0.1  # all-negative row: location -1, score < 0
    simcc_y[1, 2] = -np.abs(simcc_y[1, 2]) - 0.1  # negative on y only: the min score is y's
    simcc_x[1, 0, [2, 7]] = simcc_x[1, 0].max() + 1.0  # a tie: the first maximum wins
    locs, vals = get_simcc_maximum(simcc_x.copy(), simcc_y.copy())
    coords, scores = codec.decode(simcc_x.copy(), simcc_y.copy())
    decode = {"simcc_x": _listed(simcc_x), "simcc_y": _listed(simcc_y), "split": SPLIT,
              "locs": _listed(locs), "vals": _listed(vals),
              "coords": _listed(coords), "scores": _listed(scores)}

    fx = torch.from_numpy(rng.randn(2, 3, 8).astype(np.float32))
    fy = torch.from_numpy(rng.randn(2, 3, 10).astype(np.float32))
    flip_index = [0, 2, 1]
    ox, oy = flip_vectors(fx, fy, flip_index)
    flip = {"simcc_x": _listed(fx), "simcc_y": _listed(fy), "flip_index": flip_index,
            "x": _listed(ox), "y": _listed(oy)}

    loss_fn = KLDiscretLoss(beta=10., label_softmax=True, use_target_weight=True)
    losses = []
    for seed, weights in ((4, [[1.0, 0.0, 1.0], [0.5, 1.0, 1.0]]),
                          (5, [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])):
        r = np.random.RandomState(seed)
        pred_x, pred_y = r.randn(2, 3, 8) * 0.3, r.randn(2, 3, 10) * 0.3
        gt_x, gt_y = r.rand(2, 3, 8), r.rand(2, 3, 10)
        t = [torch.from_numpy(a.astype(np.float32)) for a in (pred_x, pred_y, gt_x, gt_y)]
        w = torch.tensor(weights, dtype=torch.float32)
        value = loss_fn((t[0], t[1]), (t[2], t[3]), w)
        losses.append({"pred_x": _listed(t[0]), "pred_y": _listed(t[1]), "gt_x": _listed(t[2]),
                       "gt_y": _listed(t[3]), "weights": weights, "beta": 10.0,
                       "label_beta": loss_fn.label_beta, "loss": float(value)})

    cases = {"encode": encode, "decode": decode, "flip": flip, "kl_loss": losses}
    (HERE / "simcc_cases.json").write_text(json.dumps(cases) + "\n")


def _meta(arch: str) -> dict:
    """The 'meta' mmengine's Runner.save_checkpoint writes (mmengine/runner/runner.py), with the
    COCO dataset_meta parse_pose_metainfo gives (numpy arrays included, as real files have)."""
    import mmengine
    import mmpose
    from mmengine.config import Config
    from mmpose.datasets.datasets.utils import parse_pose_metainfo

    configs = Path(mmpose.__file__).parent / ".mim" / "configs"
    size = {"rtmpose-t": "t", "rtmpose-s": "s", "rtmpose-m": "m"}[arch]
    cfg = Config.fromfile(configs / f"body_2d_keypoint/rtmpose/coco/"
                          f"rtmpose-{size}_8xb256-420e_coco-256x192.py")
    dataset_meta = parse_pose_metainfo(
        dict(from_file=str(configs / "_base_/datasets/coco.py")))
    return {"cfg": cfg.pretty_text, "seed": 21, "experiment_name": f"{arch}_reference",
            "time": "20240101_000000", "mmengine_version": mmengine.__version__,
            "epoch": 420, "iter": 491400, "dataset_meta": dataset_meta}


def checkpoints(ref, shapes: dict, out: Path) -> None:
    """MMPose-format .pth files as tools/misc/publish_model.py leaves them: {'meta', 'state_dict'}
    saved with _use_new_zipfile_serialization=False; plus a DWPose distiller checkpoint."""
    out.mkdir(parents=True, exist_ok=True)
    for arch in ARCHS:
        state = OrderedDict(ref.reference_state_dict(shapes[arch], seed=0))
        state._metadata = OrderedDict()  # as nn.Module.state_dict() returns it
        torch.save({"meta": _meta(arch), "state_dict": state}, out / f"{arch}.pth",
                   _use_new_zipfile_serialization=False)
    # DWPoseDistiller (mmpose/models/distillers/dwpose_distiller.py): teacher.*, student.*,
    # distill_losses.* (FeaLoss aligns student 384 → teacher 768 channels with a 1×1 conv).
    state = OrderedDict()
    for k, v in ref.reference_state_dict(shapes["rtmpose-m"], seed=2).items():
        state[f"teacher.{k}"] = v
    for k, v in ref.reference_state_dict(shapes["rtmpose-t"], seed=0).items():
        state[f"student.{k}"] = v
    state["distill_losses.loss_fea.align.weight"] = torch.zeros(768, 384, 1, 1)
    state["distill_losses.loss_fea.align.bias"] = torch.zeros(768)
    state._metadata = OrderedDict()
    torch.save({"meta": _meta("rtmpose-t"), "state_dict": state},
               out / "rtmpose-t-student.pth", _use_new_zipfile_serialization=False)
    # Files published in 2023 were pickled under numpy 1.x, which names the array rebuilder
    # numpy.core.multiarray (numpy 2: numpy._core.multiarray); the rest of the stream is alike.
    data = (out / "rtmpose-t.pth").read_bytes()
    old, new = b"cnumpy._core.multiarray\n_reconstruct\n", b"cnumpy.core.multiarray\n_reconstruct\n"
    (out / "rtmpose-t-numpy1.pth").write_bytes(data.replace(old, new))


def time_step(steps: int = 5, warmup: int = 2, batch: int = 32) -> dict:
    """One MMPose RTMPose-t train step at 256x192: forward, KLDiscretLoss on SimCC labels,
    backward, AdamW step (2 torch threads); median seconds per step."""
    from mmpose.codecs import SimCCLabel

    torch.set_num_threads(2)
    torch.manual_seed(0)
    wh = (192, 256)
    model = _build("rtmpose-t", 17, wh)
    model.train()
    codec = SimCCLabel(input_size=wh, sigma=SIGMA, simcc_split_ratio=SPLIT, normalize=False)
    rng = np.random.RandomState(0)
    kpts = rng.rand(batch, 17, 2) * np.array(wh)
    enc = codec.encode(kpts, np.ones((batch, 17), np.float32))
    gt = (torch.from_numpy(enc["keypoint_x_labels"]), torch.from_numpy(enc["keypoint_y_labels"]))
    weights = torch.from_numpy(enc["keypoint_weights"]).float()
    images = torch.randn(batch, 3, wh[1], wh[0])
    optim = torch.optim.AdamW(model.parameters(), lr=4e-3, weight_decay=0.0)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        pred = model.head(model.backbone(images))
        loss = model.head.loss_module(pred, gt, weights)
        optim.zero_grad()
        loss.backward()
        optim.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return {"what": "mmpose rtmpose-t train step", "batch": batch, "input_wh": list(wh),
            "threads": 2, "steps": steps, "median_s": statistics.median(times),
            "min_s": min(times),
            "times_s": [round(t, 4) for t in times]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=Path("/tmp/mmref/ckpt"),
                        help="where the MMPose-format .pth files go (not the repository)")
    parser.add_argument("--time-step", action="store_true",
                        help="only time MMPose's RTMPose-t train step and print one JSON line")
    args = parser.parse_args()
    _stub_compiled()
    if args.time_step:
        print(json.dumps(time_step()))
        return
    torch.set_num_threads(2)
    ref = _ref()
    shapes = keys_and_outputs(ref)
    simcc_cases()
    checkpoints(ref, shapes, args.ckpt_dir)


if __name__ == "__main__":
    main()
