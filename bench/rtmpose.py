"""RTMPose students: size against MMPose, training step, loader rate, exported-teacher overhead.

    .venv/bin/python bench/rtmpose.py [--quick] [--batch-size 32]
    MMPOSE_PYTHON=/tmp/mmvenv/bin/python .venv/bin/python bench/rtmpose.py   # + MMPose's step

1. rtmpose-t / -s / -m parameters and FLOPs (student.models.count_parameters,
   student.rtmpose.count_flops) against MMPose's published figures (its RTMPose README, K = 17,
   256x192) and what mmengine's counter reported locally (tests/data/mmpose_ref/rtmpose_keys.json).
2. Training step of the model alone at 256x192 (forward, student.losses.total_loss, backward,
   AdamW), 2 torch threads, on one batch student.data.PoseSamples made from the demo's persons:
   rtmpose-t ÷ tiny, rtmpose-t cached KD (both teachers' warped maps) ÷ GT only (goal ≤ 1.10),
   and, when MMPOSE_PYTHON names a python with MMPose 1.3.2, uni's rtmpose-t (K = 17, GT only)
   ÷ MMPose's own RTMPose-t step (tests/data/mmpose_ref/make_reference.py --time-step, run as a
   subprocess between uni's rounds). Every configuration runs a few steps per round, the rounds
   interleave them; figures are medians over the rounds.
3. The data loader alone: PoseSamples with RTMPoseAugment, head "simcc", two cached teachers,
   workers=0 (one process, one OpenCV and one torch thread: images/s per core), the per-stage
   split of a sample's time, and the cores per GPU it would need at an estimated GPU step rate.
4. rtmpose-t exported by `uni export` from an MMPose-format checkpoint, run by cache_teachers
   (1 worker, in process) ÷ a bare onnxruntime loop on the same crops (goal ≥ 0.90).
--quick: fewer rounds, samples and crops.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import common
import cv2
import numpy as np
import stage_one
import torch

from uniskel.core.crops import crop_person, normalize, read_image
from uniskel.core.datasets import load_dataset
from uniskel.core.geometry import compose
from uniskel.core.heatmaps import merge_flipped
from uniskel.core.skeletons import NUM_UNIFIED, native_to_unified
from uniskel.evaluation.export import export_onnx
from uniskel.pipeline.cache import cache_teachers
from uniskel.pipeline.teachers import Teacher
from uniskel.student.augment import RTMPoseAugment, photometric
from uniskel.student.config import teacher_weights
from uniskel.student.data import PoseSamples, collate, simcc_gt, teacher_targets
from uniskel.student.losses import total_loss
from uniskel.student.models import build_model, count_parameters
from uniskel.student.rtmpose import RTMPOSE_ARCHS, build_rtmpose, count_flops
from uniskel.student.sources import match_stores

INPUT_WH = (192, 256)  # (w, h): the RTMPose COCO configs' 256x192
# MMPose's README (projects/rtmpose/README.md, body 2d, COCO, 256x192): params (M), GFLOPs.
PUBLISHED = {"rtmpose-t": (3.34, 0.36), "rtmpose-s": (5.47, 0.68), "rtmpose-m": (13.59, 1.93)}
MMPOSE_KEYS = common.REPO / "tests" / "data" / "mmpose_ref" / "rtmpose_keys.json"
MAKE_REFERENCE = common.REPO / "tests" / "data" / "mmpose_ref" / "make_reference.py"
THREADS = 2  # torch threads of both steps (make_reference.py --time-step uses 2)
# GPU step-rate estimate (no GPU here): an A100's dense bf16 peak at a utilisation typical of a
# small depthwise-convolution network; training = forward + backward ≈ 3 × forward, 2 FLOPs/MAC.
GPU, GPU_PEAK, GPU_UTIL = "A100 (312 TFLOP/s dense bf16)", 312e12, 0.10
# A published RTMPose training log: mmpose issue #2761, rtmpose-m_8xb64-500e_ap10k-256x256,
# 'time: 0.23-0.27' s per iteration at 64 images per GPU (data_time 0.015-0.036 s).
LOG_URL = "https://github.com/open-mmlab/mmpose/issues/2761"
LOG_IMAGES_PER_S, LOG_MACS = 64 / 0.25, 1.93e9 * (256 * 256) / (256 * 192)


# --------------------------------------------------------------------------- 1. size


def sizes() -> tuple[list[list[str]], bool, list[float]]:
    """(one row per arch: uni's params and FLOPs against MMPose's published and local figures,
    whether every parameter count equals mmengine's, mmengine's FLOPs ÷ uni's per arch)."""
    local = json.loads(MMPOSE_KEYS.read_text())
    rows, same_params, excess = [], True, []
    for name in RTMPOSE_ARCHS:
        torch.manual_seed(0)
        model = build_rtmpose(name, 17, INPUT_WH)
        params, flops = count_parameters(model), count_flops(model, INPUT_WH)
        pub_p, pub_f = PUBLISHED[name]
        mm = local[name]
        mm_flops = mm["complexity"].get("flops")
        same = round(params / 1e6, 2) == pub_p and round(flops / 1e9, 2) == pub_f
        same_params &= params == mm["num_params"]
        if mm_flops:
            excess.append(mm_flops / flops - 1)
        rows.append([name, f"{params:,}", f"{params / 1e6:.2f} M", f"{pub_p:.2f} M",
                     f"{mm['num_params']:,}", f"{flops:,}", f"{flops / 1e9:.2f} G",
                     f"{pub_f:.2f} G", f"{mm_flops:,} ({mm['complexity']['flops_str']})"
                     if mm_flops else "—", "yes" if same else "**no**"])
    return rows, same_params, excess


# --------------------------------------------------------------------------- data


def loader_data(args: argparse.Namespace, demo: Path):
    """(datasets, teachers, skeletons, sources): the demo's COCO and MPII training persons and
    both demo teachers cached over them (reused when present)."""
    specs = [common.spec(demo, kind, "train") for kind in ("coco", "mpii")]
    paths = common.teachers(demo)
    common.say("rtmpose: caching the demo teachers over the demo's training persons")
    stores = [str(s.path) for s in cache_teachers(specs, paths, args.work / "rtm_stores",
                                                 workers=1, progress=False)]
    datasets = [load_dataset(s) for s in specs]
    teachers, skeletons, sources = match_stores(stores, datasets)
    return datasets, teachers, skeletons, sources


def samples(datasets, teachers, sources, head: str) -> PoseSamples:
    return PoseSamples(datasets, INPUT_WH, teachers, sources, RTMPoseAugment(), 0, head=head)


def spread(n: int, total: int) -> list[int]:
    """n indices spread over both datasets (PoseSamples lists COCO first, then MPII)."""
    return [int(i) for i in np.linspace(0, total - 1, n)]


# --------------------------------------------------------------------------- 2. step


def stepper(model: torch.nn.Module, batch: dict, teachers: list[str], weights: dict,
            decays: dict):
    """A callable doing one optimiser step of `model` on `batch` (returns seconds)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    tensors = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    model.train()

    def step() -> float:
        t0 = time.perf_counter()
        loss, _ = total_loss(model(tensors["image"]), tensors, teachers, 1.0, weights, decays)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def coco17_batch(batch: dict, k: int = 17) -> dict:
    """The batch's image with SimCC GT for the first k keypoints (the MMPose comparison's K)."""
    return {"image": batch["image"], "gt_simcc_x": batch["gt_simcc_x"][:, :k],
            "gt_simcc_y": batch["gt_simcc_y"][:, :k], "gt_weights": batch["gt_weights"][:, :k]}


def mmpose_step(python: str) -> dict:
    """MMPose's own RTMPose-t step (make_reference.py --time-step) in its venv: its JSON."""
    r = subprocess.run([python, str(MAKE_REFERENCE), "--time-step"], cwd=common.REPO,
                       capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"{python} {MAKE_REFERENCE.name} --time-step: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def steps(args: argparse.Namespace, datasets, teachers, skeletons, sources
          ) -> tuple[dict[str, list[float]], list[dict], str]:
    """Per-step seconds of each configuration over interleaved rounds, MMPose's runs, loads."""
    n = sum(len(d.instances) for d in datasets)
    idx = spread(args.batch_size, n)
    simcc = collate([samples(datasets, teachers, sources, "simcc")[i] for i in idx])
    heat = collate([samples(datasets, teachers, sources, "heatmap")[i] for i in idx])
    weights, decays = teacher_weights(skeletons)
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    configs = {
        "tiny, GT only": stepper(build_model("tiny", NUM_UNIFIED), heat, [], {}, {}),
        "rtmpose-t, GT only": stepper(build_rtmpose("rtmpose-t", NUM_UNIFIED, INPUT_WH), simcc,
                                      [], {}, {}),
        "rtmpose-t, cached KD": stepper(build_rtmpose("rtmpose-t", NUM_UNIFIED, INPUT_WH),
                                        simcc, teachers, weights, decays),
    }
    python = os.environ.get("MMPOSE_PYTHON")
    if python:
        configs["rtmpose-t K=17, GT only"] = stepper(build_rtmpose("rtmpose-t", 17, INPUT_WH),
                                                    coco17_batch(simcc), [], {}, {})
    rounds, per_round = (2, 1) if args.quick else (3, 2)
    times: dict[str, list[float]] = {name: [] for name in configs}
    mm: list[dict] = []
    load_before = common.load()
    try:
        for step in configs.values():  # warm-up: allocator, oneDNN kernels
            step()
        for r in range(rounds):
            common.say(f"rtmpose: step round {r + 1}/{rounds}")
            for name, step in configs.items():
                times[name] += [step() for _ in range(per_round)]
            if python and r < rounds - 1:  # between uni's rounds
                common.say("rtmpose: MMPose's RTMPose-t step (subprocess)")
                mm.append(mmpose_step(python))
    finally:
        torch.set_num_threads(before)
    return times, mm, f"{load_before} before, {common.load()} after"


