"""What a vision transformer's class rests on, read from its attention: attention rollout (Abnar &
Zuidema 2020) and gradient-weighted rollout (Chefer, Gur & Wolf 2021, "Generic attention-model
explainability"), for timm ViT / DeiT / BEiT / EVA-style models and torchvision ``vit_*``.

Written here by hand: neither torchcam nor captum ships either rollout (torchcam's LeGrad, another
attention method, is in :mod:`cnnviz.attribution`, the one importer of the CAM library). The attention
probabilities exist only outside fused attention, so a pass here switches timm's ``attn.fused_attn``
off (restored after, also when the pass raises) and reads them where ``attn.attn_drop`` sees them; a
torchvision ``nn.MultiheadAttention`` is asked for its per-head weights by a forward pre-hook. Every
hook is removed on exit; the pass holds the model's lock, runs in eval mode and under
:func:`cnnviz.hooks.interruptible`; gradients flow from a copy of the input (the parameters' flags and
``.grad`` are never touched: ``torch.autograd.grad`` asks only for the attention's gradients).
"""
from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from . import vocab
from .errors import CnnvizError, InvalidOptionError
from .hooks import eval_mode, interruptible

if TYPE_CHECKING:
    from .loading import LoadedModel

ROLLOUT_METHODS = ("rollout", "chefer")  # the methods this module computes (LeGrad: cnnviz.attribution)


@dataclass(frozen=True)
class VitLayout:
    """Where a vision transformer keeps what the rollouts need."""

    kind: str  # "timm" (attention modules with fused_attn and attn_drop) or "torchvision" (nn.MultiheadAttention)
    attention: tuple[str, ...]  # qualified names of the attention modules, in block order
    heads: int  # attention heads per block (the first block's)
    prefix: int  # tokens before the patches: class token, distillation token, registers
    grid: tuple[int, int]  # the patch grid (rows, columns) at the model's input size
    readout: tuple[int, ...]  # the token rows the head reads (class token; DeiT-distilled: both); () = mean of the patches

    @property
    def tokens(self) -> int:
        return self.prefix + self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class TokenMap:
    """An attribution read from a vision transformer's attention, on its patch grid."""

    map: torch.Tensor  # Tensor[rows,cols] float32, raw (not min-max scaled): each patch's share of the class
    class_index: int
    probability: float
    top_class: int
    method: str  # "rollout", "chefer" or "legrad"
    logits: torch.Tensor  # Tensor[1,N] float32 cpu
    layout: VitLayout


def _refusal(loaded: LoadedModel, why: str) -> InvalidOptionError:
    return InvalidOptionError(
        f"{loaded.spec.display} {why}. Attention rollout, gradient-weighted rollout and LeGrad take vision "
        "transformers that read the class from a class token (or the mean of the patch tokens): timm ViT, DeiT, BEiT, "
        "EVA-style models and torchvision vit_*; for a CNN or a Swin, use a class activation map such as Grad-CAM."
    )


def vit_layout(loaded: LoadedModel) -> VitLayout:
    """The model's :class:`VitLayout` (kept with the model), else :class:`InvalidOptionError` saying
    which models these methods take (CNNs, Swin's windowed attention, attention-pooled heads are refused).

    >>> from cnnviz.loading import load_model
    >>> found = vit_layout(load_model("timm/deit_tiny_distilled_patch16_224", "random"))
    >>> found.prefix, found.grid, found.readout, len(found.attention)
    (2, (14, 14), (0, 1), 12)
    """
    return loaded.memo("rollout.layout", lambda: _layout(loaded))


