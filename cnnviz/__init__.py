"""CNN Explorer: what a convolutional network is made of and what it sees.

>>> import cnnviz
>>> cnnviz.list_models(source="torchvision")[:3]
['alexnet', 'vgg16', 'resnet18']
>>> view = cnnviz.feature_maps("resnet18", "examples/coffee.png", layer="layer1.0.conv1", weights="random")
>>> view.maps.shape, view.image.shape      # Tensor[C,H,W] float32, uint8[H,W,3] grid
(torch.Size([64, 56, 56]), (614, 462, 3))
"""
from __future__ import annotations

from .activations import capture, run
from .checkpoint import CheckpointReport
from .cli import launch
from .errors import (
    CheckpointError,
    CnnvizError,
    InvalidImageError,
    InvalidOptionError,
    UnknownLayerError,
    UnknownModelError,
)
from .explore import (
    AtlasReport,
    CollectionTable,
    DatasetExample,
    ExamplesView,
    MapsPage,
    MapsQuery,
    architecture,
    atlas,
    attribution,
    channel,
    channel_importance,
    channel_visualization,
    collection_table,
    compare,
    dataset_examples,
    explanation_quality,
    feature_maps,
    filter_grid,
    guided_gradcam,
    intervene,
    layer_activations,
    layer_stats,
    list_convolutions,
    maps_page,
    predict,
    projection,
    sanity_check,
)
from .hooks import forward_hooks
from .layers import LayerInfo, get_layer, list_layers, listing_note
from .loading import LoadedModel, from_module, get_spec, load_checkpoint, load_model
from .preprocess import open_image
from .registry import DEFAULT_MODEL, OFFLINE_MODEL, ModelSpec, list_models

__all__ = [
    "DEFAULT_MODEL",
    "OFFLINE_MODEL",
    "CheckpointError",
    "CheckpointReport",
    "CnnvizError",
    "InvalidImageError",
    "InvalidOptionError",
    "LayerInfo",
    "LoadedModel",
    "MapsPage",
    "MapsQuery",
    "ModelSpec",
    "UnknownLayerError",
    "UnknownModelError",
    "architecture",
    "atlas",
    "AtlasReport",
    "attribution",
    "capture",
    "channel",
    "channel_importance",
    "channel_visualization",
    "collection_table",
    "CollectionTable",
    "compare",
    "dataset_examples",
    "DatasetExample",
    "ExamplesView",
    "explanation_quality",
    "feature_maps",
    "filter_grid",
    "forward_hooks",
    "from_module",
    "get_spec",
    "get_layer",
    "guided_gradcam",
    "intervene",
    "list_convolutions",
    "layer_activations",
    "launch",
    "layer_stats",
    "list_layers",
    "listing_note",
    "list_models",
    "load_checkpoint",
    "load_model",
    "maps_page",
    "open_image",
    "predict",
    "projection",
    "sanity_check",
    "run",
]
__version__ = "1.0.0"
