"""Published weights: the catalogue, the cache, and turning a name into weights instaseg can load.

``instaseg.weights`` only translates state dicts; fetching them belongs here.
"""

from instaseg.zoo.catalogue import CATALOGUE, BackboneConvention, WeightsEntry, get_entry, list_entries
from instaseg.zoo.download import fetch_file, source_url, weights_dir, weights_home

__all__ = [
    "CATALOGUE",
    "BackboneConvention",
    "WeightsEntry",
    "fetch_file",
    "get_entry",
    "list_entries",
    "source_url",
    "weights_dir",
    "weights_home",
]
