"""What a channel looks for: an image generated to excite one channel (activation maximisation).

After Olah, Mordvintsev & Schubert, "Feature Visualization" (Distill, 2017) and the Lucent library: the
image is not optimised pixel by pixel (that gives high-frequency noise that excites the channel without
looking like anything) but through a parameterisation that favours natural images:

* **Fourier space**: the image is the inverse real FFT of a learned spectrum whose coefficients are
  scaled by 1/frequency, so low frequencies (large shapes) are as easy to change as high ones;
* **decorrelated colour**: the three learned planes are mixed by the square root of ImageNet's colour
  correlation (Lucent's SVD matrix, scaled by its largest column norm), then squashed into [0, 1] by a
  sigmoid, then normalised with the model's own mean and std;
* **transformation robustness**: every step sees the image padded, jittered, rescaled and slightly
  rotated at random (one ``F.grid_sample`` plus ``torch.roll``), so only patterns that survive small
  shifts are reinforced.

The objective is the mean of one channel of one layer's output (through
:meth:`cnnviz.layers.LayerInfo.to_chw`, so channels-last and token layers work), maximised with Adam.
Each step's forward pass stops right after the layer (nothing beyond it is computed), and only the
image's gradient is asked for (``torch.autograd.grad``): the shared model's parameters are not
touched — their ``requires_grad`` and ``.grad`` stay as they were.

Why written here: no maintained PyTorch package does this today. Lucent (the PyTorch port of Lucid)
pins ``kornia<=0.4.1`` and is unmaintained; captum's ``optim`` module lives on a branch and has never
been released.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .cancel import Stopped
from .hooks import forward_hooks, interruptible

if TYPE_CHECKING:
    from .layers import LayerInfo
    from .loading import LoadedModel

# Lucent's square root of ImageNet's colour correlation matrix (from an SVD), rows R, G, B.
COLOR_CORRELATION_SVD_SQRT = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=torch.float32
)
COLOR_CORRELATION = COLOR_CORRELATION_SVD_SQRT / COLOR_CORRELATION_SVD_SQRT.norm(dim=0).max()  # max-norm scaling

LEARNING_RATE = 0.05  # Adam, as Lucent
SPECTRUM_SD = 0.01  # initial spectrum's standard deviation, as Lucent
FFT_MAGIC = 4.0  # Lucent divides the inverse FFT by 4 before the colour mixing
PAD = 12  # px at 224, scaled with the working size: the image sits inside a grey border
JITTER = 8 + 4  # px at 224 (Lucent jitters by 8 before and 4 after scaling and rotation)
SCALES = (0.9, 1.1)  # random scale range
ROTATION_DEG = 10.0  # random rotation, ± degrees

Progress = Callable[[int, int], None]  # (steps done, total)


class _Reached(Exception):
    """Raised from the forward hook once the layer's output is taken: the rest of the network is skipped."""


def fourier_frequencies(h: int, w: int) -> torch.Tensor:
    """``Tensor[h, w//2+1]``: the spatial frequency (cycles per pixel) of each coefficient of ``rfft2``.

    >>> fourier_frequencies(4, 4)[0]
    tensor([0.0000, 0.2500, 0.5000])
    """
    fy = torch.fft.fftfreq(h)[:, None]
    fx = torch.fft.rfftfreq(w)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


@dataclass
class FourierImage:
    """An image parameterised by a spectrum: ``spectrum`` (``Tensor[3, h, w//2+1, 2]``, real and
    imaginary parts, the thing optimised) scaled by 1/frequency, inverse FFT, colour decorrelation,
    sigmoid. :meth:`rgb` gives ``Tensor[1,3,h,w]`` in [0, 1].

    >>> img = FourierImage.random(8, 6, torch.Generator().manual_seed(0))
    >>> x = img.rgb()
    >>> tuple(x.shape), bool(((x > 0) & (x < 1)).all())
    ((1, 3, 8, 6), True)
    """

    spectrum: torch.Tensor
    scale: torch.Tensor  # Tensor[1, h, w//2+1, 1]: 1 / max(frequency, 1/max(h, w))
    size: tuple[int, int]

    @classmethod
    def random(cls, h: int, w: int, generator: torch.Generator, device: torch.device | str = "cpu") -> FourierImage:
        freqs = fourier_frequencies(h, w)
        scale = 1.0 / torch.clamp(freqs, min=1.0 / max(h, w))
        spectrum = torch.randn((3, *freqs.shape, 2), generator=generator) * SPECTRUM_SD
        return cls(spectrum.to(device).requires_grad_(True), scale[None, ..., None].to(device), (h, w))

    def rgb(self) -> torch.Tensor:
        """``Tensor[1,3,h,w]`` float32 in (0, 1)."""
        scaled = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        planes = torch.fft.irfftn(scaled, s=self.size, norm="ortho") / FFT_MAGIC  # [3,h,w]
        mixed = torch.einsum("ij,jhw->ihw", COLOR_CORRELATION.to(planes.device), planes)
        return torch.sigmoid(mixed)[None]


