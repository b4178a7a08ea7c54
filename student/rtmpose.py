"""RTMPose (CSPNeXt backbone + RTMCCHead) in plain torch, layer for layer as MMPose v1.3.2 has it.

Module and parameter names equal MMPose's, so an MMPose RTMPose-t/s/m checkpoint's state_dict
(keys under ``backbone.`` and ``head.``) loads with strict key and shape matching. Sources matched:
mmpose/models/backbones/cspnext.py, mmpose/models/backbones/csp_darknet.py (SPPBottleneck),
mmpose/models/utils/csp_layer.py, mmpose/models/utils/rtmcc_block.py,
mmpose/models/utils/transformer.py (ScaleNorm), mmpose/models/heads/coord_cls_heads/rtmcc_head.py,
mmcv's ConvModule / DepthwiseSeparableConvModule, and the values of
configs/body_2d_keypoint/rtmpose/coco/rtmpose-{t,s,m}_8xb256-420e_coco-256x192.py.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from uniskel.core.errors import UniError
from uniskel.core.simcc import SIMCC_SPLIT

# name → (deepen_factor, widen_factor), from the RTMPose COCO configs.
RTMPOSE_ARCHS: dict[str, tuple[float, float]] = {
    "rtmpose-t": (0.167, 0.375),
    "rtmpose-s": (0.33, 0.5),
    "rtmpose-m": (0.67, 0.75),
}

# Head parameters whose first dimension is the keypoint; the GAU after them has no positional
# encoding, so permuting these rows permutes the keypoints exactly.
PER_KEYPOINT_KEYS = ("head.final_layer.weight", "head.final_layer.bias")

# CSPNeXt arch 'P5': in_channels, out_channels, num_blocks, add_identity, use_spp.
_P5 = ((64, 128, 3, True, False), (128, 256, 6, True, False),
       (256, 512, 6, True, False), (512, 1024, 3, False, True))
_GAU_HIDDEN, _GAU_S, _GAU_EXPANSION = 256, 128, 2
_FINAL_KERNEL = 7
# The configs use SyncBN with torch's defaults (eps 1e-5, momentum 0.1), not CSPNeXt's own
# default BN(momentum=0.03, eps=0.001).
_BN_EPS, _BN_MOMENTUM = 1e-5, 0.1


class ConvModule(nn.Module):
    """mmcv ConvModule as configured here: conv (no bias, BN follows) → ``bn`` → SiLU."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0,
                 groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS, momentum=_BN_MOMENTUM)
        self.activate = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.activate(self.bn(self.conv(x)))


class DepthwiseSeparableConvModule(nn.Module):
    """mmcv DepthwiseSeparableConvModule: depthwise k×k ConvModule → pointwise 1×1 ConvModule."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.depthwise_conv = ConvModule(cin, cin, k, stride, padding, groups=cin)
        self.pointwise_conv = ConvModule(cin, cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise_conv(self.depthwise_conv(x))


class ChannelAttention(nn.Module):
    """mmpose csp_layer.ChannelAttention: global average → 1×1 conv (bias) → hardsigmoid gate."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.global_avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(channels, channels, 1, 1, 0, bias=True)
        self.act = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        return x * self.act(self.fc(self.global_avgpool(x)))


