"""The public API of ``cnnviz`` for type checkers, and the list the package loads from lazily.

``cnnviz/__init__.py`` hands this file to ``lazy_loader.attach_stub``: each name below is imported from its
module the first time it is used, so ``import cnnviz`` (and the ``cnnviz`` command's ``--help``) does not
pay for torch, torchvision, timm and gradio until a function needs them. Add a public name here.
"""
from .activations import capture as capture, run as run
from .checkpoint import CheckpointReport as CheckpointReport
from .cli import launch as launch
from .errors import (
    CheckpointError as CheckpointError,
    CnnvizError as CnnvizError,
    InvalidImageError as InvalidImageError,
    InvalidOptionError as InvalidOptionError,
    UnknownLayerError as UnknownLayerError,
    UnknownModelError as UnknownModelError,
)
from .explore import (
    AtlasReport as AtlasReport,
    CollectionTable as CollectionTable,
    DatasetExample as DatasetExample,
    ExamplesView as ExamplesView,
    MapsPage as MapsPage,
    MapsQuery as MapsQuery,
    architecture as architecture,
    atlas as atlas,
    attribution as attribution,
    channel as channel,
    channel_importance as channel_importance,
    channel_visualization as channel_visualization,
    collection_table as collection_table,
    compare as compare,
    dataset_examples as dataset_examples,
    explanation_quality as explanation_quality,
    feature_maps as feature_maps,
    filter_grid as filter_grid,
    guided_gradcam as guided_gradcam,
    intervene as intervene,
    layer_activations as layer_activations,
    layer_stats as layer_stats,
    list_convolutions as list_convolutions,
    maps_page as maps_page,
    predict as predict,
    projection as projection,
    sanity_check as sanity_check,
)
from .hooks import forward_hooks as forward_hooks
from .layers import LayerInfo as LayerInfo, get_layer as get_layer, list_layers as list_layers, listing_note as listing_note
from .loading import (
    LoadedModel as LoadedModel,
    from_module as from_module,
    get_spec as get_spec,
    load_checkpoint as load_checkpoint,
    load_model as load_model,
)
from .preprocess import open_image as open_image
from .registry import DEFAULT_MODEL as DEFAULT_MODEL, OFFLINE_MODEL as OFFLINE_MODEL, ModelSpec as ModelSpec, list_models as list_models

__version__: str
