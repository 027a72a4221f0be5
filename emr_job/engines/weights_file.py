"""Check a weights file is MobileNetV2 1.0/224 no-top before any engine touches it.

Keras matches legacy HDF5 weights to layers by position and says little when they do not fit, and
a wrong file must never turn into silently wrong features. So the file is read with h5py (no
TensorFlow import) and compared layer by layer with the shapes the architecture implies.
"""
from __future__ import annotations

import os

import h5py

from contract.layout import FEATURE_DIM

# (expansion t, output channels c, repeats n) of MobileNetV2's inverted residual stages (alpha 1.0).
_STAGES = ((1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1))
_STEM_CHANNELS = 32
_HEAD_LAYERS = ("Logits", "predictions")
_BN_WEIGHTS = 4  # gamma, beta, moving mean, moving variance


class WeightsError(ValueError):
    """A weights file the engines refuse; the message names the file and the problem."""


def expected_layer_shapes() -> dict[str, list[tuple[int, ...]]]:
    """Weight shapes of every weighted layer of Keras MobileNetV2 1.0/224 include_top=False.

    Examples
    --------
    >>> shapes = expected_layer_shapes()
    >>> len(shapes), shapes["Conv_1"]
    (104, [(1, 1, 320, 1280)])
    """
    shapes: dict[str, list[tuple[int, ...]]] = {}

    def conv_bn(conv: str, bn: str, kernel: tuple[int, ...], channels: int) -> None:
        shapes[conv] = [kernel]
        shapes[bn] = [(channels,)] * _BN_WEIGHTS

    conv_bn("Conv1", "bn_Conv1", (3, 3, 3, _STEM_CHANNELS), _STEM_CHANNELS)
    channels, block = _STEM_CHANNELS, 0
    for expansion, out_channels, repeats in _STAGES:
        for _ in range(repeats):
            prefix = f"block_{block}_" if block else "expanded_conv_"
            hidden = channels * expansion
            if block:
                conv_bn(f"{prefix}expand", f"{prefix}expand_BN", (1, 1, channels, hidden), hidden)
            conv_bn(f"{prefix}depthwise", f"{prefix}depthwise_BN", (3, 3, hidden, 1), hidden)
            conv_bn(f"{prefix}project", f"{prefix}project_BN", (1, 1, hidden, out_channels), out_channels)
            channels, block = out_channels, block + 1
    conv_bn("Conv_1", "Conv_1_bn", (1, 1, channels, FEATURE_DIM), FEATURE_DIM)
    return shapes


def validate_weights(path: str) -> None:
    """Raise WeightsError unless `path` holds MobileNetV2 1.0/224 no-top weights in Keras HDF5 layout."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    if not h5py.is_hdf5(path):
        raise WeightsError(f"weights file {path} is not HDF5: expected Keras .h5 weights")
    with h5py.File(path, "r") as file:
        group = file["model_weights"] if "model_weights" in file else file
        if "layer_names" not in group.attrs:
            raise WeightsError(f"weights file {path} has no 'layer_names': not Keras HDF5 weights")
        found = _layer_shapes(group)
    _compare(path, found)


def _layer_shapes(group: h5py.Group) -> dict[str, list[tuple[int, ...]]]:
    """Weight shapes per weighted layer, in the file's own order."""
    shapes = {}
    for layer in (_text(name) for name in group.attrs["layer_names"]):
        weight_names = [_text(name) for name in group[layer].attrs.get("weight_names", [])]
        if weight_names:
            shapes[layer] = [tuple(group[layer][name].shape) for name in weight_names]
    return shapes


def _compare(path: str, found: dict[str, list[tuple[int, ...]]]) -> None:
    head = [layer for layer in _HEAD_LAYERS if layer in found]
    if head:
        raise WeightsError(
            f"weights file {path} has a classification head (layer {head[0]!r}): it is an "
            "include_top=True file; the features need MobileNetV2 1.0/224 include_top=False weights"
        )
    expected = expected_layer_shapes()
    for layer, shapes in expected.items():
        if layer not in found:
            raise WeightsError(
                f"weights file {path} lacks layer {layer!r}: not MobileNetV2 1.0/224 no-top weights "
                f"({len(found)} weighted layers found, {len(expected)} expected)"
            )
        if found[layer] != shapes:
            raise WeightsError(
                f"weights file {path}: layer {layer!r} has shapes {found[layer]}, expected {shapes} "
                "(MobileNetV2 1.0/224 no-top)"
            )
    extra = [layer for layer in found if layer not in expected]
    if extra:
        raise WeightsError(f"weights file {path} has unexpected layers {extra[:3]}: not MobileNetV2 no-top")


def _text(name: bytes | str) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)
