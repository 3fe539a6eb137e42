"""Forward hooks, eval mode, in-place ReLU flips and the stop check's pre-hooks: every change the library
makes to a model is made here, inside a context manager that undoes it (``try … finally``) and restores each
module's own flags.

Hooks act only for the thread that registered them, so two requests sharing a model never see each
other's passes (every hooked pass also holds the model's lock, see :class:`cnnviz.loading.LoadedModel`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from .cancel import STOP_CHECK_EVERY_S, Stopped, current_pass_counter, current_stop_check
from .errors import UnknownLayerError, did_you_mean, quoted

InputFn = Callable[[str, tuple], None]  # (module name, positional inputs)
OutputFn = Callable[[str, tuple, object], None]  # (module name, positional inputs, output)


@contextmanager
def interruptible(model: torch.nn.Module) -> Iterator[None]:
    """Forward pre-hooks that raise :class:`~cnnviz.cancel.Stopped` when this thread's stop check fires, and
    that count this thread's passes of ``model`` for :func:`cnnviz.cancel.on_each_pass`; removed on exit."""
    check, on_pass = current_stop_check(), current_pass_counter()
    if check is None and on_pass is None:
        yield
        return
    if check is not None and (reason := check()):
        raise Stopped(reason)
    owner, last = threading.get_ident(), [time.monotonic()]

    def hook(_module, _inputs):
        now = time.monotonic()
        if threading.get_ident() == owner and now - last[0] >= STOP_CHECK_EVERY_S:
            last[0] = now
            if reason := check():
                raise Stopped(reason)

    def counted(_module, _inputs):
        if threading.get_ident() == owner:
            on_pass()

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()] if check is not None else []
    if on_pass is not None:
        handles.append(model.register_forward_pre_hook(counted))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode inside the block; every module's own training flag is restored on exit."""
    modes = [(m, m.training) for m in model.modules()]
    if not any(training for _, training in modes):  # loaded models are in eval mode: nothing to flip or restore
        yield  # (an eval() and a restore go through nn.Module.__setattr__ per module: ~10 ms on ResNet-50)
        return
    try:
        model.eval()
        yield
    finally:
        for module, training in modes:
            module.training = training


@contextmanager
def forward_hooks(
    model: torch.nn.Module, names: Sequence[str] | None, on_output: OutputFn, on_input: InputFn | None = None
) -> Iterator[None]:
    """Call ``on_output(name, inputs, output)`` after, and ``on_input(name, inputs)`` before, each
    named module's forward during passes in this block made by this thread.

    ``names=None`` hooks every submodule. The model runs in eval mode inside the block; each module's
    training flag is restored and every hook removed on exit, even when the forward pass raises.

    >>> import torchvision
    >>> model, x = torchvision.models.resnet18(), torch.zeros(1, 3, 224, 224)
    >>> with forward_hooks(model, ["conv1"], lambda n, i, t: print(n, tuple(t.shape))):
    ...     _ = model(x)
    conv1 (1, 64, 112, 112)
    """
    modules = dict(model.named_modules())
    wanted = [n for n in modules if n] if names is None else list(names)
    missing = [n for n in wanted if n not in modules]
    if missing:
        hint = did_you_mean(str(missing[0]), list(modules), cutoff=0.5)
        raise UnknownLayerError(f"The model has no module named {quoted(missing[0])}.{hint}")
    owner = threading.get_ident()
    handles = []

    def make_hooks(name: str):
        def after(_module, inputs, output):
            if threading.get_ident() == owner:
                on_output(name, inputs, output)

        def before(_module, inputs):
            if threading.get_ident() == owner:
                on_input(name, inputs)

        return before, after

    with eval_mode(model):
        try:
            for name in wanted:
                before, after = make_hooks(name)
                if on_input is not None:
                    handles.append(modules[name].register_forward_pre_hook(before))
                handles.append(modules[name].register_forward_hook(after))
            yield
        finally:
            for handle in handles:
                handle.remove()


@contextmanager
def relus_out_of_place(model: torch.nn.Module) -> Iterator[None]:
    """Every ``ReLU(inplace=True)`` of ``model`` runs out of place inside the block (backward hooks on a ReLU,
    such as captum's guided backpropagation and deconvnet, cannot follow an in-place output); restored on exit."""
    inplace = [m for m in model.modules() if isinstance(m, torch.nn.ReLU) and m.inplace]
    try:
        for m in inplace:
            m.inplace = False
        yield
    finally:
        for m in inplace:
            m.inplace = True