class CSPNeXtBlock(nn.Module):
    """mmpose csp_layer.CSPNeXtBlock (expansion 1.0 inside CSPLayer, depthwise kernel 5)."""

    def __init__(self, cin: int, cout: int, add_identity: bool, kernel_size: int = 5) -> None:
        super().__init__()
        self.conv1 = ConvModule(cin, cout, 3, 1, 1)
        self.conv2 = DepthwiseSeparableConvModule(cout, cout, kernel_size, 1, kernel_size // 2)
        self.add_identity = add_identity and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(self.conv1(x))
        return out + x if self.add_identity else out


class CSPLayer(nn.Module):
    """mmpose csp_layer.CSPLayer with CSPNeXt blocks and channel attention."""

    def __init__(self, cin: int, cout: int, num_blocks: int, add_identity: bool,
                 expand_ratio: float = 0.5) -> None:
        super().__init__()
        mid = int(cout * expand_ratio)
        self.channel_attention = True
        self.main_conv = ConvModule(cin, mid, 1)
        self.short_conv = ConvModule(cin, mid, 1)
        self.final_conv = ConvModule(2 * mid, cout, 1)
        self.blocks = nn.Sequential(*[CSPNeXtBlock(mid, mid, add_identity)
                                      for _ in range(num_blocks)])
        self.attention = ChannelAttention(2 * mid)

    def forward(self, x: Tensor) -> Tensor:
        x_short = self.short_conv(x)
        x_main = self.blocks(self.main_conv(x))
        return self.final_conv(self.attention(torch.cat((x_main, x_short), dim=1)))


class SPPBottleneck(nn.Module):
    """mmpose csp_darknet.SPPBottleneck: 1×1 halve → [x, maxpool 5/9/13] concat → 1×1."""

    def __init__(self, cin: int, cout: int, kernel_sizes: tuple[int, ...] = (5, 9, 13)) -> None:
        super().__init__()
        mid = cin // 2
        self.conv1 = ConvModule(cin, mid, 1)
        self.poolings = nn.ModuleList([nn.MaxPool2d(k, 1, k // 2) for k in kernel_sizes])
        self.conv2 = ConvModule(mid * (len(kernel_sizes) + 1), cout, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x)
        return self.conv2(torch.cat([x] + [p(x) for p in self.poolings], dim=1))


class CSPNeXt(nn.Module):
    """mmpose cspnext.CSPNeXt, arch P5, out_indices (4,): returns only the stride-32 map."""

    def __init__(self, deepen: float, widen: float, expand_ratio: float = 0.5) -> None:
        super().__init__()
        c0 = int(_P5[0][0] * widen)
        self.stem = nn.Sequential(ConvModule(3, c0 // 2, 3, 2, 1),
                                  ConvModule(c0 // 2, c0 // 2, 3, 1, 1),
                                  ConvModule(c0 // 2, c0, 3, 1, 1))
        for i, (cin, cout, n, add_identity, use_spp) in enumerate(_P5):
            cin, cout = int(cin * widen), int(cout * widen)
            stage: list[nn.Module] = [ConvModule(cin, cout, 3, 2, 1)]
            if use_spp:
                stage.append(SPPBottleneck(cout, cout))
            stage.append(CSPLayer(cout, cout, max(round(n * deepen), 1), add_identity,
                                  expand_ratio))
            self.add_module(f"stage{i + 1}", nn.Sequential(*stage))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for i in range(len(_P5)):
            x = getattr(self, f"stage{i + 1}")(x)
        return x


class ScaleNorm(nn.Module):
    """mmpose transformer.ScaleNorm: x / max(‖x‖·dim^-½, eps) · g (the ONNX branch is equal)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.scale = dim ** -0.5
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.scale
        return x / norm.clamp(min=self.eps) * self.g


class Scale(nn.Module):
    """mmpose rtmcc_block.Scale: elementwise learned scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


class RTMCCBlock(nn.Module):
    """mmpose rtmcc_block.RTMCCBlock, self-attention GAU as RTMPose configures it (SiLU, no
    relative bias, no rope, no dropout/drop-path, in == out so the scaled shortcut is on).

    Tokens are keypoints; the kernel relu(q·k/√s)² is not normalised over tokens.
    """

    def __init__(self, dims: int, expansion_factor: int = 2, s: int = 128,
                 eps: float = 1e-5) -> None:
        super().__init__()
        self.s = s
        self.e = int(dims * expansion_factor)
        self.o = nn.Linear(self.e, dims, bias=False)
        self.uv = nn.Linear(dims, 2 * self.e + s, bias=False)
        self.gamma = nn.Parameter(torch.rand((2, s)))
        self.beta = nn.Parameter(torch.rand((2, s)))
        self.ln = ScaleNorm(dims, eps=eps)
        self.act_fn = nn.SiLU()
        self.res_scale = Scale(dims)
        self.sqrt_s = math.sqrt(s)

    def forward(self, x: Tensor) -> Tensor:
        # x: (N, K, dims)
        uv = self.act_fn(self.uv(self.ln(x)))
        u, v, base = torch.split(uv, [self.e, self.e, self.s], dim=2)
        base = base.unsqueeze(2) * self.gamma[None, None, :] + self.beta  # (N, K, 2, s)
        q, k = torch.unbind(base, dim=2)
        qk = torch.bmm(q, k.permute(0, 2, 1))  # (N, K, K)
        kernel = torch.square(F.relu(qk / self.sqrt_s))
        return self.res_scale(x) + self.o(u * torch.bmm(kernel, v))


class RTMCCHead(nn.Module):
    """mmpose rtmcc_head.RTMCCHead.forward: 7×7 conv to K maps → flatten → ScaleNorm + Linear →
    GAU over keypoints → two Linear classifiers over W·split and H·split bins."""

    def __init__(self, in_channels: int, num_keypoints: int, input_wh: tuple[int, int],
                 split: float = SIMCC_SPLIT) -> None:
        super().__init__()
        fw, fh = input_wh[0] // 32, input_wh[1] // 32
        self.final_layer = nn.Conv2d(in_channels, num_keypoints, _FINAL_KERNEL, 1,
                                     _FINAL_KERNEL // 2)
        self.mlp = nn.Sequential(ScaleNorm(fw * fh),
                                 nn.Linear(fw * fh, _GAU_HIDDEN, bias=False))
        self.gau = RTMCCBlock(_GAU_HIDDEN, _GAU_EXPANSION, _GAU_S)
        self.cls_x = nn.Linear(_GAU_HIDDEN, int(input_wh[0] * split), bias=False)
        self.cls_y = nn.Linear(_GAU_HIDDEN, int(input_wh[1] * split), bias=False)

    def forward(self, feats: Tensor) -> tuple[Tensor, Tensor]:
        x = self.gau(self.mlp(torch.flatten(self.final_layer(feats), 2)))  # (N, K, hidden)
        return self.cls_x(x), self.cls_y(x)


class RTMPose(nn.Module):
    """Top-down RTMPose: crops (N, 3, H, W) → (simcc_x: (N, K, W·2), simcc_y: (N, K, H·2))."""

    def __init__(self, arch: str, num_keypoints: int, input_wh: tuple[int, int]) -> None:
        super().__init__()
        deepen, widen = RTMPOSE_ARCHS[arch]
        self.arch = arch
        self.num_keypoints = num_keypoints
        self.input_wh = (int(input_wh[0]), int(input_wh[1]))
        self.simcc_split = SIMCC_SPLIT
        self.backbone = CSPNeXt(deepen, widen)
        self.head = RTMCCHead(int(_P5[-1][1] * widen), num_keypoints, self.input_wh)
        self._init_weights()

    def _init_weights(self) -> None:
        # Backbone: CSPNeXt's init_cfg Kaiming(a=√5, uniform, fan_in, leaky_relu) on every
        # Conv2d, which is torch's default weight init, bias 0; BN weight 1 bias 0 (default).
        for m in self.backbone.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=math.sqrt(5), mode="fan_in",
                                         nonlinearity="leaky_relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        # Head: RTMCCHead.default_init_cfg, Normal(0.001) for Conv2d, Normal(0.01) for every
        # Linear (it overrides RTMCCBlock's xavier on uv), biases 0.
        for m in self.head.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.001)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.01)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(self.backbone(x))


def build_rtmpose(name: str, num_keypoints: int, input_wh: tuple[int, int]) -> RTMPose:
    """A fresh RTMPose of one of RTMPOSE_ARCHS for K keypoints and crops of input_wh (w, h)."""
    if name not in RTMPOSE_ARCHS:
        raise UniError(f"model: unknown RTMPose arch {name!r} "
                       f"(known: {', '.join(RTMPOSE_ARCHS)})")
    w, h = input_wh
    if w <= 0 or h <= 0 or w % 32 or h % 32:
        raise UniError("input size: RTMPose needs width and height divisible by 32, got "
                       f"{h}x{w} (HxW)")
    if num_keypoints < 1:
        raise UniError(f"num_keypoints: RTMPose needs at least one keypoint, got {num_keypoints}")
    return RTMPose(name, num_keypoints, (w, h))


def _shape(state: dict[str, Tensor], key: str, ndim: int) -> tuple[int, ...]:
    t = state.get(key)
    if t is None:
        raise UniError(f"state dict: not an RTMPose checkpoint, missing key {key!r}")
    if t.ndim != ndim:
        raise UniError(f"state dict: {key!r} has shape {tuple(t.shape)}, "
                       f"expected {ndim} dimensions for RTMPose")
    return tuple(t.shape)


def arch_from_state_dict(state: dict[str, Tensor]) -> tuple[str, int, tuple[int, int]]:
    """(arch name, K, input (w, h)) of an RTMPose state dict, read from parameter shapes."""
    stem_key = "backbone.stem.2.conv.weight"
    stem_width = _shape(state, stem_key, 4)[0]
    names = [n for n, (_, widen) in RTMPOSE_ARCHS.items()
             if int(_P5[0][0] * widen) == stem_width]
    if not names:
        raise UniError(f"state dict: {stem_key!r} width {stem_width} matches no RTMPose arch")
    name = names[0]
    deepen, widen = RTMPOSE_ARCHS[name]
    # Depth: count the CSPNeXt blocks in stage 2 and 4 (t and s differ only in stage 2).
    for stage, (_, _, n, _, use_spp) in ((2, _P5[1]), (4, _P5[3])):
        prefix = f"backbone.stage{stage}.{2 if use_spp else 1}.blocks."
        found = {k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)}
        want = max(round(n * deepen), 1)
        if len(found) != want:
            raise UniError(f"state dict: {prefix[:-1]!r} has {len(found)} blocks, "
                           f"{name} (from its width) has {want}")
    final_key = "head.final_layer.weight"
    k_out, k_in, _, _ = _shape(state, final_key, 4)
    if k_in != int(_P5[-1][1] * widen):
        raise UniError(f"state dict: {final_key!r} has {k_in} input channels, "
                       f"{name} has {int(_P5[-1][1] * widen)}")
    wb = _shape(state, "head.cls_x.weight", 2)[0]
    hb = _shape(state, "head.cls_y.weight", 2)[0]
    w, h = round(wb / SIMCC_SPLIT), round(hb / SIMCC_SPLIT)
    if w % 32 or h % 32 or int(w * SIMCC_SPLIT) != wb or int(h * SIMCC_SPLIT) != hb:
        raise UniError(f"state dict: 'head.cls_x.weight'/'head.cls_y.weight' rows {wb}/{hb} "
                       f"are no input size divisible by 32 at split {SIMCC_SPLIT}")
    mlp_key = "head.mlp.1.weight"
    if _shape(state, mlp_key, 2)[1] != (w // 32) * (h // 32):
        raise UniError(f"state dict: {mlp_key!r} columns do not fit input {h}x{w} (HxW)")
    return name, k_out, (w, h)


def count_flops(model: nn.Module, input_wh: tuple[int, int]) -> int:
    """Multiply-accumulates of one (1, 3, H, W) eval forward, counted as MMPose's tables count.

    Conv/linear/bmm come from torch's FlopCounterMode halved (torch counts 2 FLOPs per MAC,
    mmengine's FlopAnalyzer, which MMPose's get_flops.py uses, counts 1). mmengine also counts
    2 per BatchNorm output element (eval, affine) and 1 per adaptive-avg-pool input element
    (added here via hooks); activations, max-pools, ScaleNorm, elementwise ops count 0 in both.
    """
    w, h = input_wh
    p = next(model.parameters())
    extra = [0]

    def bn_hook(_m: nn.Module, _i: tuple[Tensor, ...], out: Tensor) -> None:
        extra[0] += 2 * out.numel()  # mmengine's eval batch_norm: scale and shift

    def pool_hook(_m: nn.Module, inp: tuple[Tensor, ...], _o: Tensor) -> None:
        extra[0] += inp[0].numel()

    hooks = [m.register_forward_hook(bn_hook) for m in model.modules()
             if isinstance(m, nn.BatchNorm2d)]
    hooks += [m.register_forward_hook(pool_hook) for m in model.modules()
              if isinstance(m, nn.AdaptiveAvgPool2d)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, h, w, dtype=p.dtype, device=p.device))
    finally:
        model.train(was_training)
        for hk in hooks:
            hk.remove()
    return counter.get_total_flops() // 2 + extra[0]
