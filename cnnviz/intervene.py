"""Change a layer's channels and run the rest of the network from there: ablate (zero, or the channel's
mean on this photo), scale, or keep only some channels (:func:`intervene`); and every channel zeroed one at
a time, ranked by how far the class's score drops (:func:`channel_importance`).

An intervention is a forward hook on the layer that returns the changed output, so every module after it
sees the change and nothing before it runs differently. The hook acts on the layer's first call in a pass
(the call its maps are drawn from), for the thread that registered it, and is removed on exit; passes hold
the model's lock, run in eval mode without gradients, under :func:`cnnviz.hooks.interruptible`. The layer's
own output is never written to: the hook hands on a changed copy, so a later in-place op
(``ReLU(inplace=True)``, :attr:`LayerInfo.overwritten`) changes the copy, as it would the layer's output.

Layouts: NCHW maps, channels-last (NHWC: ConvNeXt/Swin blocks) and patch tokens (ViT: the change is made
to the patch tokens, the maps drawn; class and other prefix tokens are left as they are).

Written by hand: no installed library ablates channels at a hooked layer (captum's ``FeatureAblation``
ablates inputs or one layer's units one forward per feature, without the batched tail used here).
"""
from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from . import vocab
from .errors import CnnvizError, InvalidOptionError, quoted
from .hooks import eval_mode, forward_hooks, interruptible
from .layers import LayerInfo

if TYPE_CHECKING:
    from .loading import LoadedModel

MAX_FACTOR = 3.0  # scale: ×0 … ×3 (more is no longer "this channel, stronger": it swamps the layer)
IMPORTANCE_BATCH = 32  # ablated copies per forward of the rest of the network, at most (cnnviz.budget may choose fewer)
MAX_LISTED = 4096  # channels named in one intervention, at most


# --- which channels -------------------------------------------------------------------------------

_TOP = re.compile(r"^top[\s\-_]*(\d+)$")


def parse_channels(channels: object, info: LayerInfo, maps: torch.Tensor | None = None) -> tuple[int, ...]:
    """The channels ``channels`` names at ``info``, sorted, each once: an int, a list of ints, text of
    whole numbers separated by commas or spaces (``"3, 7, 12"``), or ``"top-N"`` (also ``"top N"``):
    the N channels with the highest mean on this photo (``maps``: the layer's ``Tensor[C,H,W]``).

    Raises:
        InvalidOptionError: nothing named, a channel outside the layer, or a word that is not a number.

    >>> info = LayerInfo("layer1", "Sequential", (8, 4, 4), 1)
    >>> parse_channels("7, 3 3", info), parse_channels(5, info)
    ((3, 7), (5,))
    >>> parse_channels("top-2", info, torch.arange(8.0)[:, None, None].expand(8, 4, 4))
    (6, 7)
    """
    count = info.shape[0]
    where = f" ({info.name} has channels 0 to {count - 1})"
    if isinstance(channels, str):
        text = channels.strip().lower()
        top = _TOP.match(text)
        if top:
            n = vocab.whole(int(top.group(1)), 1, count, "N of top-N", f" ({info.name} has {count} channels)")
            if maps is None:
                raise InvalidOptionError("top-N needs the layer's maps on this photo.")
            means = maps.reshape(maps.shape[0], -1).float().mean(1)
            return tuple(sorted(int(i) for i in means.topk(n).indices))
        words = [w for w in re.split(r"[\s,;]+", text) if w]
        if not words:
            raise InvalidOptionError(f"Name at least one channel: a number, a list such as \"3, 7, 12\", or \"top-5\"{where}.")
        if len(words) > MAX_LISTED:
            raise InvalidOptionError(f"At most {MAX_LISTED} channels can be listed, not {len(words)}.")
        picked = []
        for word in words:
            if not word.isdigit():
                raise InvalidOptionError(
                    f"Channels are whole numbers separated by commas (\"3, 7, 12\") or \"top-N\", not {quoted(channels)}.")
            picked.append(int(word))
    elif isinstance(channels, (list, tuple)):
        if not channels:
            raise InvalidOptionError(f"Name at least one channel{where}.")
        if len(channels) > MAX_LISTED:
            raise InvalidOptionError(f"At most {MAX_LISTED} channels can be listed, not {len(channels)}.")
        picked = list(channels)
    else:
        picked = [channels]
    return tuple(sorted({vocab.whole(c, 0, count - 1, "Channel", where) for c in picked}))


