"""`uni evaluate` on every dataset kind of the samples: Halpe scored on the keypoints the model
has, AIC / CrowdPose / sub-JHMDB / PoseTrack18 against pycocotools with their own sigmas,
CrowdPose by crowd index, a unified27 student on Halpe's feet."""

from __future__ import annotations

import json

import pytest
import torch
from evaluate_cases import (
    COCO_NAMES,
    KINDS,
    ap_stats,
    cli,
    direct_on_copy,
    gt_records,
    write,
)

from uniskel.core.datasets import load_dataset
from uniskel.core.skeletons import known_unified
from uniskel.evaluation import evaluate as ev_mod
from uniskel.evaluation.evaluate import evaluate
from uniskel.student.models import build_model


def test_halpe_scores_the_keypoints_the_model_has(tmp_path, data_dir):
    """Halpe-26 with a unified21 model: feet have no unified21 counterpart and this sample
    never labels neck or hip, so 18 keypoints are scored (17 + head_top), Halpe's sigmas."""
    spec = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    ds = load_dataset(spec)
    records = gt_records(ds, unified="unified21")
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert r["scored_keypoints"] == COCO_NAMES + ["head_top"]
    assert r["scored"] == "18 of halpe26" and r["value"] == pytest.approx(100.0)
    # Feet are not scored: moving them changes nothing; moving head_top (Halpe "head") does.
    sk = ds.skeleton
    foot, head = sk.keypoints.index("left_big_toe"), sk.keypoints.index("head")
    for rec in records:
        rec["keypoints"][3 * foot] += 500.0
    same = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert same["value"] == pytest.approx(100.0)
    for rec in records:
        rec["keypoints"][3 * head + 1] -= 40.0
    moved = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert moved["value"] < 100.0 and moved["per_keypoint"]["head_top"] < 100.0
    assert moved["per_keypoint"]["nose"] == pytest.approx(100.0)


def test_model_on_every_kind(tiny_student_run, data_dir, tmp_path):
    """A student over aic, crowdpose, jhmdb and posetrack18 at once: each by its metric, its
    scored keypoints said; the AP ones equal pycocotools on the file with its own sigmas (an
    untrained student scores about 0: test_jittered_ground_truth_on_every_kind has values)."""
    specs = {k: v[0].format(d=data_dir) for k, v in KINDS.items()}
    saved = tmp_path / "pred.json"
    r = cli("evaluate", tiny_student_run, *[a for s in specs.values() for a in ("--data", s)],
            "--json", "--no-flip-test", "--save-predictions", saved)
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    records = json.loads(saved.read_text())
    for kind, (_, scored, metric) in KINDS.items():
        res = out[specs[kind]]
        assert (res["scored"], res["metric"]) == (scored, metric)
        assert 0 <= res["value"] <= 100
        if metric in ("AP", "mAP"):
            ds = load_dataset(specs[kind])
            mine = [x for x in records if x["dataset_id"] == ds.dataset_id]
            assert len(mine) == len(ds.instance_ids)
            assert ap_stats(res) == pytest.approx(direct_on_copy(ds, mine, tmp_path), abs=1e-9)
    table = cli("evaluate", "--predictions", saved, "--data", specs["aic"])
    assert table.exit_code == 0 and "14 of aic14" in table.stdout


@pytest.mark.parametrize("kind", list(KINDS))
def test_jittered_ground_truth_on_every_kind(kind, data_dir, tmp_path):
    """Ground truth scores 100; jittered by 10 px, AP equals pycocotools with the kind's own
    sigmas (AIC's are 3–8× tighter than COCO's: AP 22 there, 70–80 on the others)."""
    spec = KINDS[kind][0].format(d=data_dir)
    ds = load_dataset(spec)
    r = evaluate([spec], predictions=write(tmp_path / "p.json", gt_records(ds)))[spec]
    assert r["value"] == pytest.approx(100.0)
    per = [v for v in r["per_keypoint"].values() if v is not None]
    assert per == pytest.approx([100.0] * len(per))
    if KINDS[kind][2] in ("AP", "mAP"):
        records = gt_records(ds, jitter=10.0, seed=3)
        r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
        assert 0 < r["AP"] < 100
        assert ap_stats(r) == pytest.approx(direct_on_copy(ds, records, tmp_path), abs=1e-9)