def _layout(loaded: LoadedModel) -> VitLayout:
    import torchvision

    model = loaded.model
    _c, height, width = loaded.input_size
    if isinstance(model, torchvision.models.VisionTransformer):
        names = tuple(name for name, m in model.named_modules() if isinstance(m, torch.nn.MultiheadAttention))
        side = model.image_size // model.patch_size
        heads = model.encoder.layers[0].self_attention.num_heads
        return VitLayout("torchvision", names, heads, 1, (side, side), (0,))
    prefix = getattr(model, "num_prefix_tokens", None)
    embed = getattr(model, "patch_embed", None)
    attention = [(name, m) for name, m in model.named_modules()
                 if hasattr(m, "fused_attn") and isinstance(getattr(m, "attn_drop", None), torch.nn.Dropout)]
    if not isinstance(prefix, int) or embed is None or not attention:
        raise _refusal(loaded, "is not a vision transformer whose attention these methods can read "
                               "(no blocks of global attention over patch tokens)")
    patch = getattr(embed, "patch_size", None)
    if not isinstance(patch, tuple | list) or len(patch) != 2:
        raise _refusal(loaded, "has a patch embedding without a patch size")
    grid = (height // int(patch[0]), width // int(patch[1]))
    pool = getattr(model, "global_pool", "token")
    if pool == "token" and getattr(model, "cls_token", None) is not None and prefix >= 1:
        readout = (0, 1) if getattr(model, "dist_token", None) is not None and prefix >= 2 else (0,)
    elif pool == "avg":
        readout = ()  # the head reads the mean of the patch tokens: so does the map
    else:
        raise _refusal(loaded, f"reads its class from {pool or 'no'} pooling of the tokens, not from a class token")
    return VitLayout("timm", tuple(name for name, _m in attention), int(getattr(attention[0][1], "num_heads", 1)),
                     prefix, grid, readout)


def is_vit(loaded: LoadedModel) -> bool:
    """Whether :func:`vit_layout` takes the model (the rollouts apply)."""
    try:
        vit_layout(loaded)
    except InvalidOptionError:
        return False
    return True


@contextmanager
def attention_captured(loaded: LoadedModel, layout: VitLayout, found: list, keep_graph: bool) -> Iterator[None]:
    """During passes in this block made by this thread, append each block's attention probabilities to
    ``found`` in block order: ``Tensor[B,N,N]`` averaged over heads and detached (``keep_graph`` False:
    the rollout's memory is one N×N per block), or ``Tensor[B,heads,N,N]`` in the graph, the very tensor
    the block multiplies its values by, so its gradient is the attention's (``keep_graph`` True).

    timm: ``fused_attn`` off on every attention module (each one's own flag restored on exit), a forward
    hook on ``attn_drop``. torchvision: a pre-hook asks ``nn.MultiheadAttention`` for per-head weights;
    with ``keep_graph`` the block's output is recomputed from them (weights @ V, then ``out_proj``: the
    same values; the weights torch returns are a view beside its own product, so a gradient asked of
    them would be zero), as torchcam's LeGrad does.
    """
    modules = dict(loaded.model.named_modules())
    owner = threading.get_ident()
    handles, switched = [], []

    def keep(probabilities: torch.Tensor) -> None:
        found.append(probabilities if keep_graph else probabilities.detach().mean(1))

    def on_drop(_module, _inputs, output):
        if threading.get_ident() == owner:
            keep(output)

    def ask(_module, args, kwargs):
        if threading.get_ident() != owner:
            return None
        args, kwargs = list(args), dict(kwargs)
        for position, key, value in ((4, "need_weights", True), (6, "average_attn_weights", False)):
            if len(args) > position:
                args[position] = value
            else:
                kwargs[key] = value
        return tuple(args), kwargs

    def on_mha(module, args, kwargs, output):
        if threading.get_ident() != owner:
            return None
        weights = output[1]
        keep(weights)
        if not keep_graph:
            return output[0], None
        value = args[2] if len(args) > 2 else kwargs["value"]
        e, heads = module.embed_dim, module.num_heads
        bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * e:]
        v = F.linear(value, module.in_proj_weight[2 * e:], bias)
        b, n, _ = v.shape
        v = v.reshape(b, n, heads, e // heads).transpose(1, 2)
        return module.out_proj((weights @ v).transpose(1, 2).reshape(b, n, e)), None

    try:
        for name in layout.attention:
            module = modules[name]
            if layout.kind == "timm":
                switched.append((module, module.fused_attn))
                module.fused_attn = False
                handles.append(module.attn_drop.register_forward_hook(on_drop))
            else:
                handles.append(module.register_forward_pre_hook(ask, with_kwargs=True))
                handles.append(module.register_forward_hook(on_mha, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, fused in switched:
            module.fused_attn = fused


def rollout(attention: list[torch.Tensor]) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema 2020) of per-block, head-averaged ``Tensor[N,N]``: each plus
    the identity (the residual path), rows renormalised, multiplied from the first block to the last.

    >>> a = torch.full((2, 2), 0.5)  # each token attends half to itself: with the residual, three quarters
    >>> rollout([a, a])[0].tolist()
    [0.625, 0.375]
    """
    eye = torch.eye(attention[0].shape[-1], dtype=attention[0].dtype, device=attention[0].device)
    joint = eye
    for a in attention:
        a = a + eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint


def gradient_rollout(attention: list[torch.Tensor], gradients: list[torch.Tensor]) -> torch.Tensor:
    """Gradient-weighted rollout (Chefer et al. 2021): ``R = I``; per block, first to last,
    ``Ā = mean over heads of (∇A ⊙ A)⁺`` and ``R ← R + Ā R``. Each ``Tensor[heads,N,N]``."""
    relevance = torch.eye(attention[0].shape[-1], dtype=attention[0].dtype, device=attention[0].device)
    for a, g in zip(attention, gradients, strict=True):
        relevance = relevance + (g * a).clamp_min(0).mean(0) @ relevance
    return relevance


def patch_map(relevance: torch.Tensor, layout: VitLayout) -> torch.Tensor:
    """The rows the head reads (``layout.readout``; the mean of the patch rows for a mean-pooled head)
    of an ``N×N`` relevance, over the patch columns, as the patch grid ``Tensor[rows,cols]``."""
    rows = relevance[list(layout.readout)] if layout.readout else relevance[layout.prefix:]
    return rows.mean(0)[layout.prefix:].reshape(layout.grid)


def class_scores(loaded: LoadedModel, scores, target_class: int | None) -> tuple[int, int, float]:
    """(the class explained, the top class, its probability) from a pass's ``scores`` ``Tensor[1,N]``;
    ``target_class`` None: the top class. Refuses a model without class scores and a class out of range."""
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise CnnvizError(f"{loaded.spec.display} does not output class scores, so there is no class to explain.")
    n, top = scores.shape[1], int(scores[0].argmax())
    chosen = top if target_class is None else int(target_class)
    if not 0 <= chosen < n:
        raise InvalidOptionError(f"Class index {chosen} is out of range: {loaded.spec.display} has classes 0 to {n - 1}.")
    return chosen, top, float(torch.softmax(scores[0].detach().float(), 0)[chosen])


def attention_map(loaded: LoadedModel, x: torch.Tensor, method: str = "rollout", target_class: int | None = None) -> TokenMap:
    """Attention rollout (``method="rollout"``: one pass, no gradients, the class does not change it)
    or gradient-weighted rollout (``"chefer"``: one pass and the gradient of ``target_class``'s score,
    None: the model's top class, back to the first block's attention) of ``x`` (``Tensor[1,3,H,W]``).

    Raises:
        InvalidOptionError: not a vision transformer these methods read (the sentence names those
            they take), an unknown method, a class index outside the model's outputs.

    >>> from cnnviz.loading import load_model
    >>> found = attention_map(load_model("timm/vit_tiny_patch16_224", "random"), torch.rand(1, 3, 224, 224))
    >>> tuple(found.map.shape), found.method
    ((14, 14), 'rollout')
    """
    method = vocab.option(vocab.AttentionMethod, method, "method")
    if method not in ROLLOUT_METHODS:
        raise InvalidOptionError(f"{method.label} is not a rollout; use one of: {', '.join(ROLLOUT_METHODS)}.")
    layout = vit_layout(loaded)
    model, found = loaded.model, []
    chefer = method == "chefer"
    with loaded.lock, eval_mode(model), interruptible(model), torch.inference_mode(False), \
            attention_captured(loaded, layout, found, keep_graph=chefer):
        with torch.enable_grad() if chefer else torch.no_grad():
            inputs = x.detach().clone().requires_grad_(chefer)
            scores = model(inputs)
            chosen, top, probability = class_scores(loaded, scores, target_class)
            if len(found) != len(layout.attention) or found[0].shape[-1] != layout.tokens:
                raise CnnvizError(f"{loaded.spec.display} did not show its attention as expected ({len(found)} of "
                                  f"{len(layout.attention)} blocks, {layout.tokens} tokens each), so there is no rollout to draw.")
            if chefer:
                grads = torch.autograd.grad(scores[0, chosen], found, allow_unused=True)
                grads = [torch.zeros_like(a) if g is None else g for a, g in zip(found, grads, strict=True)]
                relevance = gradient_rollout([a[0].detach() for a in found], [g[0] for g in grads])
            else:
                relevance = rollout([a[0] for a in found])
    mapped = patch_map(relevance.float(), layout).detach().cpu()
    return TokenMap(torch.nan_to_num(mapped), chosen, probability, top, str(method), scores.detach().float().cpu(), layout)


def attention_bytes(layout: VitLayout, method: str) -> int:
    """Bytes the attention adds to a pass: one N×N per block for the rollout; for the gradient methods
    every head's probabilities and their gradients (the graph keeps them anyway: counted once more)."""
    per_block = 4 * layout.tokens ** 2
    return per_block * len(layout.attention) * (1 if method == "rollout" else 2 * layout.heads)

