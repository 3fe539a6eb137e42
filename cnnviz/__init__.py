"""CNN Explorer: what a convolutional network is made of and what it sees.

>>> import cnnviz
>>> cnnviz.list_models(source="torchvision")[:3]
['alexnet', 'vgg16', 'resnet18']
>>> view = cnnviz.feature_maps("resnet18", "examples/coffee.png", layer="layer1.0.conv1", weights="random")
>>> view.maps.shape, view.image.shape      # Tensor[C,H,W] float32, uint8[H,W,3] grid
(torch.Size([64, 56, 56]), (614, 462, 3))
"""
import sys
import types

import lazy_loader

# The public names and the modules they come from are listed once, in __init__.pyi (which type checkers read);
# each is imported on first use, so `import cnnviz` and `cnnviz --help` are quick.
__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
__version__ = "1.0.0"


class _Package(types.ModuleType):
    """``cnnviz.attribution`` and ``cnnviz.intervene`` are public functions (from ``explore``) and also the
    names of library modules. Loading such a module sets it as the package's attribute, which would hide
    the function; the public name wins, as it did when this file imported everything up front."""

    def __setattr__(self, name: str, value: object) -> None:
        if name in __all__ and isinstance(value, types.ModuleType) and value.__name__ == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
