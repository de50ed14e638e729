"""Tiny ONNX test models built from text (onnx.parser) with seeded random weights."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

IR_VERSION = 8


def build(text: str, weights: dict[str, tuple[int, ...] | np.ndarray], seed: int = 0) -> onnx.ModelProto:
    """Parse a graph and attach initializers: a shape gets N(0, 1/fan_in) values, an array is used as is."""
    model = onnx.parser.parse_model(text)
    model.ir_version = IR_VERSION
    rng = np.random.default_rng(seed)
    for name, spec in weights.items():
        if isinstance(spec, np.ndarray):
            value = spec
        else:
            fan_in = int(np.prod(spec[1:])) if len(spec) > 1 else 1
            value = (rng.standard_normal(spec) / np.sqrt(fan_in)).astype(np.float32)
        model.graph.initializer.append(numpy_helper.from_array(value, name))
    onnx.checker.check_model(model)
    return model


def header(inputs: str, outputs: str) -> str:
    return f'<ir_version: {IR_VERSION}, opset_import: ["" : 17]>\ng ({inputs}) => ({outputs})'


def conv_bn_pool_conv() -> onnx.ModelProto:
    """Conv -> BN -> Relu -> MaxPool -> Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm."""
    text = header("float[N,3,12,12] x", "float[N,5] y") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        b = BatchNormalization (a, s1, o1, m1, v1)
        c = Relu (b)
        d = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (c)
        e = Conv <kernel_shape = [3, 3], strides = [2, 2], pads = [1, 0, 1, 2]> (d, w2, b2)
        f = Relu (e)
        g = GlobalAveragePool (f)
        h = Flatten (g)
        y = Gemm <transB = 1> (h, w3, b3)
    }"""
    rng = np.random.default_rng(1)
    return build(text, {
        "w1": (8, 3, 3, 3), "b1": (8,), "s1": rng.uniform(0.5, 1.5, 8).astype(np.float32),
        "o1": (8,), "m1": (8,), "v1": rng.uniform(0.5, 2, 8).astype(np.float32),
        "w2": (6, 8, 3, 3), "b2": (6,), "w3": (5, 6), "b3": (5,),
    })


def conv_flatten_gemm() -> onnx.ModelProto:
    """Conv -> Relu -> Flatten -> Gemm (each channel owns H*W features) -> Relu -> Gemm."""
    text = header("float[N,2,6,6] x", "float[N,4] y") + """ {
        a = Conv <kernel_shape = [3, 3]> (x, w1, b1)
        b = Relu (a)
        c = Flatten (b)
        d = Gemm <transB = 1> (c, w2, b2)
        e = Relu (d)
        y = Gemm (e, w3, b3)
    }"""
    return build(text, {"w1": (6, 2, 3, 3), "b1": (6,), "w2": (7, 96), "b2": (7,), "w3": (7, 4), "b3": (4,)})


def gemm_gemm() -> onnx.ModelProto:
    """Gemm -> Relu -> Gemm -> Sigmoid -> Gemm."""
    text = header("float[N,10] x", "float[N,3] y") + """ {
        a = Gemm <transB = 1> (x, w1, b1)
        b = Relu (a)
        c = Gemm <transB = 1, alpha = 0.5> (b, w2, b2)
        d = Sigmoid (c)
        y = Gemm (d, w3, b3)
    }"""
    return build(text, {"w1": (12, 10), "b1": (12,), "w2": (9, 12), "b2": (9,), "w3": (9, 3), "b3": (3,)})


def matmul_gelu_matmul() -> onnx.ModelProto:
    """Transformer FFN on [batch, seq, features]: MatMul + Add -> Erf-GELU -> MatMul + Add."""
    text = header("float[N,5,8] x", "float[N,5,8] y") + """ {
        a = MatMul (x, w1)
        b = Add (a, b1)
        c = Div (b, sqrt2)
        d = Erf (c)
        e = Add (d, one)
        f = Mul (b, e)
        g = Mul (f, half)
        h = MatMul (g, w2)
        y = Add (h, b2)
    }"""
    return build(text, {
        "w1": (8, 16), "b1": (16,), "w2": (16, 8), "b2": (8,),
        "sqrt2": np.array(np.sqrt(2), np.float32), "one": np.array(1, np.float32),
        "half": np.array(0.5, np.float32),
    })


