"""Models: the architecture table, the picker's lists, what was loaded, the model the app opens on, and the
user's own checkpoints."""
from __future__ import annotations

from dataclasses import dataclass

from .. import checkpoint, layers, loading, registry, summary, vocab
from ..hooks import interruptible
from ..layers import LayerInfo
from ..loading import load_model
from ..pretrained import WeightsOutcome

MAX_DEPTH = 8
WEIGHT_CHOICES = vocab.values(vocab.Weights)
CHECKPOINT_LIMIT_MB = checkpoint.MAX_CHECKPOINT_BYTES / 2**20  # the largest checkpoint file accepted
CHECKPOINT_SUFFIXES = checkpoint.ACCEPTED_SUFFIXES  # the file types read (".safetensors" first)


def architecture(model: str, weights: str = "pretrained", depth: int = 3) -> summary.Summary:
    """Per-layer table and totals of a model at a nesting depth (1 = top-level blocks).

    >>> s = architecture("resnet50", weights="random", depth=1)
    >>> round(s.total_macs / 1e9, 1)
    4.1
    """
    depth = vocab.whole(depth, 1, MAX_DEPTH, "Depth")
    loaded = load_model(model, weights)

    def compute() -> summary.Summary:
        with loaded.lock, interruptible(loaded.model):
            return summary.summarize(loaded.model, loaded.input_size, depth=depth)

    return loaded.memo(f"summary.depth{depth}", compute)


def curated_models() -> list[tuple[str, str]]:
    """(label, key) of the modules given to this process (newest first), then every curated model in
    registry order, for a model picker."""
    return [(spec.label, spec.key) for spec in (*loading.module_specs(), *registry.curated_specs())]


@dataclass(frozen=True)
class ModelView:
    """A loaded model as a picker shows it: which one, with which weights, its layers and the default."""

    spec: registry.ModelSpec
    weights: WeightsOutcome
    device: str
    layers: tuple[LayerInfo, ...]
    default_layer: str  # the first convolution
    note: str | None  # why some outputs are not listed (transformers), else None


def select_model(model: str, weights: str = "pretrained") -> ModelView:
    """Load ``model`` (cached) and list its layers.

    >>> select_model("resnet18", "random").default_layer
    'conv1'
    """
    loaded = load_model(model, weights)
    return ModelView(loaded.spec, loaded.weights, loaded.device.type, layers.list_layers(loaded),
                     layers.get_layer(loaded, None).name, layers.listing_note(loaded))


def weights_used(model: str, weights: str = "pretrained") -> WeightsOutcome:
    """Which weights ``model`` has now for the ``weights`` choice (loads it, or takes it from the cache)."""
    return load_model(model, weights).weights


@dataclass(frozen=True)
class Startup:
    model: str  # the key to open on
    notice: str | None  # why it is not the default model, or None


def startup_model() -> Startup:
    """The module given to this process last (``cnnviz.launch``, ``cnnviz serve --model``), else the default
    model when its pretrained weights can be had, else the bundled offline model."""
    given = loading.module_specs()
    if given:
        return Startup(given[0].key, None)
    default = load_model(registry.DEFAULT_MODEL, "pretrained")
    if default.weights.pretrained:
        return Startup(registry.DEFAULT_MODEL, None)
    offline = loading.get_spec(registry.OFFLINE_MODEL)
    return Startup(registry.OFFLINE_MODEL, (
        f"{default.weights.notice} The app opened on **{offline.display}** instead: its ImageNet weights ship "
        f"with the app. {default.spec.display} is still in the list, with random weights."
    ))


def find_layer(model: str, weights: str = "pretrained", name: str | None = None) -> LayerInfo:
    """The layer ``name`` of ``model`` (None or "": the first convolution), as the layer picker lists it.

    Raises:
        UnknownLayerError: the model has no layer of that name with a map output (the message
            suggests close matches).

    >>> find_layer("resnet18", "random", "layer1.0.conv1").shape
    (64, 56, 56)
    """
    return layers.get_layer(load_model(model, weights), name)


def load_checkpoint(model: str, path, labels=None) -> checkpoint.CheckpointReport:
    """Load a checkpoint file (``.safetensors``, or a PyTorch state dict read with
    ``torch.load(weights_only=True)``) into ``model``'s architecture; the report's ``name``
    (``upload/<digest>``) then works as ``model`` in every function here while the server holds it.
    See :func:`cnnviz.loading.load_checkpoint`."""
    return loading.load_checkpoint(model, path, labels)