def random_transform(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` (``Tensor[1,3,H,W]`` in [0, 1]) padded with grey, jittered, rescaled and rotated at random,
    at the same size: one ``F.grid_sample`` (bilinear, grey outside) and a ``torch.roll``.

    >>> x = torch.rand(1, 3, 32, 32)
    >>> random_transform(x, torch.Generator().manual_seed(0)).shape
    torch.Size([1, 3, 32, 32])
    """
    _, _, h, w = x.shape
    side = max(h, w)
    u = torch.rand(4, generator=generator).tolist()
    pad = PAD * side / 224
    scale = (SCALES[0] + (SCALES[1] - SCALES[0]) * u[0]) * side / (side + 2 * pad)  # the image shrinks inside grey
    angle = math.radians(ROTATION_DEG * (2 * u[1] - 1))
    jitter = JITTER * side / 224
    tx, ty = (2 * u[2] - 1) * jitter * 2 / w, (2 * u[3] - 1) * jitter * 2 / h  # in [-1, 1] grid units
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale  # output -> input coordinates
    theta = torch.tensor([[[cos, -sin, tx], [sin, cos, ty]]], dtype=x.dtype, device=x.device)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    moved = F.grid_sample(x - 0.5, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + 0.5
    shift = torch.randint(-2, 3, (2,), generator=generator).tolist()  # a last small whole-pixel jitter
    return torch.roll(moved, shifts=shift, dims=(2, 3))


def normalise(x: torch.Tensor, mean_std: tuple[Sequence[float], Sequence[float]] | None) -> torch.Tensor:
    """``x`` (``Tensor[N,3,H,W]`` in [0, 1]) with the model's own normalisation; unchanged when it has none."""
    if mean_std is None:
        return x
    mean, std = (torch.tensor(v, dtype=x.dtype, device=x.device)[None, :, None, None] for v in mean_std)
    return (x - mean) / std


def _layer_output(model: torch.nn.Module, layer: LayerInfo, x: torch.Tensor) -> torch.Tensor:
    """``Tensor[C,H,W]``: the layer's first output for ``x``, with its graph; the pass stops there."""
    taken: list[torch.Tensor] = []

    def on_output(_name: str, _inputs: tuple, output) -> None:
        if not taken:
            taken.append(layer.to_chw(output))
            raise _Reached

    with forward_hooks(model, [layer.name], on_output), interruptible(model):
        try:
            model(x)
        except _Reached:
            pass
    if not taken:
        raise RuntimeError(f"Layer {layer.name!r} did not run in the forward pass.")
    return taken[0]


def channel_activation(
    model: torch.nn.Module, layer: LayerInfo, channel: int, x: torch.Tensor, lock: AbstractContextManager | None = None
) -> float:
    """The mean of ``channel`` of ``layer``'s output for ``x`` (``Tensor[1,3,H,W]``, already normalised):
    one eval pass without gradients, stopped after the layer.

    >>> import torchvision
    >>> from cnnviz.layers import LayerInfo
    >>> model = torchvision.models.resnet18()
    >>> info = LayerInfo("layer1", "Sequential", (64, 56, 56), 1)
    >>> isinstance(channel_activation(model, info, 3, torch.zeros(1, 3, 224, 224)), float)
    True
    """
    with lock or nullcontext(), torch.inference_mode(False), torch.no_grad():
        return float(_layer_output(model, layer, x)[channel].float().mean())


@dataclass(frozen=True)
class Visualization:
    """An image that excites one channel, as :func:`visualize_channel` made it."""

    pixels: torch.Tensor  # Tensor[3,H,W] float32 in [0, 1] on the CPU: the final image (no transformation)
    image: np.ndarray  # uint8[H,W,3]: the same, as 8-bit RGB
    objective: tuple[float, ...]  # the channel's mean at each step (on the transformed image the step saw)
    steps: int  # steps done


def visualize_channel(
    model: torch.nn.Module,
    layer: LayerInfo,
    channel: int,
    size: tuple[int, int],
    mean_std: tuple[Sequence[float], Sequence[float]] | None = None,
    steps: int = 256,
    seed: int = 0,
    progress: Progress | None = None,
    lock: AbstractContextManager | None = None,
    lr: float = LEARNING_RATE,
) -> Visualization:
    """Generate an image of ``size`` (h, w) that maximises the mean of ``channel`` of ``layer``.

    ``mean_std``: the model's normalisation (see :func:`cnnviz.preprocess.normalisation`). ``lock`` is
    held during each step (one forward pass to the layer and one backward pass), so other users of a
    shared model get their turn in between. The model is used read-only: it runs in eval mode inside
    :func:`cnnviz.hooks.forward_hooks`, only the image's gradient is computed, and every module's flag,
    hook list and parameter (values, ``requires_grad``, ``.grad``) is as before afterwards, also when it
    raises (:class:`cnnviz.cancel.Stopped` when the stop check fires). ``progress(step, steps)`` is called
    after each step. The same ``seed`` gives the same image.

    >>> import torchvision
    >>> from cnnviz.layers import LayerInfo
    >>> model = torchvision.models.resnet18()
    >>> info = LayerInfo("layer1", "Sequential", (64, 56, 56), 1)
    >>> vis = visualize_channel(model, info, 5, (64, 64), steps=2)
    >>> vis.image.shape, vis.image.dtype, vis.steps
    ((64, 64, 3), dtype('uint8'), 2)
    """
    device = next(iter(model.parameters()), torch.empty(0)).device
    generator = torch.Generator().manual_seed(int(seed))
    with torch.inference_mode(False):
        param = FourierImage.random(size[0], size[1], generator, device)
        optimiser = torch.optim.Adam([param.spectrum], lr=lr)
        trace: list[float] = []
        for step in range(steps):
            with torch.enable_grad():
                x = normalise(random_transform(param.rgb(), generator), mean_std)
                with lock or nullcontext():
                    maps = _layer_output(model, layer, x)
                    objective = maps[channel].float().mean()
                    (grad,) = torch.autograd.grad(-objective, [param.spectrum])
            optimiser.zero_grad(set_to_none=True)
            param.spectrum.grad = grad
            optimiser.step()
            trace.append(float(objective.detach()))
            if progress is not None:
                progress(step + 1, steps)
        with torch.no_grad():
            pixels = param.rgb()[0].detach().to("cpu", torch.float32)
    image = (pixels.permute(1, 2, 0).numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)
    return Visualization(pixels, image, tuple(trace), steps)


# --------------------------------------------------------------------------------------------------
# Sizing: the working size of a layer, probed once per model and layer
# --------------------------------------------------------------------------------------------------

WORKING_SIZE = 128  # px: Lucent's default; 256 steps on ResNet-18 stay well under 30 s on 2 CPU cores
MAX_STEPS = 2048
KEEP_BYTES = 4 * 2**20  # generated images kept per model (each ~50 KB at 128 px)


def working_size(loaded: LoadedModel, info: LayerInfo, mean_std) -> tuple[int, int]:
    """The working size for ``info``: 128 px when the model runs there (a probe pass, remembered per
    layer), else the model's own input size (ViTs' token layers, windowed attention)."""
    full = tuple(loaded.input_size[1:])
    if min(full) <= WORKING_SIZE or info.layout == "tokens":
        return full
    sizes = loaded.memo("featurevis.sizes", dict)
    if info.name not in sizes:
        small = (WORKING_SIZE, WORKING_SIZE)
        probe = normalise(torch.full((1, 3, *small), 0.5, device=loaded.device), mean_std)
        try:
            channel_activation(loaded.model, info, 0, probe, loaded.lock)
            sizes[info.name] = small
        except Stopped:
            raise
        except Exception:  # noqa: BLE001  (a model that needs its own input size: any shape error)
            sizes[info.name] = full
    return sizes[info.name]