# --------------------------------------------------------------------------- 3. loader


def loader_rate(ds: PoseSamples, idx: list[int], batch: int) -> float:
    """Images per second of __getitem__ + collate, one process, one thread."""
    t0 = time.perf_counter()
    for s in range(0, len(idx), batch):
        collate([ds[i] for i in idx[s:s + batch]])
    return len(idx) / (time.perf_counter() - t0)


def loader_parts(ds: PoseSamples, idx: list[int], batch: int) -> dict[str, float]:
    """Seconds per stage of PoseSamples.__getitem__ (head "simcc", RTMPoseAugment) done step by
    step as it does them, plus collate; summed over `idx`."""
    timer = common.Timer()
    for s in range(0, len(idx), batch):
        out = []
        for index in idx[s:s + batch]:
            d, i = ds.items[index].tolist()
            data = ds.datasets[d]
            inst = data.instance(i)
            with timer("image decode"):
                image = read_image(inst.image_path)
            with timer("annotation + view sampling"):
                kp = native_to_unified(inst.keypoints, data.skeleton, ds.unified)
                rng = np.random.default_rng([ds.seed, ds.epoch, index])
                v = ds.view(index, rng, kp, inst.bbox)
                box = inst.bbox if v.box is None else np.asarray(v.box, np.float64)
            with timer("crop warp"):
                crop, a_crop = crop_person(image, box, ds.input_wh, ds.padding, v.rotation,
                                           v.scale, v.shift, v.flip)
            with timer("photometric (HSV, blur, dropout)"):
                crop = photometric(crop, rng, ds.augment)
            with timer("SimCC labels"):
                a_grid = compose(ds._to_grid, a_crop)
                gt_x, gt_y, gt_w = simcc_gt(kp, a_crop, v.flip, ds.input_wh, ds.unified)
            w, h = ds.hm_wh
            t, u = len(ds.teachers), ds.unified.num_keypoints
            kd = np.zeros((t, u, h, w), np.float32)
            mask = np.zeros((t, 1, h, w), np.float32)
            kd_w = np.zeros((t, u), np.float32)
            for j, name in enumerate(ds.teachers):
                src = ds.sources.get((name, data.dataset_id))
                if src is None:
                    continue
                row = int(src.reader.rows(inst.instance_id)[0])
                with timer("store read (2 teachers)"):
                    maps, a_teacher = src.reader.read(row)
                with timer("teacher target warps (2 teachers)"):
                    kd[j], mask[j], kd_w[j] = teacher_targets(maps, a_teacher, src.skeleton,
                                                              a_grid, v.flip, ds.hm_wh,
                                                              ds.unified)
            with timer("normalise + tensors"):
                out.append({"image": torch.from_numpy(normalize(crop[None])[0]),
                            "gt_simcc_x": torch.from_numpy(gt_x),
                            "gt_simcc_y": torch.from_numpy(gt_y),
                            "gt_weights": torch.from_numpy(gt_w),
                            "kd_targets": torch.from_numpy(kd), "kd_masks": torch.from_numpy(mask),
                            "kd_weights": torch.from_numpy(kd_w), "index": index})
        with timer("collate"):
            collate(out)
    return timer.seconds


