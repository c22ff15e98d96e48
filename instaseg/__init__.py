"""instaseg: instance segmentation in plain PyTorch.

Conventions used everywhere in the package:

* Boxes are absolute-pixel ``xyxy`` float tensors of shape ``(N, 4)`` in continuous
  coordinates: a box covering pixel columns ``0..W-1`` is ``[0, W]``; no "+1" widths.
* Masks are ``(N, H, W)`` bool tensors, or float tensors of probabilities in ``[0, 1]``.
* Labels are foreground classes ``0..num_classes-1``; ``num_classes`` never counts background.
* Images are float tensors ``(3, H, W)``; models own their normalization.
"""

__version__ = "0.1.0"

# The public API, imported on first use so that ``import instaseg`` stays light and a broken
# optional part cannot break the package import.
_API = {
    "Instances": "instaseg.structures.instances",
    "Targets": "instaseg.structures.instances",
    "Predictor": "instaseg.hub.predictor",
    "build_model": "instaseg.hub.build",
    "list_presets": "instaseg.config.presets",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'instaseg' has no attribute {name!r}")
