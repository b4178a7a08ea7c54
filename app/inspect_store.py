"""`uni inspect-store`: a store's attributes and sizes, a full check, and heatmap overlays."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from uniskel.core.crops import crop_person, read_image
from uniskel.core.datasets import load_dataset
from uniskel.core.draw import save_rgb
from uniskel.core.errors import UniError
from uniskel.core.geometry import crop_to_heatmap, invert, warp_heatmaps
from uniskel.stores.reader import StoreReader


def format_store_summary(s: dict) -> str:
    """Human-readable lines for StoreReader.summary()."""
    k, h, w = s["heatmap_shape"]
    retry = " (the next cache-teachers run retries the skipped)" if (
        s["skipped"] and not s["complete"]) else ""
    lines = [
        f"store        {s['path']}",
        f"teacher      {s['teacher']}  (sha256 {s['teacher_sha256'][:12]}, skeleton "
        f"{s['skeleton']}, crop {s['input_wh'][0]}x{s['input_wh'][1]}, padding {s['padding']}, "
        f"flip test {'on' if s['flip_test'] else 'off'})",
        f"dataset      {s['dataset_spec']}  (sha256 {s['dataset_id'][:12]})",
        f"instances    {s['instances']}: {s['done']} done, {s['skipped']} skipped, "
        f"{'complete' if s['complete'] else 'NOT complete'}{retry}",
        f"heatmaps     {k} x {h} x {w} uint8, codec {s['codec']}",
    ]
    if s["done"]:
        lines.append(f"size         {s['bytes_on_disk'] / 1e6:.2f} MB on disk, "
                     f"{s['bytes_per_instance'] / 1e3:.1f} kB per instance, "
                     f"{s['compression_ratio_fp16']:.1f}x smaller than raw fp16 "
                     f"({s['raw_fp16_bytes'] / 1e6:.1f} MB)")
    a = s["attrs"]
    lines.append(f"written      created {a.get('created')}, updated {a.get('updated')}, "
                 f"completed {a.get('completed') or '-'}, uni {a.get('software_version')}, "
                 f"format {s['format_version']}")
    return "\n".join(lines)


def summary_json(s: dict) -> dict:
    """StoreReader.summary() for --json: the attributes HDF5 holds as JSON text (heatmap_shape,
    teacher_metadata, skeleton_def, skipped, providers, ...) as JSON values, not strings."""
    def parsed(v):
        if isinstance(v, str) and v[:1] in ("[", "{"):
            try:
                return json.loads(v)
            except ValueError:
                return v
        return v

    return {**s, "attrs": {k: parsed(v) for k, v in s["attrs"].items()}}


def store_report(reader: StoreReader, as_json: bool = False,
                 verify: bool = False) -> tuple[str, list[str]]:
    """(the summary as text or one JSON object, the problems --verify found: reading every
    chunk and checking the done mask; none without verify)."""
    summary = reader.summary()
    problems = reader.verify(progress=not as_json) if verify else []
    if as_json:
        if verify:
            summary["problems"] = problems
        return json.dumps(summary_json(summary)), problems
    lines = [format_store_summary(summary)]
    if verify:
        lines += [f"problem      {p}" for p in problems]
        lines.append(f"verify       {len(problems)} problem(s)" if problems else "verify       ok")
    return "\n".join(lines), problems


def _colour_map(heat: np.ndarray) -> np.ndarray:
    """(h, w) float in [0, 1] → (h, w, 3) uint8 RGB (jet)."""
    u8 = np.clip(heat * 255.0, 0, 255).astype(np.uint8)
    return cv2.cvtColor(cv2.applyColorMap(u8, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)


def _crop_for(reader: StoreReader, instance_id: int, cache: dict) -> np.ndarray | None:
    """The teacher's crop of this instance re-made from the dataset image, or None."""
    if "by_id" not in cache:
        try:
            ds = load_dataset(reader.meta.dataset_spec)
            cache["by_id"] = ds.by_id() if ds.dataset_id == reader.meta.dataset_id else None
        except UniError:
            cache["by_id"] = None
    by_id = cache["by_id"]
    if by_id is None or instance_id not in by_id:
        return None
    inst = by_id[instance_id]
    try:
        crop, _ = crop_person(read_image(inst.image_path), inst.bbox, reader.meta.input_wh,
                              reader.meta.padding)
    except UniError:
        return None
    return crop


def draw_store(reader: StoreReader, n: int, out_dir: Path) -> list[Path]:
    """PNGs of the first n done instances: max over keypoints, colour-mapped, over the crop.

    The heatmap is brought to the crop through the inverse of geometry.crop_to_heatmap; when
    the dataset's image (or annotation file) is not reachable, the heatmap is drawn alone.
    """
    out_dir = Path(out_dir)
    k, h, w = reader.meta.heatmap_shape
    in_w, in_h = reader.meta.input_wh
    to_crop = invert(crop_to_heatmap((in_w, in_h), (w, h)))
    cache: dict = {}
    written = []
    for row in np.flatnonzero(reader.done)[:n]:
        iid = int(reader.instance_ids[row])
        heat, _ = reader.read(int(row))
        peak = heat.max(axis=0)  # (h, w)
        top = float(peak.max())
        big = warp_heatmaps(peak[None] / top if top > 0 else peak[None], to_crop,
                            (in_w, in_h))[0]
        colour = _colour_map(big)
        crop = _crop_for(reader, iid, cache)
        image = colour if crop is None else cv2.addWeighted(crop, 0.5, colour, 0.5, 0.0)
        path = out_dir / f"{reader.meta.teacher_name}_{iid}.png"
        save_rgb(path, image)
        written.append(path)
    return written
