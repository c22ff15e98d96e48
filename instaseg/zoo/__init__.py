"""Published weights: the catalogue, the download cache, and what ImageNet backbone weights need.

``instaseg weights list | fetch | info`` and ``model.backbone.weights=NAME`` come here for files.
Turning a detector's name into a loadable instaseg checkpoint (fetch, then convert once) is
``instaseg.hub.resolve_checkpoint``, used by ``--weights NAME_OR_PATH`` (train, predict, eval, export),
``build_model(preset, weights=NAME)`` and ``Predictor.from_pretrained(NAME)``; ``instaseg.weights``
only translates state dicts.
"""

from instaseg.zoo.catalogue import CATALOGUE, BackboneConvention, WeightsEntry, get_entry, list_entries
from instaseg.zoo.download import fetch_file, source_url, weights_dir, weights_home
from instaseg.zoo.pretrained import (
    apply_backbone_conventions,
    backbone_weights_file,
    cache_state,
    check_backbone_conventions,
    converted_path,
)

__all__ = [
    "CATALOGUE",
    "BackboneConvention",
    "WeightsEntry",
    "apply_backbone_conventions",
    "backbone_weights_file",
    "cache_state",
    "check_backbone_conventions",
    "converted_path",
    "fetch_file",
    "get_entry",
    "list_entries",
    "source_url",
    "weights_dir",
    "weights_home",
]
