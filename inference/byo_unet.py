"""Build a small 2D U-Net as an ONNX graph from its weights (``onnx.helper``, no torch).

The layout is the one of the third-party "UNet-Small" lung model (github.com/knottwill/UNet-Small,
MIT): encoder blocks ``conv1..convN`` and ``middle`` (Conv3x3 -> BatchNorm -> ReLU, twice), each
encoder block followed by MaxPool 2x2; decoder steps ``upsampleK`` (ConvTranspose kernel 3,
stride 2, padding 1, output padding 1) -> Concat[upsampled, skip] -> ``upconvK`` (double conv);
``final`` 1x1 conv -> Sigmoid. State-dict names index the ``nn.Sequential`` members: ``.0``/``.3``
convolutions, ``.1``/``.4`` batch norms. The project's own lung model (models/training) uses the
same layout with 3 input slices, so one builder exports both.

``python -m inference.byo_unet WEIGHTS.npz REGISTRY_DIR`` writes ``unet-small/<version>/`` with
``model.onnx`` and its manifest (bring-your-own-model example; the weights are not shipped).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from inference.registry import binary_lung_mask

OPSET = 17
BN_EPS = 1e-5


class UNetWeightsError(ValueError):
    """The weights do not describe the expected U-Net layout."""


def _depth(state: Mapping[str, np.ndarray]) -> int:
    levels = {int(m.group(1)) for key in state if (m := re.match(r"conv(\d+)\.0\.weight$", key))}
    depth = len(levels)
    if depth == 0 or levels != set(range(1, depth + 1)):
        raise UNetWeightsError("weights need encoder blocks conv1..convN (conv1.0.weight, ...)")
    for key in ("middle.0.weight", "final.weight", "final.bias"):
        if key not in state:
            raise UNetWeightsError(f"weights lack {key!r}")
    for level in range(1, depth + 1):
        if f"upsample{level}.weight" not in state or f"upconv{level}.0.weight" not in state:
            raise UNetWeightsError(f"weights lack decoder level {level}")
    return depth


def build_unet_onnx(
    state: Mapping[str, np.ndarray], *, input_name: str = "input", output_name: str = "probability"
) -> onnx.ModelProto:
    """An ONNX model N x C x H x W float32 -> N x 1 x H x W probabilities (H, W divisible by
    2**depth; both dynamic). Raises :class:`UNetWeightsError` on a layout mismatch."""
    depth = _depth(state)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []

    def const(name: str) -> str:
        if name not in state:
            raise UNetWeightsError(f"weights lack {name!r}")
        inits.append(numpy_helper.from_array(np.asarray(state[name], dtype=np.float32), name))
        return name

    def double_conv(block: str, x: str) -> str:
        for conv, bn in ((0, 1), (3, 4)):
            c = f"{block}.{conv}"
            b = f"{block}.{bn}"
            nodes.append(
                helper.make_node(
                    "Conv",
                    [x, const(f"{c}.weight"), const(f"{c}.bias")],
                    [f"{c}.out"],
                    kernel_shape=[3, 3],
                    pads=[1, 1, 1, 1],
                )
            )
            bn_inputs = [f"{c}.out"] + [
                const(f"{b}.{p}") for p in ("weight", "bias", "running_mean", "running_var")
            ]
            nodes.append(
                helper.make_node("BatchNormalization", bn_inputs, [f"{b}.out"], epsilon=BN_EPS)
            )
            nodes.append(helper.make_node("Relu", [f"{b}.out"], [f"{b}.relu"]))
            x = f"{b}.relu"
        return x

    x = input_name
    skips = []
    for level in range(1, depth + 1):
        x = double_conv(f"conv{level}", x)
        skips.append(x)
        nodes.append(
            helper.make_node("MaxPool", [x], [f"pool{level}"], kernel_shape=[2, 2], strides=[2, 2])
        )
        x = f"pool{level}"
    x = double_conv("middle", x)
    for level in range(depth, 0, -1):
        up = f"upsample{level}"
        kernel = np.asarray(state[f"{up}.weight"])
        nodes.append(
            helper.make_node(
                "ConvTranspose",
                [x, const(f"{up}.weight"), const(f"{up}.bias")],
                [f"{up}.out"],
                kernel_shape=list(kernel.shape[2:]),
                strides=[2, 2],
                pads=[1, 1, 1, 1],
                output_padding=[1, 1],
            )
        )
        nodes.append(
            helper.make_node("Concat", [f"{up}.out", skips[level - 1]], [f"cat{level}"], axis=1)
        )
        x = double_conv(f"upconv{level}", f"cat{level}")
    nodes.append(
        helper.make_node(
            "Conv", [x, const("final.weight"), const("final.bias")], ["logit"], kernel_shape=[1, 1]
        )
    )
    nodes.append(helper.make_node("Sigmoid", ["logit"], [output_name]))
    channels = int(np.asarray(state["conv1.0.weight"]).shape[1])
    graph = helper.make_graph(
        nodes,
        "unet2d",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["N", channels, "H", "W"])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["N", 1, "H", "W"])],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pacs.byo_unet"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """The float tensors of a state dict saved with ``numpy.savez``."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files if not k.endswith("num_batches_tracked")}


def unet_small_manifest(sha256: str, version: str = "1.0.0") -> dict[str, object]:
    """Manifest of the third-party UNet-Small model (raw stored values, 512x512 slices)."""
    return {
        "name": "unet-small",
        "version": version,
        "sha256": sha256,
        "task": "lung-segmentation",
        "input": {
            "axes": "NCHW",
            "orientation": "LPS",
            # the slices it was trained on: 512 x 512 at about 1 mm (native z)
            "spacing_mm": [0.9765625, 0.9765625, None],
            "slice_size": [512, 512],
            "context_slices": 0,
            "intensity": {"offset": 1024.0, "clip_min": None, "clip_max": None, "scale": 1.0},
            "pad_value_hu": -1024.0,
            "batch_size": 4,  # 512 x 512 slices: bounded activation memory
        },
        **binary_lung_mask(),
        "intended_use": (
            "Demonstration of a third-party model: binary lung mask on axial chest CT slices. "
            "Not for clinical use."
        ),
        "training_data": "12 cases of the TCIA Lung CT Segmentation Challenge 2017 (its author's).",
        "evaluation": {},
        "licence": "MIT (c) 2023 William Knottenbelt; github.com/knottwill/UNet-Small",
    }


def main(argv: list[str] | None = None) -> int:
    """Convert UNet-Small weights and register them in a registry folder."""
    from inference.registry import ModelRegistry

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("weights", type=Path)
    parser.add_argument("registry", type=Path)
    args = parser.parse_args(argv)
    model = build_unet_onnx(load_npz(args.weights))
    path = args.registry / "unet-small.onnx.tmp"
    args.registry.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    try:
        manifest = ModelRegistry(args.registry).register(path, unet_small_manifest(""))
    finally:
        path.unlink(missing_ok=True)
    print(f"registered {manifest.name} {manifest.version} sha256={manifest.sha256}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