def to_constant_nodes(model: onnx.ModelProto, names: set[str]) -> onnx.ModelProto:
    """Copy of ``model`` with the named initializers turned into Constant nodes (first in the graph)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    chosen = [init for init in copy.graph.initializer if init.name in names]
    for init in chosen:
        copy.graph.initializer.remove(init)
    nodes = [onnx.helper.make_node("Constant", [], [init.name], value=init) for init in chosen]
    for index, node in enumerate(nodes):
        copy.graph.node.insert(index, node)
    onnx.checker.check_model(copy)
    return copy


def residual_se_block() -> onnx.ModelProto:
    """Stem -> inverted residual (1x1 expand, BN, Clip, depthwise 3x3, Relu, 1x1 project) with a
    squeeze-excitation gate, residual Add with the stem, then GAP -> Flatten -> Gemm.

    Groups: the stream (producers stem, project, SE fc2; consumers expand, SE fc1, Gemm), the
    expanded channels (through the depthwise Conv) and the SE inner width.
    """
    text = header("float[N,3,8,8] x", "float[N,4] y") + """ {
        r0 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (r0)
        e = Conv <kernel_shape = [1, 1]> (r, w1)
        eb = BatchNormalization (e, s1, o1, m1, v1)
        ec = Clip (eb, lo, hi)
        d = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 12> (ec, dw, db)
        dr = Relu (d)
        a = Conv <kernel_shape = [1, 1]> (dr, w2, b2)
        p = GlobalAveragePool (a)
        q = Conv <kernel_shape = [1, 1]> (p, se1, sb1)
        qr = Relu (q)
        g = Conv <kernel_shape = [1, 1]> (qr, se2, sb2)
        gate = HardSigmoid (g)
        m = Mul (a, gate)
        s = Add (m, r)
        t = Relu (s)
        u = GlobalAveragePool (t)
        v = Flatten (u)
        y = Gemm <transB = 1> (v, w3, b3)
    }"""
    rng = np.random.default_rng(2)
    return build(text, {
        "w0": (6, 3, 3, 3), "b0": (6,), "w1": (12, 6, 1, 1), "s1": rng.uniform(0.5, 1.5, 12).astype(np.float32),
        "o1": (12,), "m1": (12,), "v1": rng.uniform(0.5, 2, 12).astype(np.float32),
        "lo": np.array(0, np.float32), "hi": np.array(6, np.float32), "dw": (12, 1, 3, 3), "db": (12,),
        "w2": (6, 12, 1, 1), "b2": (6,), "se1": (3, 6, 1, 1), "sb1": (3,), "se2": (6, 3, 1, 1), "sb2": (6,),
        "w3": (4, 6), "b3": (4,),
    })


def csp_split_concat() -> onnx.ModelProto:
    """Conv -> Split in halves; one half through two convs; Concat with the other half -> 1x1 Conv."""
    text = header("float[N,3,6,6] x", "float[N,4] y") + """ {
        c0 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w0, b0)
        r0 = Relu (c0)
        a, b = Split <axis = 1> (r0, halves)
        c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, w1, b1)
        r1 = Relu (c1)
        c2 = Conv <kernel_shape = [1, 1]> (r1, w2, b2)
        r2 = Relu (c2)
        cat = Concat <axis = 1> (a, r2)
        c3 = Conv <kernel_shape = [1, 1]> (cat, w3, b3)
        r3 = Relu (c3)
        p = GlobalAveragePool (r3)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }"""
    return build(text, {
        "w0": (8, 3, 3, 3), "b0": (8,), "halves": np.array([4, 4], np.int64), "w1": (4, 4, 3, 3), "b1": (4,),
        "w2": (4, 4, 1, 1), "b2": (4,), "w3": (6, 8, 1, 1), "b3": (6,), "w4": (4, 6), "b4": (4,),
    })


def dense_block() -> onnx.ModelProto:
    """DenseNet-style: each layer BN-Relu-Conv adds channels to a growing Concat, BN after Concat."""
    text = header("float[N,2,6,6] x", "float[N,3] y") + """ {
        c0 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w0, b0)
        r = Relu (c0)
        n1a = BatchNormalization (r, s1, o1, m1, v1)
        n1b = Relu (n1a)
        n1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (n1b, w1, b1)
        cat1 = Concat <axis = 1> (r, n1)
        n2a = BatchNormalization (cat1, s2, o2, m2, v2)
        n2b = Relu (n2a)
        n2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (n2b, w2, b2)
        cat2 = Concat <axis = 1> (cat1, n2)
        t = Conv <kernel_shape = [1, 1]> (cat2, w3, b3)
        p = AveragePool <kernel_shape = [2, 2], strides = [2, 2]> (t)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }"""
    rng = np.random.default_rng(3)
    bn = lambda n, tag: {f"s{tag}": rng.uniform(0.5, 1.5, n).astype(np.float32), f"o{tag}": (n,), f"m{tag}": (n,),
                         f"v{tag}": rng.uniform(0.5, 2, n).astype(np.float32)}
    return build(text, {
        "w0": (6, 2, 3, 3), "b0": (6,), **bn(6, 1), "w1": (3, 6, 3, 3), "b1": (3,), **bn(9, 2),
        "w2": (3, 9, 3, 3), "b2": (3,), "w3": (5, 12, 1, 1), "b3": (5,), "w4": (3, 45), "b4": (3,),
    })


def channel_slice() -> onnx.ModelProto:
    """Conv -> Slice of channels [2, 6) -> Conv: only part of the producer's channels are read."""
    text = header("float[N,3,5,5] x", "float[N,3] y") + """ {
        c0 = Conv <kernel_shape = [1, 1]> (x, w0, b0)
        s = Slice (c0, starts, ends, axes)
        c1 = Conv <kernel_shape = [3, 3]> (s, w1, b1)
        f = Flatten (c1)
        y = Gemm <transB = 1> (f, w2, b2)
    }"""
    return build(text, {
        "w0": (8, 3, 1, 1), "b0": (8,), "starts": np.array([2], np.int64), "ends": np.array([6], np.int64),
        "axes": np.array([1], np.int64), "w1": (5, 4, 3, 3), "b1": (5,), "w2": (3, 45), "b2": (3,),
    })


