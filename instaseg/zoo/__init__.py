"""Published weights: the catalogue, the cache, and turning a name into weights instaseg can load.

``instaseg weights list | fetch | info``, ``--weights NAME_OR_PATH`` (train, predict, eval, export),
``build_model(preset, weights=NAME)``, ``Predictor.from_pretrained(NAME)`` and
``model.backbone.weights=NAME`` all come here; ``instaseg.weights`` only translates state dicts.
"""

from instaseg.zoo.catalogue import CATALOGUE, BackboneConvention, WeightsEntry, get_entry, list_entries
from instaseg.zoo.download import fetch_file, source_url, weights_dir, weights_home
from instaseg.zoo.pretrained import (
    apply_backbone_conventions,
    backbone_weights_file,
    cache_state,
    check_backbone_conventions,
    checkpoint_for,
    config_for_weights,
    converted_path,
    resolve_checkpoint,
)

__all__ = [
    "CATALOGUE",
    "BackboneConvention",
    "WeightsEntry",
    "apply_backbone_conventions",
    "backbone_weights_file",
    "cache_state",
    "check_backbone_conventions",
    "checkpoint_for",
    "config_for_weights",
    "converted_path",
    "fetch_file",
    "get_entry",
    "list_entries",
    "resolve_checkpoint",
    "source_url",
    "weights_dir",
    "weights_home",
]