def check_factor(factor: object) -> float:
    """``factor`` as a float when it is a number from 0 to :data:`MAX_FACTOR`.

    >>> check_factor(2)
    2.0
    """
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not 0.0 <= float(factor) <= MAX_FACTOR:
        raise InvalidOptionError(f"The scale factor must be a number from 0 to {MAX_FACTOR:g}, not {quoted(factor)}.")
    return float(factor)


# --- changing a raw output ------------------------------------------------------------------------


def _body(info: LayerInfo, output: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(the part of a raw output that holds the map, a view; its channel dimension). Tokens: the patch
    tokens (prefix tokens set aside)."""
    if info.layout == "tokens":
        return output[:, info.prefix:], 2
    return output, 1 if info.layout == "NCHW" else 3


def _check_output(info: LayerInfo, output: object) -> torch.Tensor:
    """``output`` when it is a tensor laid out as ``info`` was listed (else the sentence)."""
    info.to_nchw(output)  # raises CnnvizError with the sentence when the layout does not hold
    return output


def changed(info: LayerInfo, output: torch.Tensor, mode: str, channels: Sequence[int], factor: float = 1.0) -> torch.Tensor:
    """A copy of the layer's raw ``output`` (any batch) with ``channels`` changed in every batch item:
    ``zero``; ``mean`` (each channel set to its mean over the map's positions, per item); ``scale`` (times
    ``factor``); ``keep`` (every other channel zeroed). ``output`` is not written to.

    >>> info = LayerInfo("x", "Conv2d", (3, 1, 2), 1)
    >>> changed(info, torch.tensor([[[[1., 3.]], [[2., 2.]], [[5., 7.]]]]), "mean", [0, 2]).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0, 6.0, 6.0]
    """
    mode = vocab.option(vocab.Intervention, mode, "intervention")
    out = output.clone()
    body, dim = _body(info, out)
    index = torch.as_tensor(list(channels), dtype=torch.long, device=out.device)
    if mode == vocab.Intervention.ZERO:
        body.index_fill_(dim, index, 0)
    elif mode == vocab.Intervention.SCALE:
        body.index_copy_(dim, index, body.index_select(dim, index) * factor)
    elif mode == vocab.Intervention.MEAN:
        picked = body.index_select(dim, index)
        positions = tuple(d for d in range(1, picked.ndim) if d != dim)
        body.index_copy_(dim, index, picked.mean(positions, keepdim=True).expand_as(picked).contiguous())
    else:  # keep: the complement zeroed
        others = torch.ones(body.shape[dim], dtype=torch.bool, device=out.device)
        others[index] = False
        body.index_fill_(dim, others.nonzero().flatten(), 0)
    return out


def one_zeroed_per_item(info: LayerInfo, output: torch.Tensor, channels: Sequence[int]) -> torch.Tensor:
    """``len(channels)`` copies of the batch-of-one ``output`` (or of each item of an output of that batch),
    item ``i`` with channel ``channels[i]`` zeroed.

    >>> info = LayerInfo("x", "Conv2d", (2, 1, 1), 1)
    >>> one_zeroed_per_item(info, torch.ones(1, 2, 1, 1), [1, 0]).flatten().tolist()
    [1.0, 0.0, 0.0, 1.0]
    """
    n = len(channels)
    out = (output.expand(n, *output.shape[1:]) if output.shape[0] == 1 else output).clone()
    body, dim = _body(info, out)
    index: list = [slice(None)] * body.ndim
    index[0] = torch.arange(n, device=out.device)
    index[dim] = torch.as_tensor(list(channels), dtype=torch.long, device=out.device)
    body[tuple(index)] = 0
    return out


@contextmanager
def _replaced(module: torch.nn.Module, info: LayerInfo, change: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Inside the block (one pass), the first call of ``module`` by this thread hands on ``change(output)``
    (a later call of the same module, e.g. a shared ReLU, runs as it is). Removed on exit."""
    owner, calls = threading.get_ident(), [0]

    def hook(_module, _inputs, output):
        if threading.get_ident() != owner:
            return None
        calls[0] += 1
        if calls[0] > 1:
            return None
        return change(_check_output(info, output))

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _captured(module: torch.nn.Module, into: list) -> Iterator[None]:
    """Copies of ``module``'s first output of each pass by this thread go to ``into`` (cloned at once: a
    later in-place op would change it). Hooks run in the order registered: enter it after :func:`_replaced`
    on the same module to see the changed output."""
    owner = threading.get_ident()

    def hook(_module, _inputs, output):
        if threading.get_ident() == owner and isinstance(output, torch.Tensor):
            into.append(output.detach().clone())

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _scores(loaded: LoadedModel, out: object, batch: int) -> torch.Tensor:
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != batch:
        raise CnnvizError(f"{loaded.spec.display} does not output class scores, so there is no class score to change.")
    return out.float()


