"""Forward hooks, eval mode and stop checks: every hook of the library is registered here, inside a
context manager that removes it (``try … finally``) and restores each module's own training flag.

Hooks act only for the thread that registered them, so two requests sharing a model never see each
other's passes (every hooked pass also holds the model's lock, see :class:`cnnviz.loading.LoadedModel`).
"""
from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch

from .errors import UnknownLayerError, did_you_mean, quoted

InputFn = Callable[[str, tuple], None]  # (module name, positional inputs)
OutputFn = Callable[[str, tuple, object], None]  # (module name, positional inputs, output)


class Stopped(Exception):
    """Raised inside a forward pass when the :func:`stop_when` check says nobody waits for the answer."""


_STOP_CHECK: contextvars.ContextVar[Callable[[], str | None] | None] = contextvars.ContextVar("stop_check", default=None)
STOP_CHECK_EVERY_S = 0.02


@contextmanager
def stop_when(check: Callable[[], str | None]) -> Iterator[None]:
    """Within the block, forward passes started by this thread end with :class:`Stopped` as soon as
    ``check()`` returns a reason (it is asked before each module runs, at most every 20 ms)."""
    token = _STOP_CHECK.set(check)
    try:
        yield
    finally:
        _STOP_CHECK.reset(token)


_ON_PASS: contextvars.ContextVar[Callable[[], None] | None] = contextvars.ContextVar("on_pass", default=None)


@contextmanager
def on_each_pass(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``callback()`` is called as each forward pass that :func:`interruptible` watches
    starts in this thread (a progress count for long runs of passes, such as Score-CAM's)."""
    token = _ON_PASS.set(callback)
    try:
        yield
    finally:
        _ON_PASS.reset(token)


@contextmanager
def interruptible(model: torch.nn.Module) -> Iterator[None]:
    """Forward pre-hooks that raise :class:`Stopped` when this thread's stop check fires, and that count
    this thread's passes of ``model`` for :func:`on_each_pass`; removed on exit."""
    check, on_pass = _STOP_CHECK.get(), _ON_PASS.get()
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
