"""The facade: one function per view, the one thing the UI, the HTTP API, MCP and the Python API call.

Each function checks its query (:mod:`cnnviz.vocab`), loads the model (:func:`cnnviz.loading.load_model`:
a name, an upload name or a :class:`~cnnviz.loading.LoadedModel`), calls the library room that does the
work and returns a frozen view that says which weights it used. One module per view family:

- :mod:`.models`: the architecture table, the picker's lists, the startup model, checkpoints;
- :mod:`.filters`: a convolution's filters;
- :mod:`.maps`: feature maps, a channel, layer statistics, top-5, and :func:`maps_page` (one page update);
- :mod:`.attributions`: class activation maps, projections, Guided Grad-CAM, feature visualisation;
- :mod:`.quality`: which map to trust (deletion / insertion, Average Drop, the sanity check's scores);
- :mod:`.interventions`: channels ablated, scaled or kept, and which channels matter for a class;
- :mod:`.comparison`: two models side by side;
- :mod:`.live`: webcam frames;
- :mod:`.datasets`: dataset examples and statistics over an image collection (the atlas).
"""
from __future__ import annotations

from ..activations import KEPT, Prediction
from ..preprocess import MAX_FRAME_BYTES, check_frame, decode_frame
from ..pretrained import WeightsOutcome
from ..render import COLORMAPS, encode
from ..summary import readable_macs
from .attributions import (
    ATTENTION_METHODS,
    CAM_METHODS,
    CAM_NAMES,
    FEATUREVIS_MAX_STEPS,
    MASKING_METHODS,
    METHOD_NAMES,
    PROJECTIONS,
    REQUEST_SECONDS,
    AttributionChoices,
    AttributionView,
    CamCost,
    ChannelVisualizationView,
    GuidedGradCamView,
    ProjectionView,
    attribution,
    attribution_choices,
    attribution_cost,
    channel_visualization,
    default_method,
    guided_gradcam,
    projection,
)
from .comparison import (
    COMPARE_TILES,
    COMPARE_VIEWS,
    COMPARE_WORDS,
    STAGE_STRIDES,
    ComparePair,
    CompareSide,
    CompareView,
    compare,
)
from .datasets import (
    AtlasJob,
    AtlasReport,
    CollectionTable,
    DatasetExample,
    ExamplesView,
    NotComputedError,
    Progress,
    add_collection_zip,
    atlas,
    atlas_job,
    collection_folder,
    collection_table,
    collections,
    dataset_examples,
    default_atlas_layers,
    start_atlas,
    stop_atlas,
)
from .filters import FiltersView, filter_grid, list_convolutions
from .interventions import INTERVENTIONS, MAX_SCALE, ChannelImportanceView, ClassChange, InterventionView, channel_importance, intervene
from .live import LiveView, live_maps
from .maps import (
    ChannelView,
    FeatureMapsView,
    LayerStatsView,
    MapsPage,
    MapsQuery,
    channel,
    channel_at,
    feature_maps,
    layer_activations,
    layer_place,
    layer_stats,
    maps_page,
    predict,
)
from .models import (
    CHECKPOINT_LIMIT_MB,
    CHECKPOINT_SUFFIXES,
    MAX_DEPTH,
    WEIGHT_CHOICES,
    ModelView,
    Startup,
    architecture,
    curated_models,
    find_layer,
    load_checkpoint,
    select_model,
    startup_model,
    weights_used,
)
from .quality import (
    DEFAULT_QUALITY_METHODS,
    QUALITY_METHODS,
    QUALITY_NAMES,
    QUALITY_STEPS,
    MethodScores,
    QualityView,
    SanityView,
    default_quality_methods,
    explanation_quality,
    quality_cost,
    sanity_check,
)

__all__ = [
    "DEFAULT_QUALITY_METHODS", "QUALITY_METHODS", "QUALITY_NAMES", "QUALITY_STEPS", "MethodScores", "QualityView", "SanityView",
    "default_quality_methods", "explanation_quality", "quality_cost", "sanity_check",
    "CAM_METHODS", "CAM_NAMES", "CHECKPOINT_LIMIT_MB", "CHECKPOINT_SUFFIXES", "COLORMAPS", "COMPARE_TILES", "COMPARE_VIEWS",
    "COMPARE_WORDS", "FEATUREVIS_MAX_STEPS", "INTERVENTIONS", "KEPT", "MAX_SCALE", "MAX_DEPTH", "MAX_FRAME_BYTES", "PROJECTIONS", "REQUEST_SECONDS",
    "STAGE_STRIDES", "WEIGHT_CHOICES", "AtlasJob", "AtlasReport", "AttributionChoices", "AttributionView", "CamCost",
    "ChannelImportanceView", "ChannelView", "ClassChange", "InterventionView",
    "ChannelVisualizationView", "CollectionTable", "ComparePair", "CompareSide", "CompareView", "DatasetExample",
    "ExamplesView", "FeatureMapsView", "FiltersView", "GuidedGradCamView", "LayerStatsView", "LiveView", "MapsPage", "MapsQuery",
    "ModelView", "NotComputedError", "Prediction", "Progress", "ProjectionView", "Startup", "WeightsOutcome",
    "add_collection_zip", "architecture", "atlas", "atlas_job", "attribution", "attribution_choices", "attribution_cost",
    "channel", "channel_at", "channel_importance", "intervene",
    "channel_visualization", "check_frame", "collection_folder", "collection_table", "collections",
    "compare", "curated_models", "dataset_examples", "decode_frame", "default_atlas_layers", "encode", "feature_maps",
    "filter_grid", "find_layer", "guided_gradcam", "layer_activations", "layer_place", "layer_stats", "list_convolutions",
    "live_maps", "load_checkpoint", "maps_page", "predict", "projection", "readable_macs", "select_model", "start_atlas",
    "startup_model", "stop_atlas", "weights_used",
    "ATTENTION_METHODS", "MASKING_METHODS", "METHOD_NAMES", "default_method",  # transformer-native attribution
]