@contextmanager
def _passes(loaded: LoadedModel) -> Iterator[torch.nn.Module]:
    """The shared model for a run of hooked passes: its lock held, eval mode, stop checks, no gradients."""
    model = loaded.model
    with loaded.lock, eval_mode(model), interruptible(model), torch.inference_mode(False), torch.no_grad():
        yield model


# --- one intervention -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Intervened:
    """What :func:`intervene` found: logits and maps of the same input, as the model made them and changed."""

    logits_before: torch.Tensor  # Tensor[N] float32 cpu
    logits_after: torch.Tensor  # Tensor[N] float32 cpu
    layer: LayerInfo
    channels: tuple[int, ...]
    mode: str
    factor: float
    later: LayerInfo | None  # the layer whose maps are compared (None: none asked)
    later_before: torch.Tensor | None  # Tensor[C,H,W] float32 cpu at ``later``
    later_after: torch.Tensor | None
    later_is_after: bool  # whether ``later``'s output is made after the layer (else the change cannot reach it)


def intervene(loaded: LoadedModel, x: torch.Tensor, layer: LayerInfo, channels: object, mode: str = "zero",
              factor: float = 1.0, later: LayerInfo | None = None) -> Intervened:
    """Run ``x`` (``Tensor[1,3,H,W]``) twice: as is, and with ``channels`` of ``layer`` changed (``mode``:
    zero, mean, scale by ``factor``, keep); the logits of both, and the maps at ``later`` of both.

    Raises:
        InvalidOptionError: an unknown mode, a factor outside 0–3, channels the layer does not have.
        CnnvizError: a model without class scores, or a layer whose output changes layout with the input.

    >>> from cnnviz.loading import load_model
    >>> from cnnviz.layers import get_layer
    >>> loaded = load_model("resnet18", "random")
    >>> found = intervene(loaded, torch.rand(1, 3, 224, 224), get_layer(loaded, "layer4"), [3], "keep")
    >>> found.logits_after.shape, found.channels
    (torch.Size([1000]), (3,))
    """
    mode = vocab.option(vocab.Intervention, mode, "intervention")
    factor = check_factor(factor)
    modules = dict(loaded.model.named_modules())
    module = modules[layer.name]
    order: list[str] = []
    with _passes(loaded) as model:
        before_maps: list = []
        later_maps: list = []
        watched = [layer.name] + ([later.name] if later is not None else [])

        def first_output(name: str, _inputs, _output) -> None:  # which of the two makes its first output first
            if name not in order:
                order.append(name)

        with _captured(module, before_maps), forward_hooks(model, watched, first_output), \
                (_captured(modules[later.name], later_maps) if later is not None else _nothing()):
            logits_before = _scores(loaded, model(x), 1)[0]
        if not before_maps:
            raise CnnvizError(f"{layer.name} did not run for this input, so there is nothing to change.")
        picked = parse_channels(channels, layer, layer.to_chw(before_maps[0]))
        after_maps: list = []
        with _replaced(module, layer, lambda out: changed(layer, out, mode, picked, factor)), \
                (_captured(modules[later.name], after_maps) if later is not None else _nothing()):
            logits_after = _scores(loaded, model(x), 1)[0]
    later_is_after = later is not None and later.name in order and order.index(later.name) > order.index(layer.name)
    if later is not None and later.name == layer.name:
        later_is_after = True  # the layer itself: its captures come after the change (hooks run in order)
    draw = (lambda maps: later.to_chw(maps[0]).float().cpu()) if later is not None else None
    return Intervened(logits_before.cpu(), logits_after.cpu(), layer, picked, str(mode), factor, later,
                      draw(later_maps) if draw and later_maps else None, draw(after_maps) if draw and after_maps else None,
                      later_is_after)


@contextmanager
def _nothing() -> Iterator[None]:
    yield


# --- channel importance ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Importance:
    """Every channel of a layer zeroed one at a time, and what it did to one class's score."""

    drops: torch.Tensor  # Tensor[C] float32: the class's logit as the model made it, minus with the channel zeroed
    logits_before: torch.Tensor  # Tensor[N] float32 cpu
    class_index: int  # the class scored
    top_class: int  # the model's own top class for this input
    layer: LayerInfo
    batch: int  # ablated copies per pass
    passes: int  # forward passes made (the first as is, then one per batch)
    fast: bool  # whether the network before the layer ran once per pass (batch 1) rather than once per copy