def coco_size_decode(ds: PoseSamples, work: Path, reps: int = 20) -> float:
    """Seconds to read_image a 640x480 JPEG (COCO's common size) made from a demo image."""
    image = read_image(ds.datasets[0].instance(0).image_path)
    path = work / "rtm_640x480.jpg"
    cv2.imwrite(str(path), cv2.resize(image, (640, 480))[..., ::-1],
                [cv2.IMWRITE_JPEG_QUALITY, 90])
    read_image(path)
    t0 = time.perf_counter()
    for _ in range(reps):
        read_image(path)
    return (time.perf_counter() - t0) / reps


def loader(args: argparse.Namespace, datasets, teachers, sources
           ) -> tuple[float, dict[str, float], int, float, str, str]:
    """(images/s per core, seconds per stage, images timed, COCO-size decode s, demo image
    size, loads): the loader alone, one OpenCV and one torch thread."""
    ds = samples(datasets, teachers, sources, "simcc")
    n = 64 if args.quick else 192
    idx = spread(n, len(ds))
    cv_threads, torch_threads = cv2.getNumThreads(), torch.get_num_threads()
    cv2.setNumThreads(1)  # "per core": one process, one thread, as a DataLoader worker
    torch.set_num_threads(1)
    load_before = common.load()
    try:
        loader_rate(ds, idx[:args.batch_size], args.batch_size)  # warm: store files, page cache
        rates = []
        for _ in range(2):  # interleaved with the step-by-step split: same conditions
            rates.append(loader_rate(ds, idx, args.batch_size))
            parts = loader_parts(ds, idx, args.batch_size)
        decode = coco_size_decode(ds, args.work)
    finally:
        cv2.setNumThreads(cv_threads)
        torch.set_num_threads(torch_threads)
    first = ds.datasets[0].instance(0).image_path
    h, w = read_image(first).shape[:2]
    return (float(np.median(rates)), parts, n, decode, f"{w}×{h}",
            f"{load_before} before, {common.load()} after")