def csp_residual() -> onnx.ModelProto:
    """CSP with a residual inside one half: Split -> (b + Conv(Relu(Conv(b)))) -> Concat."""
    text = header("float[N,3,6,6] x", "float[N,4] y") + """ {
        c0 = Conv <kernel_shape = [1, 1]> (x, w0, b0)
        r0 = Relu (c0)
        a, b = Split <axis = 1> (r0, halves)
        c1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (b, w1, b1)
        r1 = Relu (c1)
        c2 = Conv <kernel_shape = [1, 1]> (r1, w2, b2)
        s = Add (b, c2)
        cat = Concat <axis = 1> (a, s)
        c3 = Conv <kernel_shape = [1, 1]> (cat, w3, b3)
        p = GlobalAveragePool (c3)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }"""
    return build(text, {
        "w0": (8, 3, 1, 1), "b0": (8,), "halves": np.array([4, 4], np.int64), "w1": (3, 4, 3, 3), "b1": (3,),
        "w2": (4, 3, 1, 1), "b2": (4,), "w3": (6, 8, 1, 1), "b3": (6,), "w4": (4, 6), "b4": (4,),
    })


def paddle_style() -> onnx.ModelProto:
    """As paddle2onnx writes it: a bias-less Conv plus Add(Reshape(Constant, Constant [1,C,1,1]))
    -> Relu -> nearest Resize x2 (constant roi and scales) -> Conv -> Relu -> GlobalAveragePool ->
    Flatten -> Gemm."""
    text = header("float[N,3,8,8] x", "float[N,4] y") + """ {
        bias = Constant <value = float[6] {0.1, -0.2, 0.3, 0.0, 0.5, -0.1}> ()
        shape = Constant <value = int64[4] {1, 6, 1, 1}> ()
        b4 = Reshape (bias, shape)
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1)
        c = Add (a, b4)
        d = Relu (c)
        roi = Constant <value = float[0] {}> ()
        scales = Constant <value = float[4] {1.0, 1.0, 2.0, 2.0}> ()
        e = Resize <mode = "nearest"> (d, roi, scales)
        f = Conv <kernel_shape = [3, 3], strides = [2, 2]> (e, w2, b2)
        g = Relu (f)
        h = GlobalAveragePool (g)
        i = Flatten (h)
        y = Gemm <transB = 1> (i, w3, b3)
    }"""
    return build(text, {"w1": (6, 3, 3, 3), "w2": (5, 6, 3, 3), "b2": (5,), "w3": (4, 5), "b3": (4,)})


