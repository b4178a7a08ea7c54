"""Stage-two samples: cached teacher targets warped by the augmentation equal what the teacher
would say about the augmented crop; channel and mask rules on flip; store matching errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from analytic_teacher import render, teacher_points, write_analytic_store
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uniskel.core.datasets import load_dataset
from uniskel.core.errors import UniError
from uniskel.core.geometry import (
    apply,
    bbox_to_center_size,
    compose,
    crop_affine,
    crop_to_heatmap,
)
from uniskel.core.heatmaps import decode_heatmaps
from uniskel.core.skeletons import SKELETONS
from uniskel.student.augment import Augment, View
from uniskel.student.data import PoseSamples, collate
from uniskel.student.sources import match_stores

TEACHERS = {"coco_t": "coco17", "mpii_t": "mpii16"}


@pytest.fixture(scope="module")
def setup(synth_dir, tmp_path_factory):
    """Both synthetic train sets and both analytic teachers cached over both (4 stores)."""
    out = tmp_path_factory.mktemp("stores")
    sets = [load_dataset(f"coco:{synth_dir / 'coco/train.json'}"),
            load_dataset(f"mpii:{synth_dir / 'mpii/train.json'}")]
    for name, skel in TEACHERS.items():
        for ds in sets:
            write_analytic_store(out / f"{name}__{ds.kind.name}.h5", ds, skel, name)
    return sets, out


def _student_grid_affine(inst, input_wh, v: View) -> np.ndarray:
    """Image → student heatmap grid for view v, built from geometry alone."""
    center, size = bbox_to_center_size(inst.bbox, input_wh[0] / input_wh[1], 1.25)
    center = center + np.asarray(v.shift) * size
    a = crop_affine(center, size * v.scale, input_wh, v.rotation, v.flip)
    hm_wh = (input_wh[0] // 4, input_wh[1] // 4)
    return compose(crop_to_heatmap(input_wh, hm_wh), a)


def _direct_targets(inst, ds, name, input_wh, v: View) -> tuple[np.ndarray, np.ndarray]:
    """What the analytic teacher says about the augmented crop itself: (21, h, w) unified
    channels, and (21,) bool: keypoints whose peak lies well inside both grids."""
    skel = SKELETONS[TEACHERS[name]]
    pts = teacher_points(ds, skel.name)[inst.instance_id]
    a_s = _student_grid_affine(inst, input_wh, v)
    hm_wh = (input_wh[0] // 4, input_wh[1] // 4)
    native = render(pts, inst.bbox[3], a_s, hm_wh, skel.name)
    if np.linalg.det(a_s[:, :2]) < 0:  # the teacher's own naming of a mirrored view
        pts = pts[skel.flip_index]
    center, size = bbox_to_center_size(inst.bbox, 96 / 128, 1.25)
    a_t = compose(crop_to_heatmap((96, 128), (24, 32)), crop_affine(center, size, (96, 128)))
    in_s, in_t = apply(a_s, pts), apply(a_t, pts)
    ok = ((in_s >= 3).all(-1) & (in_s[:, 0] <= hm_wh[0] - 4) & (in_s[:, 1] <= hm_wh[1] - 4)
          & (in_t >= 3).all(-1) & (in_t[:, 0] <= 24 - 4) & (in_t[:, 1] <= 32 - 4))
    out = np.zeros((21,) + native.shape[1:], np.float32)
    good = np.zeros(21, bool)
    for c, u in enumerate(skel.to_unified):
        if u is not None:
            out[u], good[u] = native[c], ok[c]
    return out, good


views = st.builds(
    View, shift=st.tuples(st.floats(-0.16, 0.16), st.floats(-0.16, 0.16)),
    scale=st.floats(0.65, 1.35), rotation=st.floats(-80, 80), flip=st.booleans())


@pytest.mark.parametrize("input_wh", [(96, 128), (64, 128)])
@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(v=views, pick=st.integers(0, 10_000))
def test_warped_cache_equals_teacher_on_augmented_crop(setup, input_wh, v, pick):
    sets, store_dir = setup
    teachers, _, sources = match_stores([store_dir], sets)
    samples = PoseSamples(sets, input_wh, teachers, sources)
    samples.view = lambda index, *_: v
    index = pick % len(samples)
    d, i = samples.items[index]
    inst, ds = sets[d].instances[i], sets[d]
    sample = samples[index]
    for j, name in enumerate(teachers):
        want, good = _direct_targets(inst, ds, name, input_wh, v)
        got = sample["kd_targets"][j].numpy()
        mask = sample["kd_masks"][j, 0].numpy() > 0
        weights = sample["kd_weights"][j].numpy()
        assert np.all(weights[good] > 0.6), (name, weights, good)
        assert np.all(weights[~SKELETONS[TEACHERS[name]].unified_mask] == 0)
        for u in np.flatnonzero(good):
            err = np.abs(got[u] - want[u])[mask]
            assert err.max() < 0.2, (name, u, err.max())
            assert err.mean() < 0.02, (name, u, err.mean())
        if v.flip and good[5] and good[6]:  # the swap matters: unswapped would be far off
            assert np.abs(got[5] - want[6])[mask].max() > 0.5


def test_teacher_channels_follow_gt_channels_on_flip(setup):
    """Teacher points equal GT where labelled, so each labelled keypoint's KD peak must sit on
    its GT peak, flipped or not (one channel rule for both)."""
    sets, store_dir = setup
    teachers, _, sources = match_stores([store_dir], sets)
    samples = PoseSamples(sets, (96, 128), teachers, sources)
    checked = 0
    for flip in (False, True):
        samples.view = lambda index, *_, flip=flip: View(rotation=25.0, scale=1.1, flip=flip)
        for index in range(0, len(samples), 7):
            s = samples[index]
            gt_xy, _ = decode_heatmaps(s["gt_heatmaps"].numpy()[None])
            for j, name in enumerate(teachers):
                kd_xy, _ = decode_heatmaps(s["kd_targets"][j].numpy()[None])
                both = ((s["gt_weights"].numpy() > 0) & (s["kd_weights"][j].numpy() > 0.9)
                        & SKELETONS[TEACHERS[name]].unified_mask)
                dist = np.linalg.norm(gt_xy[0, both] - kd_xy[0, both], axis=-1)
                assert dist.max(initial=0) <= 1.5, (flip, name, dist)
                checked += both.sum()
    assert checked > 100


def test_batches_have_no_nan_and_masks_respect_skeletons(setup):
    """Through a 2-worker DataLoader (stores reopened per worker): finite tensors, a COCO
    teacher never supervises MPII-only channels, an MPII teacher never the face, on any flip."""
    sets, store_dir = setup
    teachers, _, sources = match_stores([store_dir], sets)
    assert teachers == ["coco_t", "mpii_t"]
    samples = PoseSamples(sets, (64, 128), teachers, sources, Augment(flip_prob=0.5), seed=3)
    loader = torch.utils.data.DataLoader(samples, 16, shuffle=True, num_workers=2,
                                         collate_fn=collate)
    partial_mask = False
    for batch in loader:
        for key in ("image", "gt_heatmaps", "gt_weights", "kd_targets", "kd_masks",
                    "kd_weights"):
            assert torch.isfinite(batch[key]).all(), key
        w = batch["kd_weights"]  # (B, T, 21)
        assert (w[:, 0, 17:] == 0).all() and (w[:, 1, :5] == 0).all()
        assert (batch["kd_targets"][:, 0, 17:] == 0).all()
        assert (batch["kd_targets"][:, 1, :5] == 0).all()
        m = batch["kd_masks"]
        assert ((m == 0) | (m == 1)).all()
        # The student's 64×128 box is taller than the teacher's 96×128 one: rows out of view.
        partial_mask |= bool((m.mean((-1, -2, -3)) < 0.99).any())
    assert partial_mask


def test_teacher_without_store_for_a_dataset_gives_zero_masks(setup, tmp_path):
    sets, _ = setup
    write_analytic_store(tmp_path / "coco_only.h5", sets[0], "coco17", "coco_only")
    teachers, _, sources = match_stores([tmp_path], sets)
    samples = PoseSamples(sets, (96, 128), teachers, sources, augment=None)
    coco = samples[0]
    mpii = samples[len(sets[0].instances)]
    assert coco["kd_weights"].sum() > 5 and coco["kd_masks"].sum() > 0
    assert mpii["kd_weights"].sum() == 0 and mpii["kd_masks"].sum() == 0
    assert mpii["kd_targets"].sum() == 0


def test_store_errors_name_the_store(setup, tmp_path):
    sets, _ = setup
    coco, mpii = sets
    other = write_analytic_store(tmp_path / "other.h5", coco, "coco17", "t",
                                 dataset_id="f" * 64)
    with pytest.raises(UniError, match=r"other\.h5: its dataset .* is not one of the --data"):
        match_stores([other], sets)
    ids = [i.instance_id for i in mpii.instances][5:]
    partial = write_analytic_store(tmp_path / "partial.h5", mpii, "mpii16", "t", ids=ids)
    with pytest.raises(UniError, match=rf"partial\.h5: missing 5 of {len(mpii.instances)} "):
        match_stores([partial], sets)
    # …but a store of the validation data is fine, and ignored.
    val_store = write_analytic_store(tmp_path / "val.h5", coco, "coco17", "t")
    assert match_stores([val_store], [mpii], [coco])[0] == []
    (tmp_path / "empty").mkdir()
    with pytest.raises(UniError, match="no \\*.h5 stores"):
        match_stores([tmp_path / "empty"], sets)


def test_a_numerically_empty_teacher_map_is_stored_empty():
    """A map peaking at 1e-40 (a sigmoid far below 0, e.g. a teacher's keypoint it never
    sees) is quantised as empty; before, its scale underflowed to 0 beside a 255 peak and the
    store failed its own verification."""
    from uniskel.stores.encode import quantize

    hm = np.zeros((1, 3, 4, 4), np.float32)
    hm[0, 0, 1, 1], hm[0, 1, 2, 2], hm[0, 2, 0, 0] = 1e-40, 0.5, 1e-44
    with np.errstate(all="raise"):
        q, scales = quantize(hm)
    assert q.max((2, 3)).tolist() == [[0, 255, 0]]
    assert scales[0, 0] == 0 and scales[0, 2] == 0 and scales[0, 1] > 0


def test_teacher_keypoints_without_a_slot_are_dropped():
    """Halpe-26's feet have no slot in unified21 (dropped) but have one in unified27; a teacher
    with no keypoint in the run's skeleton teaches nothing (and does not fail)."""
    from uniskel.core.skeletons import Skeleton, get_skeleton
    from uniskel.student.data import teacher_targets

    maps = np.zeros((26, 8, 6), np.float32)
    maps[:, 4, 3] = 1.0  # every keypoint at the grid centre
    same = np.array([[1.0, 0, 0], [0, 1.0, 0]])  # the teacher's grid is the student's
    halpe, u27 = get_skeleton("halpe26"), get_skeleton("unified27")
    t21, _, w21 = teacher_targets(maps, same, halpe, same, False, (6, 8))
    t27, _, w27 = teacher_targets(maps, same, halpe, same, False, (6, 8), u27)
    assert t21.shape == (21, 8, 6) and t27.shape == (27, 8, 6)
    assert (w21 > 0.99).sum() == 20 and w21[18] == 0  # all but thorax (Halpe has none)
    assert (w27[21:] > 0.99).all() and np.allclose(t27[:21], t21)
    odd = Skeleton.build("odd2", ["navel", "chin"], None, None, "test")
    t, spatial, w = teacher_targets(maps[:2], same, odd, same, True, (6, 8))
    assert t.shape == (21, 8, 6) and not t.any() and not w.any() and spatial.all()