# --------------------------------------------------------------------------- 4. export


def simcc_to_maps_seconds(teacher: Teacher, crops: np.ndarray, batch: int) -> float:
    """Seconds Teacher.predict spends turning SimCC outputs into store maps (softmax, bins →
    grid, outer product, flip merge) over `crops`, session.run excluded."""
    total = 0.0
    for s in range(0, len(crops), batch):
        x = normalize(crops[s:s + batch], teacher.info.mean, teacher.info.std, teacher.info.bgr)
        n = len(x)
        outs = teacher._run(np.ascontiguousarray(np.concatenate([x, x[..., ::-1]])))
        t0 = time.perf_counter()
        hm = teacher._to_heatmaps(outs)
        merge_flipped(hm[:n], hm[n:], teacher.skeleton.flip_index)
        total += time.perf_counter() - t0
    return total


def exported_teacher(args: argparse.Namespace, demo: Path
                     ) -> tuple[list[float], list[float], int, float, dict[str, float], str]:
    """(bare loop crops/s runs, cache-teachers crops/s runs, crops, end-to-end crops/s, seconds
    per step of the same work, loads) for rtmpose-t exported from an MMPose-format checkpoint
    (random weights, seed 0)."""
    ckpt, onnx_path = args.work / "rtm_rtmpose-t.pth", args.work / "rtm_rtmpose-t.onnx"
    torch.manual_seed(0)
    model = build_rtmpose("rtmpose-t", 17, INPUT_WH)
    # tools/misc/publish_model.py's layout: {'meta', 'state_dict'}.
    torch.save({"meta": {}, "state_dict": model.state_dict()}, ckpt)
    export_onnx(ckpt, onnx_path, "rtmpose-t", skeleton="coco17")
    n = 128 if args.quick else 384
    spec = common.repeat_dataset(demo, "coco", n, args.work / f"coco_x{n}")
    ds = load_dataset(spec)
    instances = sorted(ds.instances, key=lambda i: (str(i.image_path), i.instance_id))
    teacher = Teacher(onnx_path, threads=0)  # threads as cache-teachers --workers 1
    crops = stage_one._crops(teacher, instances)
    load_before = common.load()
    bare, cached, wall = [], [], []
    for r in range(2 if args.quick else 3):
        common.say(f"rtmpose: exported rtmpose-t, round {r + 1}")
        bare.append(len(crops) / stage_one.bare_loop(teacher, crops, args.batch_size))
        if r < (1 if args.quick else 2):
            rate, end_to_end, _ = stage_one._cache_rate(spec, [onnx_path],
                                                        args.work / "rtm_cache", 1,
                                                        args.batch_size)
            cached.append(rate)
            wall.append(end_to_end)
    shutil.rmtree(args.work / "rtm_cache", ignore_errors=True)
    parts = stage_one.breakdown(onnx_path, instances, args.batch_size,
                                args.work / "rtm_parts.h5")
    parts["of which SimCC → maps + flip merge"] = simcc_to_maps_seconds(teacher, crops,
                                                                        args.batch_size)
    return bare, cached, len(crops), float(np.median(wall)), parts, (
        f"{load_before} before, {common.load()} after")