def test_crowdpose_ap_by_crowd_index(data_dir, tmp_path):
    """CrowdPose's easy / medium / hard AP (crowdposetools: crowd index < 0.2, < 0.8, else):
    pycocotools on each class's images alone. The sample's two images (0.33, 0.39) are both
    medium; set to 0.05 and 0.9 they split into one easy and one hard image."""
    spec = KINDS["crowdpose"][0].format(d=data_dir)
    ds = load_dataset(spec)
    records = gt_records(ds, jitter=10.0, seed=4)
    r = evaluate([spec], predictions=write(tmp_path / "p.json", records))[spec]
    assert r["crowd_images"] == {"easy": 0, "medium": 2, "hard": 0}
    assert r["AP(M)"] == pytest.approx(r["AP"], abs=1e-9) and 0 < r["AP"] < 100
    assert r["AP(E)"] is None and r["AP(H)"] is None
    assert "AP(M)" in ev_mod.format_results({spec: r})
    raw = json.loads(ds.spec.annotations.read_text())
    for im, ci in zip(raw["images"], (0.05, 0.9), strict=True):
        im["crowdIndex"] = ci
    path = tmp_path / "cp.json"
    path.write_text(json.dumps(raw))
    split = f"crowdpose:{path}:{data_dir}/crowdpose/images"
    r = evaluate([split], predictions=write(tmp_path / "p.json", records))[split]
    assert r["crowd_images"] == {"easy": 1, "medium": 0, "hard": 1} and r["AP(M)"] is None
    for cls, image in (("AP(E)", raw["images"][0]), ("AP(H)", raw["images"][1])):
        one = {**raw, "images": [image],
               "annotations": [a for a in raw["annotations"] if a["image_id"] == image["id"]]}
        alone = load_dataset(f"crowdpose:{write(tmp_path / 'one.json', one)}:"
                             f"{data_dir}/crowdpose/images")
        mine = [x for x in records if x["image_id"] == image["id"]]
        assert r[cls] == pytest.approx(direct_on_copy(alone, mine, tmp_path)[0], abs=1e-9)
    assert r["AP(E)"] != r["AP(H)"]
    line = next(x for x in ev_mod.format_results({split: r}).splitlines()
                if "by crowd index" in x)
    assert "AP(M) — (0 images)" in line and "AP(E)" in line


def test_unified27_student_scores_halpe_feet(tmp_path, data_dir):
    """A student of unified27 (21 + 6 feet): on Halpe it is scored on the feet too (24 of
    halpe26: this sample never labels neck or hip), on COCO on the 17; its predictions file
    names unified27 and reads back to the same numbers."""
    u27 = known_unified()["unified27"]
    torch.manual_seed(0)
    model = build_model("tiny", u27.num_keypoints)
    run = tmp_path / "u27"
    run.mkdir()
    torch.save({"model": model.state_dict(), "config": {"model": "tiny", "input_wh": [48, 64]},
                "unified": u27.to_json()}, run / "best.pt")
    halpe = f"halpe:{data_dir}/halpe/test_halpe.json:{data_dir}/coco/images"
    coco = f"coco:{data_dir}/coco/test_coco.json"
    saved = tmp_path / "pred.json"
    out = evaluate([halpe, coco], model=run, flip_test=False, progress=False, save_to=saved)
    assert out[halpe]["scored"] == "24 of halpe26" and out[coco]["scored"] == "17 of coco17"
    assert "left_heel" in out[halpe]["per_keypoint"]
    records = json.loads(saved.read_text())
    assert {x["unified"] for x in records} == {"unified27"}
    assert evaluate([halpe, coco], predictions=saved) == out
