"""Published weights by name -> an instaseg checkpoint: fetched through ``instaseg.zoo``, converted once.

:func:`resolve_checkpoint` turns ``--weights NAME_OR_PATH`` into an instaseg checkpoint path: a path
is used as is; a catalogue name is fetched (``instaseg.zoo.download``) and converted once with the
publisher's converter (``instaseg.weights`` translates, :mod:`instaseg.hub.convert` builds and saves);
the converted checkpoint is cached beside the file as ``<name>.instaseg.pt`` and carries the COCO
category ids and names.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from instaseg.data.coco_categories import coco_categories
from instaseg.engine.checkpoint import atomic_torch_save, load_checkpoint
from instaseg.errors import CheckpointError, ConfigError
from instaseg.hub.convert import convert_detectron2_file, convert_torchvision_file, convert_yolact_file
from instaseg.structures.keypoints import COCO_PERSON_KEYPOINT_NAMES, COCO_PERSON_SKELETON
from instaseg.weights.common import ConversionSummary
from instaseg.zoo.catalogue import CATALOGUE, WeightsEntry, get_entry
from instaseg.zoo.download import DEFAULT_TIMEOUT, fetch_file, weights_dir
from instaseg.zoo.pretrained import converted_path

__all__ = ["checkpoint_for", "resolve_checkpoint"]


def _say(message: str, verbose: bool) -> None:
    if verbose:
        print(message, file=sys.stderr)


def _convert(entry: WeightsEntry, src: Path, dst: Path) -> ConversionSummary:
    """Run the publisher's converter: ``src`` (its file) -> ``dst`` (an instaseg checkpoint)."""
    if entry.converter == "torchvision":
        return convert_torchvision_file(src, dst)
    if entry.converter == "detectron2":
        return convert_detectron2_file(src, dst)
    if entry.converter == "yolact":
        return convert_yolact_file(src, dst)
    if entry.converter == "mmdet":
        try:
            import instaseg.weights.mmdet  # noqa: F401  (an optional part of the package)

            from instaseg.hub.convert import convert_mmdet_file
        except ImportError:
            raise CheckpointError(f"{entry.name}: converting MMDetection checkpoints needs instaseg.weights.mmdet, "
                                  "which this installation does not have") from None
        return convert_mmdet_file(src, dst)
    raise CheckpointError(f"{entry.name}: no converter for {entry.converter!r}")


def _record_origin(entry: WeightsEntry, path: Path) -> list[str]:
    """Add the catalogue name, URL and (for COCO models) category ids and names to a converted checkpoint."""
    payload = load_checkpoint(path)
    payload["source"] = {"catalogue": entry.name, "publisher": entry.publisher, "url": entry.url,
                         "file_name": entry.file_name}
    notes = []
    num_classes = int(payload["config"]["model"]["num_classes"])
    if entry.classes and "categories" not in payload:  # a converter may have read them from the file
        ids, names = coco_categories(entry.classes)
        if len(ids) == num_classes:
            payload["categories"] = {"ids": ids, "names": names, **_keypoint_metadata(entry, payload)}
        else:
            notes.append(f"the file has {num_classes} classes, not the {len(ids)} COCO ones: categories not recorded")
    atomic_torch_save(payload, path)
    return notes


def _keypoint_metadata(entry: WeightsEntry, payload: dict) -> dict[str, dict[str, list]]:
    """``{"keypoints": {"names", "skeleton"}}``: COCO persons' keypoint names and skeleton (0-based
    pairs, for drawing), stored as ``instaseg train`` stores a dataset's, for a COCO keypoint model
    whose head predicts exactly those 17 keypoints; nothing otherwise."""
    head = payload["config"]["model"].get("keypoint_head")
    if entry.classes != "coco_person" or not head or head["num_keypoints"] != len(COCO_PERSON_KEYPOINT_NAMES):
        return {}
    return {"keypoints": {"names": list(COCO_PERSON_KEYPOINT_NAMES),
                          "skeleton": [list(p) for p in COCO_PERSON_SKELETON]}}


def checkpoint_for(entry: WeightsEntry, *, home: str | Path | None = None, mirror: str | None = None,
                   timeout: float = DEFAULT_TIMEOUT, verbose: bool = True) -> Path:
    """The instaseg checkpoint of a detector entry: cached, else fetched and converted (once).

    A conversion cached before the publisher's file was replaced (a newer file dropped in by hand)
    is redone.
    """
    if entry.kind != "detector":
        raise ConfigError(f"{entry.name} holds ImageNet backbone weights, not a whole model: train with "
                          f"--set model.backbone.weights={entry.name}")
    out = converted_path(entry, home)
    file = weights_dir(home) / entry.file_name
    if entry.converter != "instaseg" and out.is_file() and not (
            file.is_file() and file.stat().st_mtime > out.stat().st_mtime):
        return out
    src = fetch_file(entry, home=home, mirror=mirror, timeout=timeout, progress=verbose)
    if entry.converter == "instaseg":
        return src
    _say(f"converting {entry.file_name} ({entry.publisher}) -> {out.name}", verbose)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        summary = _convert(entry, src, Path(tmp))
        notes = list(summary.notes) + _record_origin(entry, Path(tmp))
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    for note in notes:
        _say(f"  note: {note}", verbose)
    _say(f"  {summary.architecture}, {summary.num_classes} classes, config {summary.config_name}", verbose)
    return out


def _looks_like_path(value: str) -> bool:
    return os.sep in value or "/" in value or value.endswith((".pt", ".pth", ".pkl", ".ckpt"))


def resolve_checkpoint(name_or_path: str | Path, *, home: str | Path | None = None, mirror: str | None = None,
                       timeout: float = DEFAULT_TIMEOUT, verbose: bool = True) -> Path:
    """``--weights NAME_OR_PATH`` -> an instaseg checkpoint path.

    An existing file is returned as is (``load_checkpoint`` checks it is an instaseg checkpoint); a
    catalogue name is fetched and converted (:func:`checkpoint_for`).
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    value = str(name_or_path)
    if value not in CATALOGUE and _looks_like_path(value):
        raise CheckpointError(f"{value}: no such checkpoint file (and not a catalogue name; see "
                              "`instaseg weights list`)")
    return checkpoint_for(get_entry(value), home=home, mirror=mirror, timeout=timeout, verbose=verbose)