def ctc_head() -> onnx.ModelProto:
    """A text recognizer's neck and CTC head as paddle2onnx writes PP-OCRv5's: Conv -> Relu ->
    AveragePool -> Unsqueeze(0) -> Add 0 -> Squeeze(0) -> 1x3 Conv and a Concat with another
    branch -> 1x3 Conv -> Relu -> Squeeze of the height axis 2 -> Transpose [0, 2, 1] -> MatMul
    with a constant weight -> Softmax over the classes."""
    text = header("float[N,3,2,16] x", "float[N,16,7] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        b = Relu (a)
        c = AveragePool <kernel_shape = [2, 1], strides = [2, 1]> (b)
        zero = Constant <value = int64[1] {0}> ()
        d = Unsqueeze (c, zero)
        e = Add (d, nil)
        f = Squeeze (e, zero)
        g = Conv <kernel_shape = [1, 3], pads = [0, 1, 0, 1]> (f, w2, b2)
        h = Relu (g)
        i = Concat <axis = 1> (f, h)
        j = Conv <kernel_shape = [1, 3], pads = [0, 1, 0, 1]> (i, w3, b3)
        k = Relu (j)
        height = Constant <value = int64[1] {2}> ()
        l = Squeeze (k, height)
        m = Transpose <perm = [0, 2, 1]> (l)
        n = MatMul (m, w4)
        y = Softmax <axis = 2> (n)
    }"""
    return build(text, {"w1": (8, 3, 1, 1), "b1": (8,), "nil": np.zeros(1, np.float32),
                        "w2": (4, 8, 1, 3), "b2": (4,), "w3": (6, 12, 1, 3), "b3": (6,), "w4": (6, 7)})


def _bn(rng, n: int, tag: str) -> dict:
    return {f"s{tag}": rng.uniform(0.5, 1.5, n).astype(np.float32), f"o{tag}": (n,), f"m{tag}": (n,),
            f"v{tag}": rng.uniform(0.5, 2, n).astype(np.float32)}


def grouped_bottleneck() -> onnx.ModelProto:
    """ResNeXt-style bottleneck: 1x1 Conv 4->8, BN, Relu, 3x3 Conv with group=4 (2 channels per
    conv group, with bias), BN, Relu, 1x1 Conv 8->6; residual Add with a 1x1 shortcut of the
    input, Relu, GlobalAveragePool, Flatten, Gemm.

    Groups: the bottleneck's 8 channels in 4 units of 2 (one per conv group; producer Conv_0,
    consumer Conv_6) and the 6-channel stream (producers Conv_6 and the shortcut, consumer Gemm).
    """
    text = header("float[N,4,6,6] x", "float[N,3] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        ab = BatchNormalization (a, s1, o1, m1, v1)
        ar = Relu (ab)
        g = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (ar, wg, bg)
        gb = BatchNormalization (g, s2, o2, m2, v2)
        gr = Relu (gb)
        c = Conv <kernel_shape = [1, 1]> (gr, w3, b3)
        sc = Conv <kernel_shape = [1, 1]> (x, w4, b4)
        s = Add (c, sc)
        r = Relu (s)
        p = GlobalAveragePool (r)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w5, b5)
    }"""
    rng = np.random.default_rng(4)
    return build(text, {
        "w1": (8, 4, 1, 1), "b1": (8,), **_bn(rng, 8, 1), "wg": (8, 2, 3, 3), "bg": (8,), **_bn(rng, 8, 2),
        "w3": (6, 8, 1, 1), "b3": (6,), "w4": (6, 4, 1, 1), "b4": (6,), "w5": (3, 6), "b5": (3,),
    })