# --------------------------------------------------------------------------- report


def _ms(x: float) -> str:
    return f"{1e3 * x:.0f}"


def run(args: argparse.Namespace) -> str:
    demo = common.demo_dir(args)
    size_rows, same_params, excess = sizes()
    datasets, teachers, skeletons, sources = loader_data(args, demo)
    times, mm, step_loads = steps(args, datasets, teachers, skeletons, sources)
    rate, parts, n_loader, decode640, demo_wh, loader_loads = loader(args, datasets, teachers,
                                                                     sources)
    bare, cached, n_crops, wall_rate, export_parts, export_loads = exported_teacher(args, demo)

    # 2. step
    med = {k: float(np.median(v)) for k, v in times.items()}
    low = {k: float(np.min(v)) for k, v in times.items()}
    t_gt, t_kd = med["rtmpose-t, GT only"], med["rtmpose-t, cached KD"]
    r_tiny, r_kd = t_gt / med["tiny, GT only"], t_kd / t_gt
    step_rows = [[k, _ms(med[k]), _ms(low[k]), str(len(times[k])),
                  f"{args.batch_size / med[k]:.1f}"] for k in times]
    if mm:
        mm_times = [t for run_ in mm for t in run_["times_s"]]
        mm_med, mm_low = float(np.median(mm_times)), float(np.min(mm_times))
        step_rows.append(["MMPose 1.3.2 RTMPose-t K=17 (its own step, subprocess)", _ms(mm_med),
                          _ms(mm_low), str(len(mm_times)), f"{args.batch_size / mm_med:.1f}"])
        uni17 = "rtmpose-t K=17, GT only"
        mm_line = (f"**uni ÷ MMPose RTMPose-t step = {med[uni17] / mm_med:.2f}** (medians; "
                   f"fastest steps {low[uni17] / mm_low:.2f}); both K = 17, GT SimCC KL loss, "
                   f"AdamW, {THREADS} threads.")
    else:
        step_rows.append(["MMPose 1.3.2 RTMPose-t K=17", "not measured (set MMPOSE_PYTHON)",
                          "—", "—", "—"])
        mm_line = ("uni ÷ MMPose RTMPose-t step: not measured (set MMPOSE_PYTHON to a python "
                   "with MMPose 1.3.2, e.g. the scratch venv tests/data/mmpose_ref/README.md "
                   "describes).")

    # 3. loader
    train_macs = 3 * PUBLISHED["rtmpose-t"][1] * 1e9  # forward + backward, MACs per image
    gpu_rate = GPU_PEAK * GPU_UTIL / (2 * train_macs)
    log_rate = LOG_IMAGES_PER_S * LOG_MACS / (PUBLISHED["rtmpose-t"][1] * 1e9)
    total = sum(parts.values())
    part_rows = [[k, f"{1e3 * v / n_loader:.2f}", f"{100 * v / total:.0f} %"]
                 for k, v in sorted(parts.items(), key=lambda kv: -kv[1])]
    part_rows.append(["total (step by step)", f"{1e3 * total / n_loader:.2f}", "100 %"])
    decode_demo = parts["image decode"] / n_loader
    coco_ms = 1e3 * (1 / rate - decode_demo + decode640)  # the measured rate, decode swapped

    # 4. export
    r_export = float(np.median(cached)) / float(np.median(bare))
    export_total = sum(v for k, v in export_parts.items() if not k.startswith("of which"))
    export_rows = [[k, f"{1e3 * v / n_crops:.2f}", f"{100 * v / export_total:.0f} %"]
                   for k, v in export_parts.items()]
    export_rows.append(["total", f"{1e3 * export_total / n_crops:.2f}", "100 %"])

    size_table = common.table(
        ["arch", "uni params", "uni (M)", "MMPose published", "mmengine local params",
         "uni FLOPs (MACs)", "uni (G)", "MMPose published", "mmengine local FLOPs",
         "equal at published precision"], size_rows)
    step_table = common.table(["configuration", "ms/step (median)", "ms/step (fastest)", "steps",
                               "images/s"], step_rows)
    export_table = common.table(
        ["run", "crops/s (median)", "runs", "÷ bare loop"],
        [["bare onnxruntime loop (session.run only)", f"{np.median(bare):,.0f}", str(len(bare)),
          "1.00"],
         ["cache-teachers, 1 worker (in process)", f"{np.median(cached):,.0f}",
          str(len(cached)), f"{r_export:.2f}"]])
    return f"""## 7. RTMPose students

### Size: uni's RTMPose against MMPose

K = 17, 256×192. uni: `count_parameters`, `student.rtmpose.count_flops`; MMPose published:
its RTMPose README; mmengine local: `get_model_complexity_info` on MMPose 1.3.2's own model
(tests/data/mmpose_ref/rtmpose_keys.json, made by make_reference.py).

{size_table}

Parameter counts {"equal" if same_params else "**differ from**"} mmengine's on MMPose's own
model exactly. mmengine 1.x's FLOP counter, run locally on MMPose's model, gives
{100 * min(excess):.1f}-{100 * max(excess):.1f} % more than uni's count (it counts operations
the published tables leave out), so it rounds differently from the published figures where
uni's count does not.

### Training step, model alone ({THREADS} torch threads)

256×192, batch {args.batch_size} from PoseSamples (RTMPoseAugment) over the demo's COCO + MPII
persons, K = {NUM_UNIFIED} (unified21) unless stated; step = forward, `total_loss`, backward,
AdamW. Configurations interleaved over rounds; {step_loads}.

{step_table}

- **rtmpose-t ÷ tiny step time = {r_tiny:.2f}** (tiny: uni's heatmap student,
  {count_flops(build_model('tiny', NUM_UNIFIED), INPUT_WH) / 1e9:.2f} G MACs against rtmpose-t's
  {PUBLISHED['rtmpose-t'][1]:.2f} G).
- **cached KD ÷ GT only (rtmpose-t) = {r_kd:.2f}** (goal ≤ 1.10: {common.verdict(r_kd <= 1.1)});
  KD = `simcc_kd` against both demo teachers' cached maps as the batch carries them.
- {mm_line}

### Data loader alone

PoseSamples(head "simcc", RTMPoseAugment, 2 cached teachers) + collate, workers=0, one process
with one OpenCV and one torch thread: **{rate:.0f} images/s per core** ({n_loader} samples,
median of 2 passes; demo images {demo_wh} px). {loader_loads}.

GPU step rate (no GPU here, an estimate): an {GPU} at {100 * GPU_UTIL:.0f} % utilisation,
rtmpose-t training ≈ 3 × {PUBLISHED['rtmpose-t'][1]:.2f} G MACs per image →
**{gpu_rate:,.0f} images/s → {gpu_rate / rate:.0f} loader cores per GPU**. A published RTMPose
training log ({LOG_URL}: rtmpose-m, 256×256, 64 images per GPU at ≈ 0.25 s per iteration, GPU
not stated) scaled by FLOPs to rtmpose-t gives {log_rate:,.0f} images/s →
**{log_rate / rate:.0f} cores per GPU**. Where a sample's time goes (same work step by step,
ms per image):

{common.table(["stage", "ms per image", "share"], part_rows)}

On COCO-size images (640×480 JPEG: {1e3 * decode640:.2f} ms to decode against
{1e3 * decode_demo:.2f} ms for the demo's) a sample would take ≈ {coco_ms:.1f} ms
({1e3 / coco_ms:.0f} images/s per core: {gpu_rate * coco_ms / 1e3:.0f} and
{log_rate * coco_ms / 1e3:.0f} cores per GPU at the two rates above).

### Exported rtmpose-t as a teacher

An MMPose-format checkpoint of rtmpose-t (K = 17, random weights) through `uni export`, then
`cache_teachers` (1 worker, in process) over {n_crops} demo COCO persons at 256×192, batch
{args.batch_size}, flip test, against a bare onnxruntime loop on the same crops (normalised
beforehand); runs interleaved, {export_loads}.

{export_table}

- **cache-teachers ÷ bare loop = {r_export:.2f}** (goal ≥ 0.90:
  {common.verdict(r_export >= 0.9)}); end to end incl. start-up {wall_rate:,.0f} crops/s.

Where cache-teachers' time goes (bench/stage_one.py's step-by-step split, ms per crop; infer =
`Teacher.predict` less normalise: session.run on crop + mirror, then the SimCC outputs turned
into the store's 64×48 maps):

{common.table(["step", "ms per crop", "share"], export_rows)}
"""


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, samples and crops")
    common.main(run, ap)
