"""The ONNX graphs of the example workflows' own stages, written with onnx.helper.

Each function returns a model whose batch dimension `N` is dynamic (calls batch together) and
whose tensors chain across the edges of `workflows/*/workflow.yaml`:

    imagepre    image UINT8 [N, 256, 256, 3] -> data_0 FP32 [N, 3, 224, 224]
    label       probabilities FP32 [N, 1000, 1, 1] -> scores FP32 [N, 5], indices INT64 [N, 5]
    vote        squeezenet FP32 [N, 1000, 1, 1], resnet50 FP32 [N, 1000]
                -> probabilities FP32 [N, 1000], scores FP32 [N, 5], indices INT64 [N, 5]
    segment     data_0 FP32 [N, 3, 224, 224] -> mask FP32 [N, 1, 224, 224] (0..1)
    composite   image FP32 [N, 3, 224, 224], mask FP32 [N, 1, 224, 224]
                -> coverage FP32 [N], thumbnail UINT8 [N, 56, 56, 4] (RGBA)

`data_0` [N, 3, 224, 224] is what the squeezenet and resnet50 examples take; `label` takes
squeezenet's output as it is ([N, 1000, 1, 1]), and `vote` takes both classifiers' outputs.
Nothing here is trained: the graphs are fixed computations (crop, normalise, TopK, mean) and
`segment` is a small convolutional net whose weights are set by hand (a chroma key, see
`segment_graph`). Needs only numpy and onnx.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: onnxruntime reads models up to a given IR version; 8 (opset <= 17) is read by every 1.17+.
IR_VERSION = 8
OPSET = 17
PRODUCER = "faasd build_models.py"

#: imagepre's input: the handler's picture, shorter side resized to SIDE and centre-cropped to a
#: SIDE x SIDE square, RGB, channels last. The graph crops the centre CROP x CROP out of it.
SIDE = 256
CROP = 224
#: ImageNet's per-channel mean and standard deviation (RGB, 0..1), as faasd.handlers has them.
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
CLASSES = 1000
TOP_K = 5
#: composite's thumbnail: the CROP x CROP picture averaged over THUMB_POOL x THUMB_POOL blocks.
THUMB_POOL = 4
THUMB = CROP // THUMB_POOL
#: segment's chroma key, on ImageNet-normalised channels: logit = GAIN * (R + G - 2B + OFFSET).
#: Blue sky is about -4.4 (deep) to -1.9 (pale) in R + G - 2B, green grass +0.7, a yellow sun
#: +5.3, neutral greys about -0.6; OFFSET puts the edge between pale sky and grey.
KEY_GAIN = 2.5
KEY_OFFSET = 0.8


def _tensor(name: str, elem: int, shape: list[int | str]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _model(graph: onnx.GraphProto, doc: str) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER)
    model.ir_version = IR_VERSION
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def _const(name: str, values: np.ndarray | list[float] | list[int],
           dtype: type = np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def imagepre_graph() -> onnx.ModelProto:
    """image UINT8 [N, 256, 256, 3] -> data_0 FP32 [N, 3, 224, 224].

    Centre crop (Slice), Cast, ImageNet normalisation folded into one multiply-add per channel
    ((x / 255 - mean) / std = x * 1 / (255 std) - mean / std), channels last -> first. With
    the handler's resize this is the torchvision recipe that the classifiers' own handlers
    apply (faasd.handlers.imagenet_tensor), to within float rounding.
    """
    margin = (SIDE - CROP) // 2
    scale = 1.0 / (255.0 * IMAGENET_STD)
    shift = -IMAGENET_MEAN / IMAGENET_STD
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["cropped"]),
        helper.make_node("Cast", ["cropped"], ["pixels"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pixels", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "shift"], ["normalised"]),
        helper.make_node("Transpose", ["normalised"], ["data_0"], perm=[0, 3, 1, 2]),
    ]
    graph = helper.make_graph(
        nodes, "imagepre",
        [_tensor("image", TensorProto.UINT8, ["N", SIDE, SIDE, 3])],
        [_tensor("data_0", TensorProto.FLOAT, ["N", 3, CROP, CROP])],
        [
            _const("starts", [margin, margin], np.int64),
            _const("ends", [margin + CROP, margin + CROP], np.int64),
            _const("axes", [1, 2], np.int64),
            _const("scale", scale),
            _const("shift", shift),
        ],
    )
    return _model(graph, "Image preprocessing: centre crop 224, ImageNet normalisation, HWC->CHW.")


def _top_k_nodes(source: str) -> list[onnx.NodeProto]:
    return [helper.make_node("TopK", [source, "k"], ["scores", "indices"],
                             axis=1, largest=1, sorted=1)]


def label_graph() -> onnx.ModelProto:
    """probabilities FP32 [N, 1000, 1, 1] -> the TOP_K best: scores FP32, indices INT64 [N, 5].

    TopK's order is by score, ties broken by the lower index first (ONNX TopK-11), as
    faasd.handlers.top_k does it.
    """
    nodes = [helper.make_node("Flatten", ["probabilities"], ["flat"], axis=1),
             *_top_k_nodes("flat")]
    graph = helper.make_graph(
        nodes, "label",
        [_tensor("probabilities", TensorProto.FLOAT, ["N", CLASSES, 1, 1])],
        [_tensor("scores", TensorProto.FLOAT, ["N", TOP_K]),
         _tensor("indices", TensorProto.INT64, ["N", TOP_K])],
        [_const("k", [TOP_K], np.int64)],
    )
    return _model(graph, "TopK(5) of a classifier's class probabilities.")


def vote_graph() -> onnx.ModelProto:
    """squeezenet [N, 1000, 1, 1] and resnet50 [N, 1000] -> their mean and its TopK.

    Soft voting: the ensemble's class probabilities are the mean of the members' (each already
    sums to 1, so the mean does too).
    """
    nodes = [
        helper.make_node("Flatten", ["squeezenet"], ["squeezenet_flat"], axis=1),
        helper.make_node("Flatten", ["resnet50"], ["resnet50_flat"], axis=1),
        helper.make_node("Mean", ["squeezenet_flat", "resnet50_flat"], ["probabilities"]),
        *_top_k_nodes("probabilities"),
    ]
    graph = helper.make_graph(
        nodes, "vote",
        [_tensor("squeezenet", TensorProto.FLOAT, ["N", CLASSES, 1, 1]),
         _tensor("resnet50", TensorProto.FLOAT, ["N", CLASSES])],
        [_tensor("probabilities", TensorProto.FLOAT, ["N", CLASSES]),
         _tensor("scores", TensorProto.FLOAT, ["N", TOP_K]),
         _tensor("indices", TensorProto.INT64, ["N", TOP_K])],
        [_const("k", [TOP_K], np.int64)],
    )
    return _model(graph, "Soft vote of two ImageNet classifiers: Mean, then TopK(5).")


def _box(size: int) -> np.ndarray:
    return np.full((size, size), 1.0 / (size * size), dtype=np.float32)


def segment_weights() -> dict[str, np.ndarray]:
    """The hand-set weights of `segment_graph` (no training; see KEY_GAIN and KEY_OFFSET).

    conv1 projects the colour on R + G - 2B ("not blue") and its negation, each averaged over
    3x3 pixels, so that after Relu the two channels carry the positive and negative parts;
    conv2 averages each channel over 3x3 again (grouped, one filter per channel); conv3 (1x1)
    recombines them into GAIN * (R + G - 2B + OFFSET): the logit of "foreground".
    """
    projection = np.array([1.0, 1.0, -2.0], dtype=np.float32)
    conv1 = np.stack([projection[:, None, None] * _box(3), -projection[:, None, None] * _box(3)])
    conv2 = np.stack([_box(3)[None], _box(3)[None]])
    return {
        "conv1_w": conv1.astype(np.float32),  # [2, 3, 3, 3]
        "conv2_w": conv2.astype(np.float32),  # [2, 1, 3, 3], group 2
        "conv3_w": np.array([KEY_GAIN, -KEY_GAIN], dtype=np.float32).reshape(1, 2, 1, 1),
        "conv3_b": np.array([KEY_GAIN * KEY_OFFSET], dtype=np.float32),
    }


def segment_graph() -> onnx.ModelProto:
    """data_0 FP32 [N, 3, 224, 224] -> mask FP32 [N, 1, 224, 224], 1 = foreground.

    A small encoder-decoder: Conv 3x3 stride 2 + Relu (112x112), grouped Conv 3x3 stride 2 +
    Relu (56x56), Conv 1x1 to one logit, Resize x4 (linear) back to 224x224, Sigmoid. Its
    weights make it a chroma key that takes blue (sky, a blue screen) as background; a trained
    segmenter of the same shape would replace them.
    """
    weights = segment_weights()
    nodes = [
        helper.make_node("Conv", ["data_0", "conv1_w"], ["conv1"],
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("Conv", ["relu1", "conv2_w"], ["conv2"],
                         kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], group=2),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("Conv", ["relu2", "conv3_w", "conv3_b"], ["logits_small"],
                         kernel_shape=[1, 1]),
        helper.make_node("Resize", ["logits_small", "", "upscale"], ["logits"], mode="linear"),
        helper.make_node("Sigmoid", ["logits"], ["mask"]),
    ]
    graph = helper.make_graph(
        nodes, "segment",
        [_tensor("data_0", TensorProto.FLOAT, ["N", 3, CROP, CROP])],
        [_tensor("mask", TensorProto.FLOAT, ["N", 1, CROP, CROP])],
        [*(numpy_helper.from_array(v, k) for k, v in weights.items()),
         _const("upscale", [1.0, 1.0, 4.0, 4.0])],
    )
    return _model(graph, "Background elimination: a small conv net (hand-set chroma-key "
                         "weights) giving a sigmoid foreground mask.")


def composite_graph() -> onnx.ModelProto:
    """image FP32 [N, 3, 224, 224] (normalised), mask [N, 1, 224, 224] -> coverage, thumbnail.

    coverage [N]: the mean of the mask (the foreground's share of the picture, 0..1).
    thumbnail UINT8 [N, 56, 56, 4]: the picture back in 0..255, multiplied by the mask (the
    background goes black), averaged over 4x4 blocks, with the averaged mask as alpha;
    channels last, rounded, clipped to 0..255.
    """
    nodes = [
        helper.make_node("Mul", ["image", "std255"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean255"], ["rgb"]),
        helper.make_node("Mul", ["rgb", "mask"], ["cut"]),
        helper.make_node("Mul", ["mask", "full"], ["alpha"]),
        helper.make_node("Concat", ["cut", "alpha"], ["rgba"], axis=1),
        helper.make_node("AveragePool", ["rgba"], ["small"],
                         kernel_shape=[THUMB_POOL, THUMB_POOL], strides=[THUMB_POOL, THUMB_POOL]),
        helper.make_node("Transpose", ["small"], ["channels_last"], perm=[0, 2, 3, 1]),
        helper.make_node("Round", ["channels_last"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "zero", "full"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], ["thumbnail"], to=TensorProto.UINT8),
        helper.make_node("ReduceMean", ["mask"], ["coverage"], axes=[1, 2, 3], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "composite",
        [_tensor("image", TensorProto.FLOAT, ["N", 3, CROP, CROP]),
         _tensor("mask", TensorProto.FLOAT, ["N", 1, CROP, CROP])],
        [_tensor("coverage", TensorProto.FLOAT, ["N"]),
         _tensor("thumbnail", TensorProto.UINT8, ["N", THUMB, THUMB, 4])],
        [_const("std255", (IMAGENET_STD * 255.0).reshape(1, 3, 1, 1)),
         _const("mean255", (IMAGENET_MEAN * 255.0).reshape(1, 3, 1, 1)),
         _const("full", 255.0),
         _const("zero", 0.0)],
    )
    return _model(graph, "Cut the foreground out: picture x mask, its coverage and an RGBA "
                         "thumbnail.")


#: Every graph here by the name of the function (or workflow stage) that serves it.
GRAPHS = {
    "imagepre": imagepre_graph,
    "label": label_graph,
    "vote": vote_graph,
    "segment": segment_graph,
    "composite": composite_graph,
}
