"""RTMPose student (uniskel/student/rtmpose.py): MMPose's sizes, shapes, state-dict reading."""


import pytest
import torch

from uniskel.core.errors import UniError
from uniskel.student.rtmpose import (
    PER_KEYPOINT_KEYS,
    RTMPOSE_ARCHS,
    RTMPose,
    arch_from_state_dict,
    build_rtmpose,
    count_flops,
)

# MMPose's published figures for the COCO 256x192 models (params M, FLOPs G as mmengine counts).
PUBLISHED = {"rtmpose-t": (3.34, 0.36), "rtmpose-s": (5.47, 0.68), "rtmpose-m": (13.59, 1.93)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def coco_models() -> dict[str, RTMPose]:
    torch.manual_seed(0)
    return {name: build_rtmpose(name, 17, (192, 256)) for name in RTMPOSE_ARCHS}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_params_and_flops_match_mmpose(coco_models: dict[str, RTMPose], name: str) -> None:
    model = coco_models[name]
    params = sum(p.numel() for p in model.parameters())
    assert round(params / 1e6, 2) == PUBLISHED[name][0]
    assert round(count_flops(model, (192, 256)) / 1e9, 2) == PUBLISHED[name][1]
    assert model.training  # count_flops restores the mode


def test_mmpose_key_names_and_config_values(coco_models: dict[str, RTMPose]) -> None:
    state = coco_models["rtmpose-t"].state_dict()
    for key in ("backbone.stem.0.conv.weight", "backbone.stem.2.bn.running_var",
                "backbone.stage1.0.conv.weight", "backbone.stage1.1.attention.fc.bias",
                "backbone.stage1.1.blocks.0.conv2.depthwise_conv.conv.weight",
                "backbone.stage4.1.conv2.conv.weight", "backbone.stage4.2.final_conv.bn.bias",
                "head.final_layer.weight", "head.mlp.0.g", "head.mlp.1.weight",
                "head.gau.uv.weight", "head.gau.gamma", "head.gau.res_scale.scale",
                "head.cls_x.weight", "head.cls_y.weight"):
        assert key in state, key
    assert state["head.final_layer.weight"].shape == (17, 384, 7, 7)
    assert state["head.gau.uv.weight"].shape == (2 * 512 + 128, 256)
    assert state["head.cls_x.weight"].shape == (384, 256)
    bns = [m for m in coco_models["rtmpose-t"].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.eps, m.momentum) for m in bns} == {(1e-5, 0.1)}
    assert all(state[k].shape[0] == 17 for k in PER_KEYPOINT_KEYS)


@pytest.mark.parametrize("name,k,wh", [("rtmpose-t", 5, (32, 64)), ("rtmpose-s", 30, (96, 32)),
                                       ("rtmpose-t", 1, (32, 32))])
def test_any_size_and_keypoint_count(name: str, k: int, wh: tuple[int, int]) -> None:
    model = build_rtmpose(name, k, wh).eval()
    with torch.no_grad():
        sx, sy = model(torch.randn(2, 3, wh[1], wh[0]))
    assert sx.shape == (2, k, wh[0] * 2) and sy.shape == (2, k, wh[1] * 2)
    assert (model.arch, model.num_keypoints, model.input_wh, model.simcc_split) == \
        (name, k, wh, 2.0)


def test_arch_from_state_dict_reads_all_three(coco_models: dict[str, RTMPose]) -> None:
    for name, model in coco_models.items():
        assert arch_from_state_dict(model.state_dict()) == (name, 17, (192, 256))


@pytest.mark.parametrize("name,k,wh", [("rtmpose-s", 21, (64, 64)), ("rtmpose-t", 3, (288, 384)),
                                       ("rtmpose-t", 133, (96, 128))])
def test_arch_from_state_dict_round_trips(name: str, k: int, wh: tuple[int, int]) -> None:
    state = build_rtmpose(name, k, wh).state_dict()
    assert arch_from_state_dict(state) == (name, k, wh)
    RTMPose(*arch_from_state_dict(state)).load_state_dict(state, strict=True)


def _one_line_error(state: dict[str, torch.Tensor], needle: str) -> None:
    with pytest.raises(UniError) as e:
        arch_from_state_dict(state)
    assert "\n" not in str(e.value) and needle in str(e.value)


def test_bad_state_dicts_name_the_key() -> None:
    good = build_rtmpose("rtmpose-t", 4, (64, 64)).state_dict()
    _one_line_error({}, "backbone.stem.2.conv.weight")
    _one_line_error({k: v for k, v in good.items() if k != "head.cls_y.weight"},
                    "head.cls_y.weight")
    _one_line_error({**good, "backbone.stem.2.conv.weight": torch.zeros(40, 12, 3, 3)},
                    "backbone.stem.2.conv.weight")
    _one_line_error({k: v for k, v in good.items()
                     if not k.startswith("backbone.stage2.1.blocks.")}, "backbone.stage2.1.blocks")
    _one_line_error({**good, "head.cls_x.weight": torch.zeros(100, 256)}, "head.cls_x.weight")


def test_build_rejects_unknown_arch_and_sizes() -> None:
    for args in (("rtmpose-x", 17, (192, 256)), ("rtmpose-t", 17, (200, 256)),
                 ("rtmpose-t", 17, (192, 0))):
        with pytest.raises(UniError) as e:
            build_rtmpose(*args)
        assert "\n" not in str(e.value)


def test_train_mode_backward_is_finite() -> None:
    torch.manual_seed(0)
    model = build_rtmpose("rtmpose-t", 3, (32, 32)).train()
    sx, sy = model(torch.randn(2, 3, 32, 32))
    (sx.square().mean() + sy.square().mean()).backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.head.final_layer.weight.grad.abs().sum() > 0


def test_keypoint_rows_permute_and_zero_rows_do_not_leak() -> None:
    # No positional encoding in the GAU: keypoint identity lives only in final_layer's rows, and
    # an all-zero row gives a token with v = 0, so it adds nothing to the other keypoints.
    torch.manual_seed(0)
    big = build_rtmpose("rtmpose-t", 3, (32, 32)).eval()
    with torch.no_grad():
        for key in PER_KEYPOINT_KEYS:
            big.state_dict()[key].normal_(std=0.05)
    x = torch.randn(2, 3, 32, 32)
    perm = [2, 0, 1]
    state = big.state_dict()
    permuted = build_rtmpose("rtmpose-t", 3, (32, 32)).eval()
    permuted.load_state_dict({k: v[perm] if k in PER_KEYPOINT_KEYS else v
                              for k, v in state.items()})
    small = build_rtmpose("rtmpose-t", 2, (32, 32)).eval()
    small.load_state_dict({k: v[:2] if k in PER_KEYPOINT_KEYS else v for k, v in state.items()})
    with torch.no_grad():
        bx, by = big(x)
        px, py = permuted(x)
        for key in PER_KEYPOINT_KEYS:
            big.state_dict()[key][2] = 0
        zx, zy = big(x)
        sx, sy = small(x)
    torch.testing.assert_close(px, bx[:, perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(py, by[:, perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zx[:, :2], sx, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(zy[:, :2], sy, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(bx[:, :2], sx)  # a non-zero third keypoint does mix in
    assert zx[:, 2].abs().max() == 0  # the zeroed keypoint itself gives all-zero logits