def fast_path_ok(loaded: LoadedModel, layer: LayerInfo) -> bool | None:
    """Whether the batched tail (:func:`channel_importance`'s fast path) was found to give the same scores
    as whole copies for this model and layer (None: not tried yet)."""
    return loaded.memo("intervene.fast", dict).get(layer.name)


def channel_importance(loaded: LoadedModel, x: torch.Tensor, layer: LayerInfo, target: int | None = None,
                       batch: int = IMPORTANCE_BATCH, fast: bool | None = None) -> Importance:
    """Zero each channel of ``layer`` in turn and score ``target`` (None: the model's top class) on
    ``x`` (``Tensor[1,3,H,W]``): ``drops[c]`` is its logit minus its logit with channel ``c`` zeroed.

    ``batch`` ablations per pass. The fast path runs the network before the layer once per pass (batch 1)
    and hands the rest of it ``batch`` changed copies of the layer's output: tensors made before the layer
    and used after it (residual shortcuts) keep batch 1 and broadcast. Where the model cannot (it
    concatenates them, or reads the batch size it saw before the layer), it runs ``batch`` copies of the
    input instead. Which one applies is checked once per model and layer, on the first batch: its first
    ablation is also run with a whole copy, and the fast path is kept only when the scores agree.
    ``fast=True``/``False`` forces one path (tests compare them).

    Raises:
        InvalidOptionError: a class index outside the model's outputs, a batch below 1.

    >>> from cnnviz.loading import load_model
    >>> from cnnviz.layers import get_layer
    >>> loaded = load_model("resnet18", "random")
    >>> found = channel_importance(loaded, torch.rand(1, 3, 224, 224), get_layer(loaded, "layer4.1.conv2"))
    >>> found.drops.shape, found.passes, found.fast  # 1 as is, 16 batches of 32, 1 whole copy to check the first
    (torch.Size([512]), 18, True)
    """
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidOptionError(f"The batch must be a whole number of at least 1, not {quoted(batch)}.")
    module = dict(loaded.model.named_modules())[layer.name]
    count = layer.shape[0]
    known = loaded.memo("intervene.fast", dict)
    drops = torch.empty(count)
    passes = 0
    with _passes(loaded) as model:
        logits = _scores(loaded, model(x), 1)[0]
        passes += 1
        n = logits.shape[0]
        top = int(logits.argmax())
        chosen = top if target is None else int(target)
        if not 0 <= chosen < n:
            raise InvalidOptionError(f"Class index {chosen} is out of range: {loaded.spec.display} has classes 0 to {n - 1}.")
        use_fast = fast if fast is not None else known.get(layer.name, True)
        for start in range(0, count, batch):
            part = list(range(start, min(start + batch, count)))
            scores = None
            if use_fast:
                scores = _fast_scores(loaded, model, module, layer, x, part)
                passes += 1
                if fast is None and layer.name not in known:  # first time here: check it against a whole copy
                    whole = _copies_scores(loaded, model, module, layer, x, part[:1])
                    passes += 1
                    agree = scores is not None and _close(scores[:1], whole)
                    known[layer.name] = agree
                    if not agree:
                        scores, use_fast = None, False
            if scores is None:
                scores = _copies_scores(loaded, model, module, layer, x, part)
                passes += 1
                use_fast = False
            drops[start:start + len(part)] = logits[chosen] - scores[:, chosen]
    return Importance(drops, logits.cpu(), chosen, top, layer, batch, passes, bool(use_fast))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Scores equal up to float32 rounding of batched kernels."""
    scale = float(b.abs().max()) + 1.0
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=1e-4, atol=1e-4 * scale))


def _fast_scores(loaded: LoadedModel, model, module, layer: LayerInfo, x: torch.Tensor, part: list[int]) -> torch.Tensor | None:
    """Scores of the ablations ``part`` with the network before the layer run once (batch 1); None when the
    rest of the network cannot take a batch there (a concatenation with a batch-1 tensor, a fixed batch)."""
    try:
        with _replaced(module, layer, lambda out: one_zeroed_per_item(layer, out, part)):
            out = model(x)
    except RuntimeError:
        return None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != len(part):
        return None
    return out.float()


def _copies_scores(loaded: LoadedModel, model, module, layer: LayerInfo, x: torch.Tensor, part: list[int]) -> torch.Tensor:
    """Scores of the ablations ``part``, each on its own copy of the input (the whole network, batch ``len(part)``)."""
    with _replaced(module, layer, lambda out: one_zeroed_per_item(layer, out, part)):
        return _scores(loaded, model(x.expand(len(part), *x.shape[1:])), len(part))
