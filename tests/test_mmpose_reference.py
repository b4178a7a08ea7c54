"""uni's RTMPose, SimCC codec and SimCC loss against fixtures MMPose 1.3.2 itself produced
(tests/data/mmpose_ref/, written by make_reference.py in a scratch venv; MMPose is not needed
here): the state-dict layout, eval outputs under shared weights, encode/decode/flip and
KLDiscretLoss values."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from mmpose_ref import reference_input, reference_state_dict

from uniskel.core.simcc import decode_simcc, flip_simcc, simcc_labels
from uniskel.student.losses import simcc_kl
from uniskel.student.rtmpose import build_rtmpose

REF = Path(__file__).resolve().parent / "data" / "mmpose_ref"
KEYS = json.loads((REF / "rtmpose_keys.json").read_text())
CASES = json.loads((REF / "simcc_cases.json").read_text())
# name in the fixtures → (arch, K, input (w, h)); the last one is another K and size.
RUNS = {name: (e["arch"], e["num_keypoints"], tuple(e["input_wh"])) for name, e in KEYS.items()}


def _mmpose_shapes(name: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(k, tuple(s)) for k, s in KEYS[name]["keys"]]


@pytest.mark.parametrize("name", ["rtmpose-t", "rtmpose-s", "rtmpose-m"])
def test_state_dict_layout_is_mmposes(name):
    arch, k, wh = RUNS[name]
    ours = [(key, tuple(v.shape)) for key, v in build_rtmpose(arch, k, wh).state_dict().items()]
    assert ours == _mmpose_shapes(name)
    params = sum(p.numel() for p in build_rtmpose(arch, k, wh).parameters())
    assert params == KEYS[name]["num_params"]


@pytest.mark.parametrize("name", sorted(RUNS))
def test_eval_outputs_equal_mmposes(name):
    """Same weights (loaded strictly) and input → the simcc vectors MMPose's head returned."""
    arch, k, wh = RUNS[name]
    model = build_rtmpose(arch, k, wh)
    model.load_state_dict(reference_state_dict(_mmpose_shapes(name), seed=0), strict=True)
    model.eval()
    with torch.no_grad():
        simcc_x, simcc_y = model(reference_input(wh, seed=1))
    with np.load(REF / "outputs.npz") as ref:
        np.testing.assert_allclose(simcc_x.numpy(), ref[f"{name}/simcc_x"], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(simcc_y.numpy(), ref[f"{name}/simcc_y"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("case", CASES["encode"], ids=lambda c: str(c["points"][0]))
def test_simcc_labels_equal_simcclabel(case):
    x, y, weights = simcc_labels(np.array(case["points"]), np.array(case["visible"]),
                                 tuple(case["input_wh"]), tuple(case["sigma"]), case["split"])
    assert x.dtype == y.dtype == weights.dtype == np.float32
    np.testing.assert_allclose(x, case["target_x"], atol=1e-6)
    np.testing.assert_allclose(y, case["target_y"], atol=1e-6)
    np.testing.assert_array_equal(weights, case["keypoint_weights"])


def test_decode_equals_simcclabel_decode():
    """get_simcc_maximum ÷ split: first maximum on ties, score = the smaller axis maximum,
    location -1 bin where the score is ≤ 0."""
    case = CASES["decode"]
    coords, scores = decode_simcc(np.array(case["simcc_x"], np.float32),
                                  np.array(case["simcc_y"], np.float32), case["split"])
    np.testing.assert_array_equal(coords, case["coords"])
    np.testing.assert_allclose(scores, case["scores"], rtol=0, atol=0)


def test_flip_equals_flip_vectors():
    case = CASES["flip"]
    x, y = flip_simcc(np.array(case["simcc_x"], np.float32), np.array(case["simcc_y"], np.float32),
                      np.array(case["flip_index"]))
    np.testing.assert_array_equal(x, case["x"])
    np.testing.assert_array_equal(y, case["y"])


@pytest.mark.parametrize("case", CASES["kl_loss"], ids=["weighted", "unweighted"])
def test_simcc_kl_equals_kldiscretloss(case):
    t = {k: torch.tensor(case[k], dtype=torch.float32)
         for k in ("pred_x", "pred_y", "gt_x", "gt_y", "weights")}
    loss = simcc_kl(t["pred_x"], t["pred_y"], t["gt_x"], t["gt_y"], t["weights"],
                    beta=case["beta"], label_beta=case["label_beta"])
    assert float(loss) == pytest.approx(case["loss"], rel=1e-5)
