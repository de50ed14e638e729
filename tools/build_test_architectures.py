#!/usr/bin/env python3
"""Build the small ONNX test architectures for coupled channel groups.

Writes, into --out (default models/arch/), opset-17 ONNX models whose channel
groups are not simple chains: residual Adds, Split/Concat, depthwise convs,
squeeze-excitation gates, DenseNet concatenation, a transformer encoder layer
and an NHWC input followed by a Transpose.

    resnet_mixed.onnx      basic + bottleneck blocks, 1x1 conv+BN shortcuts
    mobilenetv2.onnx       inverted residuals (expand, depthwise, project)
    mobilenetv3_se.onnx    MobileNetV3 blocks: hard-swish, SE gates
    csp_split_concat.onnx  CSP block: Split halves, bottleneck, Concat
    densenet_block.onnx    dense block (BN-ReLU-conv, nested Concat) + transition
    bert_layer.onnx        one BERT-style encoder layer, input [N,S,32]
    bert_encoder.onnx      two encoder layers, S fixed at 8: constant head
                           reshape shapes, an attention mask from the input
    <name>_const.onnx      each of the six above with BN folded into the
                           convolutions (where a conv precedes it) and every
                           initializer turned into a Constant node
    nhwc_cnn.onnx          NHWC input [N,28,28,1] -> Transpose -> small CNN
    resnext_grouped.onnx   ResNeXt blocks (grouped 3x3 convs, cardinality 8)
                           after a depthwise conv with channel multiplier 2
                           (and its _const copy)
    digits_calib_small.npz "input" float32 [64,1,28,28]
    nhwc_calib.npz         "input" float32 [64,28,28,1]
    bert_calib.npz         "input" float32 [64,8,32] (seeded normal)
    README.md              structure, expected groups, node counts

The CNNs are trained briefly (3-20 epochs, a few seconds each) on
scikit-learn's digits so that their activations and BatchNorm statistics are
realistic; the BERT layer keeps random weights.  Image models take "input" [N,1,28,28] (nhwc_cnn: [N,28,28,1])
and return "logits" [N,10]; bert_layer takes "input" [N,S,32] and returns
"output" [N,S,32].  Every model is checked with onnx.checker (full check) and
against torch with onnxruntime (max abs diff < 1e-4), at several batch sizes
(and sequence lengths for BERT).

Usage:
    python tools/build_test_architectures.py --out models/arch/

Requirements: torch (CPU build is fine), scikit-learn, onnx, onnxruntime, numpy.
Data loading, training and the exporter clean-up helpers are imported from
tools/train_reference_models.py.
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import sys
import time
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper

from train_reference_models import (
    load_data,
    materialize_initializer_identities,
    name_nodes,
    set_determinism,
    train_model,
)

OPSET = 17
NUM_CLASSES = 10
IMG = 28
CALIB_SMALL = 64
BERT_HIDDEN = 32
BERT_HEADS = 4
BERT_FFN = 128
BERT_SEQ = 8
TOL = 1e-4


# --------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------

def conv_bn(cin: int, cout: int, k: int, stride: int = 1,
            groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2,
                  groups=groups, bias=False),
        nn.BatchNorm2d(cout))


# ---- 1. ResNet with basic and bottleneck blocks ---------------------------

class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = (conv_bn(cin, cout, 1, stride)
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        cout = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (conv_bn(cin, cout, 1, stride)
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class ResNetMixed(nn.Module):
    """stem conv16 -> layer1: basic16, basic16 -> layer2: bottleneck(16->8->32,
    stride 2, 1x1 shortcut), bottleneck(32->8->32), basic32 -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(1, 16, 3)
        self.layer1 = nn.Sequential(BasicBlock(16, 16), BasicBlock(16, 16))
        self.layer2 = nn.Sequential(Bottleneck(16, 8, stride=2),
                                    Bottleneck(32, 8), BasicBlock(32, 32))
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = self.layer2(self.layer1(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ---- 2. MobileNetV2 --------------------------------------------------------

class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers = []
        if expand != 1:
            layers += [*conv_bn(cin, hidden, 1), nn.ReLU6()]
        layers += [*conv_bn(hidden, hidden, 3, stride, groups=hidden),
                   nn.ReLU6(),
                   *conv_bn(hidden, cout, 1)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_res else out


class MobileNetV2Small(nn.Module):
    """stem conv16 s2 -> IR(16->16, t=1, residual) -> IR(16->24, t=4, s2)
    -> IR(24->24, t=4, residual) -> conv1x1 64 -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3, 2), nn.ReLU6())
        self.blocks = nn.Sequential(
            InvertedResidual(16, 16, 1, 1),
            InvertedResidual(16, 24, 2, 4),
            InvertedResidual(24, 24, 1, 4))
        self.head = nn.Sequential(*conv_bn(24, 64, 1), nn.ReLU6())
        self.fc = nn.Linear(64, NUM_CLASSES)

    def forward(self, x):
        x = self.head(self.blocks(self.stem(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ---- 3. MobileNetV3 with squeeze-excitation -------------------------------

class SqueezeExcite(nn.Module):
    def __init__(self, ch: int, squeeze: int, gate: nn.Module):
        super().__init__()
        self.fc1 = nn.Conv2d(ch, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, ch, 1)
        self.gate = gate

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = self.gate(self.fc2(F.relu(self.fc1(s))))
        return x * s


class MBV3Block(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, stride: int,
                 squeeze: int, gate: nn.Module):
        super().__init__()
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(*conv_bn(cin, hidden, 1), nn.Hardswish())
        self.dw = nn.Sequential(*conv_bn(hidden, hidden, 3, stride,
                                         groups=hidden), nn.Hardswish())
        self.se = SqueezeExcite(hidden, squeeze, gate)
        self.project = conv_bn(hidden, cout, 1)

    def forward(self, x):
        out = self.project(self.se(self.dw(self.expand(x))))
        return x + out if self.use_res else out


class MobileNetV3SE(nn.Module):
    """stem conv16 s2 hswish -> block(16->64->16, SE 64/16 hardsigmoid,
    residual) -> block(16->72->24, s2, SE 72/24 sigmoid) -> conv1x1 96 hswish
    -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3, 2), nn.Hardswish())
        self.block1 = MBV3Block(16, 64, 16, 1, 16, nn.Hardsigmoid())
        self.block2 = MBV3Block(16, 72, 24, 2, 24, nn.Sigmoid())
        self.head = nn.Sequential(*conv_bn(24, 96, 1), nn.Hardswish())
        self.fc = nn.Linear(96, NUM_CLASSES)

    def forward(self, x):
        x = self.head(self.block2(self.block1(self.stem(x))))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ---- 4. CSP block with Split and Concat ----------------------------------

def conv_bn_silu(cin: int, cout: int, k: int, stride: int = 1):
    return nn.Sequential(*conv_bn(cin, cout, k, stride), nn.SiLU())


class CSPNet(nn.Module):
    """stem conv16 s2 -> cv1 1x1 32 -> Split [16,16] -> second half through a
    bottleneck (3x3 16, 3x3 16, residual Add with the half) -> Concat
    [bottleneck, first half] -> cv2 1x1 32 -> conv3x3 32 s2 -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn_silu(1, 16, 3, 2)
        self.cv1 = conv_bn_silu(16, 32, 1)
        self.m1 = conv_bn_silu(16, 16, 3)
        self.m2 = conv_bn_silu(16, 16, 3)
        self.cv2 = conv_bn_silu(32, 32, 1)
        self.down = conv_bn_silu(32, 32, 3, 2)
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = self.cv1(self.stem(x))
        a, b = torch.split(x, [16, 16], dim=1)
        b = b + self.m2(self.m1(b))
        x = self.cv2(torch.cat([b, a], dim=1))
        x = self.down(x)
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ---- 5. DenseNet block -----------------------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x):
        return torch.cat([x, self.conv(F.relu(self.bn(x)))], dim=1)


class DenseNetBlock(nn.Module):
    """stem conv16 s2 BN ReLU -> 3 dense layers (BN-ReLU-conv3x3 growth 8,
    concatenated: 16 -> 24 -> 32 -> 40) -> transition BN-ReLU-conv1x1 20 +
    avgpool 2 -> final BN ReLU -> GAP -> fc."""

    def __init__(self, growth: int = 8):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 16, 3, 2), nn.ReLU())
        ch = 16
        layers = []
        for _ in range(3):
            layers.append(DenseLayer(ch, growth))
            ch += growth
        self.block = nn.Sequential(*layers)
        self.trans_bn = nn.BatchNorm2d(ch)
        self.trans_conv = nn.Conv2d(ch, ch // 2, 1, bias=False)
        self.final_bn = nn.BatchNorm2d(ch // 2)
        self.fc = nn.Linear(ch // 2, NUM_CLASSES)

    def forward(self, x):
        x = self.block(self.stem(x))
        x = self.trans_conv(F.relu(self.trans_bn(x)))
        x = F.relu(self.final_bn(F.avg_pool2d(x, 2)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


# ---- 6. BERT-style encoder layer ------------------------------------------

class BertLayer(nn.Module):
    """Post-LN encoder layer: multi-head self-attention (Q, K, V, output
    Linear), residual + LayerNorm, FFN 32->128 GELU(erf) ->32, residual +
    LayerNorm."""

    def __init__(self, hidden: int = BERT_HIDDEN, heads: int = BERT_HEADS,
                 ffn: int = BERT_FFN, seq: int | None = None):
        super().__init__()
        self.seq = seq  # a fixed sequence length makes the head reshapes constant
        self.heads = heads
        self.head_dim = hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.k = nn.Linear(hidden, hidden)
        self.v = nn.Linear(hidden, hidden)
        self.attn_out = nn.Linear(hidden, hidden)
        self.ln1 = nn.LayerNorm(hidden)
        self.fc1 = nn.Linear(hidden, ffn)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn, hidden)
        self.ln2 = nn.LayerNorm(hidden)

    def _split(self, t, n, s):
        return t.reshape(n, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, mask=None):
        n, s = (-1, self.seq) if self.seq else (x.shape[0], x.shape[1])
        q = self._split(self.q(x), n, s)
        k = self._split(self.k(x), n, s)
        v = self._split(self.v(x), n, s)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
        if mask is not None:
            scores = scores + mask
        probs = torch.softmax(scores, dim=-1)
        ctx = torch.matmul(probs, v).transpose(1, 2)
        ctx = ctx.reshape(n, s, self.heads * self.head_dim)
        x = self.ln1(x + self.attn_out(ctx))
        x = self.ln2(x + self.fc2(self.act(self.fc1(x))))
        return x


class BertEncoder(nn.Module):
    """Two post-LN encoder layers at a fixed sequence length, so that the exporter writes the
    head reshapes with constant shapes ([-1, 8, 4, 8] and [-1, 8, 32]), and an additive
    attention mask computed from the input (all-zero token vectors are padding): the mask
    [N, 1, 1, S] is added to every head's scores."""

    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([BertLayer(seq=BERT_SEQ) for _ in range(2)])

    def forward(self, x):
        padding = (x.abs().sum(-1) == 0).float()
        mask = padding[:, None, None, :] * -1e4
        for layer in self.layers:
            x = layer(x, mask)
        return x


# ---- 8. NHWC CNN -----------------------------------------------------------

class NHWCCNN(nn.Module):
    """input [N,28,28,1] -> Transpose to NCHW -> conv16 BN ReLU -> conv32 BN
    ReLU -> maxpool 2 -> flatten 6272 -> fc 10."""

    def __init__(self):
        super().__init__()
        self.conv1 = conv_bn(1, 16, 3)
        self.conv2 = conv_bn(16, 32, 3)
        self.fc = nn.Linear(32 * 14 * 14, NUM_CLASSES)

    def forward(self, x):
        x = x.permute(0, 3, 1, 2)
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        x = F.max_pool2d(x, 2)
        return self.fc(torch.flatten(x, 1))


# ---- 9. ResNeXt-style grouped convolutions --------------------------------

class ResNeXtBlock(nn.Module):
    """1x1 reduce -> BN ReLU -> 3x3 grouped conv (``groups`` conv groups) ->
    BN ReLU -> 1x1 expand -> BN, residual Add (1x1 conv+BN shortcut when the
    shape changes), ReLU."""

    def __init__(self, cin: int, width: int, cout: int, groups: int,
                 stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, groups=groups,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.downsample = (conv_bn(cin, cout, 1, stride)
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        idt = x if self.downsample is None else self.downsample(x)
        return F.relu(out + idt)


class ResNeXtGrouped(nn.Module):
    """stem conv8 BN ReLU -> depthwise 3x3 with channel multiplier 2 (8 ->
    16, groups 8) BN ReLU -> ResNeXt block 16->32(8x4d)->32 stride 2 with
    1x1 conv+BN shortcut -> ResNeXt block 32->32(8x4d)->32 -> GAP -> fc."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn(1, 8, 3), nn.ReLU(),
                                  *conv_bn(8, 16, 3, groups=8), nn.ReLU())
        self.blocks = nn.Sequential(ResNeXtBlock(16, 32, 32, 8, stride=2),
                                    ResNeXtBlock(32, 32, 32, 8))
        self.fc = nn.Linear(32, NUM_CLASSES)

    def forward(self, x):
        x = self.blocks(self.stem(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


class _FromNCHW(nn.Module):
    """Training wrapper: feeds NCHW digits to an NHWC model."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x.permute(0, 2, 3, 1))


# --------------------------------------------------------------------------
# Specs: structure text and the groups a structured pruner should find
# --------------------------------------------------------------------------

# name -> (class, kind, const copy?, structure, [conceptual groups])
SPECS = collections.OrderedDict([
    ("resnet_mixed", (ResNetMixed, "image", True,
        "stem conv3x3 1->16 BN ReLU; layer1: 2 basic blocks (16, identity "
        "shortcuts); layer2: bottleneck 16->8->8->32 stride 2 (1x1-3x3-1x1, "
        "expansion 4) with 1x1 conv+BN shortcut, bottleneck 32->8->8->32 "
        "(identity), basic block 32 (identity); global average pool, fc 10.",
        [
            "residual stream of layer1 (16 ch): producers stem conv, "
            "layer1.0.conv2, layer1.1.conv2 (each with its BN); consumers "
            "layer1.0.conv1, layer1.1.conv1, layer2.0.conv1, "
            "layer2.0.downsample conv (all through Add/Relu).",
            "residual stream of layer2 (32 ch): producers layer2.0.conv3, "
            "layer2.0.downsample conv, layer2.1.conv3, layer2.2.conv2; "
            "consumers layer2.1.conv1, layer2.2.conv1, fc (through "
            "GlobalAveragePool + Flatten).",
            "7 internal chains: layer1.0.conv1 (16), layer1.1.conv1 (16), "
            "layer2.0.conv1 (8), layer2.0.conv2 (8), layer2.1.conv1 (8), "
            "layer2.1.conv2 (8), layer2.2.conv1 (32).",
            "not prunable: fc output (graph output).",
            "total: 9 prunable groups.",
        ])),
    ("mobilenetv2", (MobileNetV2Small, "image", True,
        "stem conv3x3 1->16 stride 2 BN ReLU6(Clip); IR block 1 (t=1, no "
        "expand): depthwise 3x3 16 BN ReLU6, project 1x1 16 BN, residual Add; "
        "IR block 2 (t=4, stride 2): expand 1x1 16->64 BN ReLU6, depthwise "
        "3x3 64 s2 BN ReLU6, project 64->24 BN (no residual); IR block 3 "
        "(t=4): expand 24->96, depthwise 96, project 96->24, residual Add; "
        "head conv1x1 24->64 BN ReLU6; global average pool, fc 10.",
        [
            "stream 16 ch: producers stem conv, blocks.0 project conv "
            "(residual Add); pass-through blocks.0 depthwise conv (its "
            "filters sliced with the group); consumers blocks.0 project conv "
            "(input side, through the depthwise), blocks.1 expand conv. The "
            "blocks.0 project conv is both a consumer and a producer of this "
            "group.",
            "blocks.1 expansion (64 ch): producer expand conv, pass-through "
            "depthwise conv, consumer project conv.",
            "stream 24 ch: producers blocks.1 project conv, blocks.2 project "
            "conv (residual Add); consumers blocks.2 expand conv, head conv.",
            "blocks.2 expansion (96 ch): producer expand conv, pass-through "
            "depthwise conv, consumer project conv.",
            "head (64 ch): producer head conv, consumer fc (through "
            "GlobalAveragePool + Flatten).",
            "total: 5 prunable groups (3 of them contain a depthwise conv).",
        ])),
    ("mobilenetv3_se", (MobileNetV3SE, "image", True,
        "stem conv3x3 1->16 stride 2 BN HardSwish; block1: expand 1x1 16->64 "
        "BN HardSwish, depthwise 3x3 64 BN HardSwish, SE (GlobalAveragePool, "
        "1x1 conv 64->16 + bias, Relu, 1x1 conv 16->64 + bias, HardSigmoid, "
        "Mul with the depthwise output), project 1x1 64->16 BN, residual Add; "
        "block2: same with 16->72->24, depthwise stride 2, SE 72->24->72 with "
        "a Sigmoid gate (EfficientNet style), no residual; head conv1x1 "
        "24->96 BN HardSwish; global average pool, fc 10.",
        [
            "stream 16 ch: producers stem conv, block1 project conv "
            "(residual Add); consumers block1 expand conv, block2 expand "
            "conv.",
            "block1 expansion (64 ch): producers expand conv and SE fc2 (the "
            "gate, through HardSigmoid into the Mul); pass-through depthwise "
            "conv; consumers SE fc1 (through GlobalAveragePool) and project "
            "conv (through the Mul).",
            "block1 SE squeeze (16 ch): producer SE fc1, consumer SE fc2.",
            "block2 expansion (72 ch): producers expand conv and SE fc2 "
            "(Sigmoid gate); pass-through depthwise conv; consumers SE fc1, "
            "project conv.",
            "block2 SE squeeze (24 ch): producer SE fc1, consumer SE fc2.",
            "block2 output (24 ch): producer block2 project conv, consumer "
            "head conv.",
            "head (96 ch): producer head conv, consumer fc.",
            "total: 7 prunable groups.",
        ])),
    ("csp_split_concat", (CSPNet, "image", True,
        "stem conv3x3 1->16 stride 2 BN SiLU; cv1 1x1 16->32 BN SiLU; Split "
        "on channels into a = [0,16) and b = [16,32); b through a bottleneck "
        "(conv3x3 16 BN SiLU, conv3x3 16 BN SiLU) with residual Add of b; "
        "Concat [bottleneck output, a] (note the order: a ends up at offset "
        "16); cv2 1x1 32->32 BN SiLU; conv3x3 32->32 stride 2 BN SiLU; global "
        "average pool, fc 10. SiLU is exported as Sigmoid + Mul(x, "
        "sigmoid(x)): a Mul whose two inputs carry the same group.",
        [
            "stem (16 ch): producer stem conv, consumer cv1.",
            "half a = cv1 output channels [0,16): producer cv1 (range 0:16), "
            "consumer cv2 input channels [16,32) (Concat offset 16).",
            "half b = cv1 output channels [16,32) + bottleneck output: "
            "producers cv1 (range 16:32) and m2 (residual Add); consumers m1 "
            "and cv2 input channels [0,16) (Concat offset 0).",
            "bottleneck inner (16 ch): producer m1, consumer m2.",
            "cv2 (32 ch): producer cv2, consumer down conv.",
            "down (32 ch): producer down conv, consumer fc.",
            "total: 6 prunable groups; cv1 belongs to two of them (one per "
            "Split range), and the Split sizes and Concat offsets must be "
            "rewritten.",
        ])),
    ("densenet_block", (DenseNetBlock, "image", True,
        "stem conv3x3 1->16 stride 2 BN ReLU; dense block of 3 layers, each "
        "BN -> ReLU -> conv3x3 growth 8, concatenated to its input (nested "
        "Concats: 16 -> 24 -> 32 -> 40); transition BN -> ReLU -> conv1x1 "
        "40->20 -> AveragePool 2; final BN -> ReLU (DenseNet's norm5); "
        "global average pool, fc 10.",
        [
            "stem (16 ch): producer stem conv; consumers block.0 (BN + conv "
            "input channels [0,16)), block.1 ([0,16) of 24), block.2 ([0,16) "
            "of 32), transition ([0,16) of 40); each consumer's "
            "pre-activation BN is sliced at the same range.",
            "layer0 growth (8 ch): producer block.0 conv; consumers block.1 "
            "[16,24), block.2 [16,24), transition [16,24).",
            "layer1 growth (8 ch): producer block.1 conv; consumers block.2 "
            "[24,32), transition [24,32).",
            "layer2 growth (8 ch): producer block.2 conv; consumer transition "
            "[32,40).",
            "transition (20 ch): producer transition conv; pass-through "
            "AveragePool and the final BN (sliced); consumer fc (through "
            "Relu, GlobalAveragePool, Flatten).",
            "total: 5 prunable groups.",
        ])),
    ("bert_layer", (BertLayer, "seq", True,
        "one post-LN BERT encoder layer, hidden 32, 4 heads of 8: Q, K, V "
        "Linear (MatMul + Add), Reshape [N,S,4,8] + Transpose, scores MatMul "
        "Q K^T / sqrt(8), Softmax, context MatMul, Transpose + Reshape, "
        "output Linear, residual Add, LayerNormalization; FFN Linear 32->128, "
        "GELU (exact: Div, Erf, Add, Mul, Mul), Linear 128->32, residual Add, "
        "LayerNormalization.  Random weights. The exporter writes each "
        "Linear bias as Add(bias, MatMul output), bias first; the Reshape "
        "target shapes are computed from Shape/Gather/Unsqueeze/Concat.",
        [
            "heads (4 units of 8 channels): producers q, k, v (MatMul weight "
            "columns + Add bias, 8 at a time); pass-through the head Reshapes "
            "(computed shapes: their constant head count and width are "
            "rewritten), Transposes, the scores and context MatMuls, Div, "
            "Softmax; consumer attn_out (8 weight rows per head).",
            "FFN intermediate (128 ch): producer fc1 (MatMul weight columns + "
            "Add bias) through Erf-GELU, consumer fc2 (MatMul weight rows), "
            "under leading [N,S] axes.",
            "not prunable: the 32-ch residual stream (LayerNormalization and "
            "the graph output).",
            "total: 2 prunable groups.",
        ])),
    ("bert_encoder", (BertEncoder, "seq_fixed", True,
        "two post-LN BERT encoder layers (as bert_layer, hidden 32, 4 heads of 8) at a fixed "
        "sequence length of 8: the head reshapes have constant shapes [-1, 8, 4, 8] and "
        "[-1, 8, 32]; an additive attention mask [N, 1, 1, 8] computed from the input "
        "(all-zero token vectors are padding) is added to the scores of every head.",
        [
            "per layer, heads (4 units of 8 channels): producers q, k, v (MatMul weight "
            "columns + Add bias, 8 at a time); pass-through the head Reshapes (their "
            "constant head count and width are rewritten), Transposes, the scores and "
            "context MatMuls, Div, the mask Add, Softmax; consumer attn_out (8 rows per head).",
            "per layer, FFN intermediate (128 ch): as in bert_layer.",
            "total: 4 prunable groups.",
        ])),
    ("nhwc_cnn", (NHWCCNN, "nhwc", False,
        "input [N,28,28,1] NHWC, Transpose perm [0,3,1,2] to NCHW; conv3x3 "
        "1->16 BN ReLU; conv3x3 16->32 BN ReLU; MaxPool 2; Flatten (32*14*14 "
        "= 6272); fc 10.",
        [
            "conv1 (16 ch): producer conv1, consumer conv2.",
            "conv2 (32 ch): producer conv2, consumer fc through MaxPool + "
            "Flatten (each channel owns 196 consecutive fc input columns).",
            "not prunable: the input channel (behind the Transpose) and the "
            "fc output.",
            "total: 2 prunable groups.",
        ])),
    ("resnext_grouped", (ResNeXtGrouped, "image", True,
        "stem conv3x3 1->8 BN ReLU, depthwise conv3x3 with channel "
        "multiplier 2 (8->16, group 8) BN ReLU; ResNeXt block 1: 1x1 16->32 "
        "BN ReLU, grouped conv3x3 32->32 stride 2 (group 8, 4 channels per "
        "conv group) BN ReLU, 1x1 32->32 BN, 1x1 conv+BN shortcut, residual "
        "Add, ReLU; ResNeXt block 2: the same 32->32->32 with an identity "
        "shortcut; global average pool, fc 10.",
        [
            "stem (8 units of 2 channels): producer stem conv; pass-through "
            "BN, ReLU, the depthwise conv with multiplier 2 (each stem "
            "channel owns its 2 outputs), BN, ReLU; consumers blocks.0 "
            "conv1 and blocks.0 downsample conv (2 input channels per "
            "unit).",
            "blocks.0 inner (8 units of 4 channels, one per conv group): "
            "producer blocks.0 conv1; pass-through BN, ReLU, the grouped "
            "conv (its group count shrinks with the units), BN, ReLU; "
            "consumer blocks.0 conv3.",
            "stream 32 ch: producers blocks.0 conv3, blocks.0 downsample "
            "conv, blocks.1 conv3 (residual Adds); consumers blocks.1 conv1 "
            "and fc (through GlobalAveragePool + Flatten).",
            "blocks.1 inner (8 units of 4 channels): as blocks.0.",
            "total: 4 prunable groups.",
        ])),
])

TRAIN_EPOCHS = {"resnet_mixed": 10, "mobilenetv2": 10, "mobilenetv3_se": 10,
                "csp_split_concat": 10, "densenet_block": 20, "nhwc_cnn": 3,
                "resnext_grouped": 10}
TRAIN_LR = 3e-3


# --------------------------------------------------------------------------
# Export and post-processing
# --------------------------------------------------------------------------

def _io_spec(kind: str):
    if kind in ("seq", "seq_fixed"):
        dummy = torch.zeros(2, BERT_SEQ, BERT_HIDDEN)
        out = "output"
        axes = {"input": {0: "N", 1: "S"}, out: {0: "N", 1: "S"}}
        if kind == "seq_fixed":
            axes = {"input": {0: "N"}, out: {0: "N"}}
    elif kind == "nhwc":
        dummy = torch.zeros(2, IMG, IMG, 1)
        out = "logits"
        axes = {"input": {0: "N"}, out: {0: "N"}}
    else:
        dummy = torch.zeros(2, 1, IMG, IMG)
        out = "logits"
        axes = {"input": {0: "N"}, out: {0: "N"}}
    return dummy, out, axes


def initializers_to_constants(model: onnx.ModelProto) -> None:
    """Move every initializer into a Constant node at the top of the graph
    (the form PaddlePaddle and tf2onnx exports often take)."""
    g = model.graph
    consts = []
    for t in g.initializer:
        node = helper.make_node("Constant", [], [t.name],
                                name=f"/Constant_{t.name}")
        v = onnx.TensorProto()
        v.CopyFrom(t)
        v.name = ""
        node.attribute.append(helper.make_attribute("value", v))
        consts.append(node)
    names = {t.name for t in g.initializer}
    rest = list(g.node)
    del g.initializer[:]
    del g.node[:]
    g.node.extend(consts + rest)
    # graph inputs that only listed initializers (keep_initializers_as_inputs)
    keep_inputs = [i for i in g.input if i.name not in names]
    del g.input[:]
    g.input.extend(keep_inputs)


def export(model: nn.Module, kind: str, path: str, const: bool
           ) -> onnx.ModelProto:
    """Export with BN nodes kept (const=False) or folded into the preceding
    conv and all weights as Constant nodes (const=True)."""
    model.eval()
    dummy, out_name, axes = _io_spec(kind)
    mode = (torch.onnx.TrainingMode.EVAL if const
            else torch.onnx.TrainingMode.PRESERVE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (dummy,), path,
            dynamo=False,
            opset_version=OPSET,
            input_names=["input"],
            output_names=[out_name],
            dynamic_axes=axes,
            do_constant_folding=True,
            training=mode,
        )
    m = onnx.load(path)
    materialize_initializer_identities(m)
    if const:
        initializers_to_constants(m)
    del m.graph.value_info[:]
    name_nodes(m)
    m = onnx.shape_inference.infer_shapes(m)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, path)
    return m


def ort_run(path: str, x: np.ndarray, out_name: str) -> np.ndarray:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return sess.run([out_name], {"input": x})[0]


def verify(model: nn.Module, path: str, out_name: str,
           inputs: list) -> float:
    """Max |torch - onnxruntime| over the given input arrays."""
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        got = ort_run(path, x, out_name)
        if got.shape != ref.shape:
            raise RuntimeError(f"{path}: shape {got.shape} != {ref.shape}")
        worst = max(worst, float(np.abs(ref - got).max()))
    return worst


def op_counts(m: onnx.ModelProto) -> collections.Counter:
    return collections.Counter(n.op_type for n in m.graph.node)


def io_desc(m: onnx.ModelProto) -> tuple:
    def shape(vi):
        dims = []
        for d in vi.type.tensor_type.shape.dim:
            dims.append(d.dim_param if d.dim_param else str(d.dim_value))
        return f"{vi.name} [{','.join(dims)}]"
    return (", ".join(shape(i) for i in m.graph.input),
            ", ".join(shape(o) for o in m.graph.output))


def count_weights(m: onnx.ModelProto) -> int:
    n = sum(int(np.prod(t.dims)) for t in m.graph.initializer
            if t.data_type == onnx.TensorProto.FLOAT)
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value" and a.t.data_type == onnx.TensorProto.FLOAT:
                    n += int(np.prod(a.t.dims))
    return n


# --------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------

def write_readme(out_dir: str, rows: list) -> None:
    L = [
        "# Test architectures (coupled channel groups)",
        "",
        "Small opset-17 ONNX models whose prunable channels are coupled: "
        "residual Adds, depthwise convolutions, squeeze-excitation gates, "
        "Split/Concat, DenseNet concatenation, a transformer encoder layer "
        "and an NHWC input. Built by `tools/build_test_architectures.py` "
        "(issue 3, \"Test models\").",
        "",
        "The CNNs are trained for a few epochs on scikit-learn's digits "
        "(same preprocessing as `models/`, see `models/README.md`) so that "
        "activations and BN statistics are realistic; `bert_layer` has "
        "random weights. Image models take `input` float32 `[N,1,28,28]` and "
        "return `logits` `[N,10]`; `nhwc_cnn` takes `input` `[N,28,28,1]`; "
        "`bert_layer` takes `input` `[N,S,32]` and returns `output` "
        "`[N,S,32]` (N and S dynamic).",
        "",
        "`<name>.onnx` keeps BatchNormalization nodes and stores weights as "
        "initializers. `<name>_const.onnx` is the same trained network "
        "exported with BN folded into the preceding convolution "
        "(TrainingMode.EVAL) and every initializer moved into a `Constant` "
        "node at the top of the graph. In `densenet_block_const.onnx` the "
        "pre-activation BNs of the dense layers and the transition follow a "
        "Concat, and the final BN follows an AveragePool, not a conv, so "
        "these 5 stay BatchNormalization nodes (with Constant-node "
        "parameters); only the stem BN is folded.",
        "",
        "Every file passes `onnx.checker.check_model(full_check=True)` and "
        "matches torch under onnxruntime (CPU) to < 1e-4 at batch sizes 1, "
        "7, 64 and 500 (BERT: batch/sequence 64/8, 1/1, 7/5, 3/13). Node "
        "names are "
        "unique; exporter-deduplicated weights (Identity on an initializer) "
        "are replaced by plain copies.",
        "",
        "## Files",
        "",
        "| file | size | float weights | Conv | Gemm | MatMul | BN | "
        "digits test acc | max abs diff vs torch |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        acc = "-" if r["acc"] is None else f"{100 * r['acc']:.1f}%"
        c = r["ops"]
        L.append(f"| `{r['file']}` | {r['size'] / 1024:.1f} KiB | "
                 f"{r['weights']:,} | {c['Conv']} | {c['Gemm']} | "
                 f"{c['MatMul']} | {c['BatchNormalization']} | {acc} | "
                 f"{r['diff']:.1e} |")
    L += [
        "",
        "Test accuracy is on the 500 test images of `models/digits_test.npz` "
        "(after a few epochs only; these are structure fixtures, not "
        "accuracy references). The MatMul count of `bert_layer` includes "
        "the two attention MatMuls (scores and context) whose operands are "
        "both activations; 6 MatMuls have a constant weight.",
        "",
        "## Data files",
        "",
        "| file | content |",
        "| --- | --- |",
        f"| `digits_calib_small.npz` | `input`: float32 [{CALIB_SMALL},1,28,28],"
        " the first 64 images of `models/digits_calib.npz` |",
        f"| `nhwc_calib.npz` | `input`: float32 [{CALIB_SMALL},28,28,1], the "
        "same images transposed to NHWC |",
        f"| `bert_calib.npz` | `input`: float32 [{CALIB_SMALL},{BERT_SEQ},"
        f"{BERT_HIDDEN}], standard normal, numpy seed 1234 |",
        "",
        "Held-out data for the image models: `models/digits_test.npz` "
        "(transpose to NHWC for `nhwc_cnn`). For `bert_layer`, draw another "
        "seed.",
        "",
        "## Architectures and expected groups",
        "",
        "A *group* is a set of channels that must be pruned identically: its "
        "producers (whose output channels are removed), pass-through ops "
        "(depthwise convs, BN, per-channel gates, whose per-channel "
        "parameters are sliced) and consumers (whose input channels are "
        "removed). Group counts are for the BN-kept files; the `_const` "
        "copies have the same groups (BN already folded into the producer).",
        "",
    ]
    for name, (cls, kind, const, structure, groups) in SPECS.items():
        files = f"`{name}.onnx`" + (f", `{name}_const.onnx`" if const else "")
        L += [f"### {files}", "", structure, "", "Groups:", ""]
        L += [f"- {g}" for g in groups]
        L.append("")
        for r in rows:
            if r["name"] == name:
                summary = ", ".join(f"{k} {v}" for k, v in
                                    sorted(r["ops"].items()))
                L.append(f"`{r['file']}` ops: {summary}. "
                         f"Inputs: {r['io'][0]}; outputs: {r['io'][1]}.")
                L.append("")
    L += [
        "## Regenerate",
        "",
        "```",
        "python tools/build_test_architectures.py --out models/arch/",
        "```",
        "",
        "Needs torch (a CPU build is enough), scikit-learn, onnx, onnxruntime "
        "and numpy. Seeded and deterministic with one CPU thread (the "
        "default): a rerun gives byte-identical files. Takes about 40 s on "
        "CPU (mostly training; `--epochs-scale 0.2` for a quick smoke run).",
        "",
    ]
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write("\n".join(L))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="models/arch", help="output directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (1 gives bitwise reproducibility)")
    ap.add_argument("--epochs-scale", type=float, default=1.0,
                    help="multiply the training epochs (0 skips training)")
    ap.add_argument("--only", nargs="*", default=None,
                    help="build only these: " + ", ".join(SPECS))
    ap.add_argument("--no-readme", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.time()
    set_determinism(args.seed, args.threads)
    os.makedirs(args.out, exist_ok=True)

    data = load_data()
    calib = np.ascontiguousarray(data["x_train"][:CALIB_SMALL],
                                 dtype=np.float32)
    calib_nhwc = np.ascontiguousarray(calib.transpose(0, 2, 3, 1))
    bert_calib = np.random.default_rng(1234).standard_normal(
        (CALIB_SMALL, BERT_SEQ, BERT_HIDDEN)).astype(np.float32)
    np.savez(os.path.join(args.out, "digits_calib_small.npz"), input=calib)
    np.savez(os.path.join(args.out, "nhwc_calib.npz"), input=calib_nhwc)
    np.savez(os.path.join(args.out, "bert_calib.npz"), input=bert_calib)

    x_test = data["x_test"]
    rng = np.random.default_rng(99)
    rows, failures = [], []
    for i, (name, (cls, kind, const, _s, _g)) in enumerate(SPECS.items()):
        if args.only and name not in args.only:
            continue
        ts = time.time()
        torch.manual_seed(args.seed + 1000 + i)
        model = cls()
        if kind in ("seq", "seq_fixed"):
            # random weights; make the LayerNorm affine parameters non-trivial
            with torch.no_grad():
                for ln in (m for m in model.modules() if isinstance(m, nn.LayerNorm)):
                    ln.weight.uniform_(0.5, 1.5)
                    ln.bias.normal_(0.0, 0.1)
            padded = bert_calib[:5].copy()
            padded[:, 6:] = 0  # the last two tokens are padding
            inputs = [bert_calib, padded, bert_calib[:1]]
            if kind == "seq":
                inputs += [bert_calib[:1, :1],
                           rng.standard_normal((7, 5, BERT_HIDDEN)).astype(np.float32),
                           rng.standard_normal((3, 13, BERT_HIDDEN)).astype(np.float32)]
        else:
            ep = int(round(TRAIN_EPOCHS[name] * args.epochs_scale))
            if ep > 0:
                net = _FromNCHW(model) if kind == "nhwc" else model
                train_model(net, data, ep, TRAIN_LR, 1e-4,
                            args.seed + 100 + i, 64, 2,
                            log=lambda s, n=name: print(f"[{name}]{s}"))
            x = x_test if kind == "image" else np.ascontiguousarray(
                x_test.transpose(0, 2, 3, 1))
            inputs = [x[:1], x[:7], x[:64], x]
        model.eval()
        n_params = sum(p.numel() for p in model.parameters())
        variants = [False, True] if const else [False]
        for c in variants:
            fname = f"{name}_const.onnx" if c else f"{name}.onnx"
            path = os.path.join(args.out, fname)
            m = export(model, kind, path, c)
            out_name = m.graph.output[0].name
            diff = verify(model, path, out_name, inputs)
            ops = op_counts(m)
            acc = None
            if not kind.startswith("seq"):
                got = ort_run(path, inputs[-1], out_name)
                acc = float((got.argmax(1) == data["y_test"]).mean())
            if diff >= TOL:
                failures.append(f"{fname}: torch/onnx mismatch {diff:.2e}")
            if not c and not kind.startswith("seq") and ops["BatchNormalization"] == 0:
                failures.append(f"{fname}: BatchNormalization nodes folded")
            if c:
                if len(m.graph.initializer):
                    failures.append(f"{fname}: initializers left")
                n_bn = ops["BatchNormalization"]
                if name != "densenet_block" and n_bn:
                    failures.append(f"{fname}: {n_bn} BN nodes not folded")
            rows.append({"name": name, "file": fname, "ops": ops,
                         "size": os.path.getsize(path),
                         "weights": count_weights(m), "io": io_desc(m),
                         "acc": acc, "diff": diff})
            accs = "" if acc is None else f", test acc {100 * acc:.1f}%"
            print(f"[{name}] {fname}: params {n_params:,}, "
                  f"max|torch-ort| {diff:.1e}{accs}")
            print("    ops: " + ", ".join(f"{k} {v}" for k, v in
                                         sorted(ops.items())))
        print(f"[{name}] {time.time() - ts:.1f}s")

    elapsed = time.time() - t0
    if not args.no_readme and not args.only:
        write_readme(args.out, rows)
    total = sum(os.path.getsize(os.path.join(args.out, f))
                for f in os.listdir(args.out))
    print(f"total size of {args.out}: {total / 1024:.1f} KiB; "
          f"time {elapsed:.1f}s")
    if failures:
        for f in failures:
            print("FAILED:", f, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