def depthwise_multiplier() -> onnx.ModelProto:
    """Conv 3->4, Relu, depthwise 3x3 Conv with channel multiplier 2 (group=4, 8 outputs), BN,
    Relu, per-channel Mul; read by a 1x1 Conv and, through MaxPool + Flatten, by a Gemm.

    Group Conv_0: 4 units, each an input channel of the depthwise Conv and its 2 outputs (2
    channels of the 1x1 Conv's input, 2 * 9 features of the Gemm's).
    """
    text = header("float[N,3,6,6] x", "float[N,4] y, float[N,3] z") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        ar = Relu (a)
        d = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (ar, wd, bd)
        db = BatchNormalization (d, s1, o1, m1, v1)
        dr = Relu (db)
        m = Mul (dr, scale)
        c = Conv <kernel_shape = [1, 1]> (m, w2, b2)
        cr = Relu (c)
        cp = GlobalAveragePool (cr)
        cf = Flatten (cp)
        z = Gemm <transB = 1> (cf, w4, b4)
        mp = MaxPool <kernel_shape = [2, 2], strides = [2, 2]> (m)
        f = Flatten (mp)
        y = Gemm <transB = 1> (f, w3, b3)
    }"""
    rng = np.random.default_rng(5)
    return build(text, {
        "w1": (4, 3, 3, 3), "b1": (4,), "wd": (8, 1, 3, 3), "bd": (8,), **_bn(rng, 8, 1),
        "scale": rng.uniform(0.5, 2, (1, 8, 1, 1)).astype(np.float32),
        "w2": (5, 8, 1, 1), "b2": (5,), "w3": (4, 72), "b3": (4,), "w4": (3, 5), "b4": (3,),
    })


def chained_grouped() -> onnx.ModelProto:
    """1x1 Conv 3->8, Relu, 3x3 Conv group=4 (2 in, 2 out per conv group, no bias), Relu, 3x3 Conv
    group=2 (4 in, 2 out per conv group), Relu, 1x1 Conv 4->5, GlobalAveragePool, Flatten, Gemm.

    Group Conv_0: 2 units of 4 channels (the second grouped Conv's conv groups, two of the
    first's), 2 channels each at the 1x1 Conv's input.
    """
    text = header("float[N,3,6,6] x", "float[N,3] y") + """ {
        a = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        ar = Relu (a)
        g1 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (ar, wg1)
        g1r = Relu (g1)
        g2 = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 2> (g1r, wg2, bg2)
        g2r = Relu (g2)
        c = Conv <kernel_shape = [1, 1]> (g2r, w3, b3)
        p = GlobalAveragePool (c)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }"""
    return build(text, {
        "w1": (8, 3, 1, 1), "b1": (8,), "wg1": (8, 2, 3, 3), "wg2": (4, 4, 3, 3), "bg2": (4,),
        "w3": (5, 4, 1, 1), "b3": (5,), "w4": (3, 5), "b4": (3,),
    })


def grouped_residual() -> onnx.ModelProto:
    """A residual Add of a 1x1 Conv (first in the graph) and a grouped Conv's output: the group
    found from the 1x1 Conv walks up through the grouped Conv (group=4, 2 channels per conv
    group) to its producer, and both producers are pruned 2 channels at a time."""
    text = header("float[N,3,6,6] x", "float[N,3] y") + """ {
        b = Conv <kernel_shape = [1, 1]> (x, wb, bb)
        a = Conv <kernel_shape = [1, 1]> (x, wa, ba)
        ar = Relu (a)
        g = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 4> (ar, wg, bg)
        s = Add (b, g)
        r = Relu (s)
        c = Conv <kernel_shape = [3, 3]> (r, wc, bc)
        p = GlobalAveragePool (c)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }"""
    return build(text, {
        "wb": (8, 3, 1, 1), "bb": (8,), "wa": (8, 3, 1, 1), "ba": (8,), "wg": (8, 2, 3, 3), "bg": (8,),
        "wc": (5, 8, 3, 3), "bc": (5,), "w4": (3, 5), "b4": (3,),
    })


def concat_depthwise_multiplier() -> onnx.ModelProto:
    """Two 1x1 Convs (2 and 3 channels) concatenated, a depthwise Conv with multiplier 3 (group=5),
    Relu, 1x1 Conv, GlobalAveragePool, Flatten, Gemm: each producer's group owns a window of the
    depthwise Conv's input and the matching window of 3-channel units in its output."""
    text = header("float[N,3,6,6] x", "float[N,3] y") + """ {
        a1 = Conv <kernel_shape = [1, 1]> (x, w1, b1)
        a2 = Conv <kernel_shape = [1, 1]> (x, w2, b2)
        cat = Concat <axis = 1> (a1, a2)
        d = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1], group = 5> (cat, wd, bd)
        dr = Relu (d)
        c = Conv <kernel_shape = [1, 1]> (dr, w3, b3)
        p = GlobalAveragePool (c)
        f = Flatten (p)
        y = Gemm <transB = 1> (f, w4, b4)
    }"""
    return build(text, {
        "w1": (2, 3, 1, 1), "b1": (2,), "w2": (3, 3, 1, 1), "b2": (3,), "wd": (15, 1, 3, 3), "bd": (15,),
        "w3": (4, 15, 1, 1), "b3": (4,), "w4": (3, 4), "b4": (3,),
    })


def two_inputs() -> onnx.ModelProto:
    """Two graph inputs a, b [N,4] added, then Gemm(6) -> Relu -> Gemm(3)."""
    text = header("float[N,4] a, float[N,4] b", "float[N,3] y") + """ {
        s = Add (a, b)
        h = Gemm <transB = 1> (s, w1, b1)
        r = Relu (h)
        y = Gemm <transB = 1> (r, w2, b2)
    }"""
    return build(text, {"w1": (6, 4), "b1": (6,), "w2": (3, 6), "b2": (3,)})


def unprunable_inputs() -> onnx.ModelProto:
    """Layers whose input no channel group reaches: a Conv reading a product of the graph input,
    and two MatMuls sharing a LayerNorm's output (the MatMul before the LayerNorm cannot be
    pruned through it); their outputs are graph outputs. One small group, g, is prunable."""
    text = header("float[N,8,6,6] x, float[N,5,16] t", "float[N,4,6,6] y, float[N,5,160] z, float[N,5,4] u") + """ {
        p = Mul (x, x)
        y = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (p, wc, bc)
        a = MatMul (t, w0)
        b = LayerNormalization <axis = -1> (a, s, o)
        c = MatMul (b, w1)
        d = MatMul (b, w2)
        z = Add (c, d)
        g = MatMul (t, w4)
        h = Relu (g)
        u = MatMul (h, w5)
    }"""
    rng = np.random.default_rng(2)
    model = build(text, {
        "wc": (4, 8, 3, 3), "bc": (4,), "w0": (16, 32), "s": rng.uniform(0.5, 1.5, 32).astype(np.float32),
        "o": (32,), "w1": (32, 160), "w2": (32, 160), "w4": (16, 8), "w5": (8, 4),
    })
    for node in model.graph.node:  # named after their outputs
        node.name = node.output[0]
    return model


def shared_input_heads() -> onnx.ModelProto:
    """Conv -> Relu feeding two 3x3 convs (a detector's class and box convs: the same input
    unfolded the same way) and a 1x1 conv (the same input, another unfolding)."""
    text = header("float[N,3,8,8] x", "float[N,4,8,8] cls, float[N,6,8,8] box, float[N,2,8,8] obj") + """ {
        a = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (x, w1, b1)
        f = Relu (a)
        cls = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (f, wc, bc)
        box = Conv <kernel_shape = [3, 3], pads = [1, 1, 1, 1]> (f, wb, bb)
        obj = Conv <kernel_shape = [1, 1]> (f, wo, bo)
    }"""
    return build(text, {"w1": (10, 3, 3, 3), "b1": (10,), "wc": (4, 10, 3, 3), "bc": (4,),
                        "wb": (6, 10, 3, 3), "bb": (6,), "wo": (2, 10, 1, 1), "bo": (2,)})
