"""What an MMDetection checkpoint's ``meta`` says: its classes and its config's input conventions.

MMDetection 2.x saves ``{"state_dict": ..., "meta": {"mmdet_version", "config", "CLASSES", ...}}``
(``config`` is the merged config's ``pretty_text``); MMDetection 3.x (MMEngine) saves
``{"meta": {"cfg", "dataset_meta": {"classes", "palette"}, "mmengine_version", ...}, ...}``. The
config text is Python source: it is searched with regular expressions, never executed.

Read from the config text:

* the backbone ``style``: ``'pytorch'`` (stride in the 3x3 conv) or ``'caffe'`` (stride in the first
  1x1), the one property of a ResNet checkpoint its tensors cannot show;
* the normalization: 2.x ``img_norm_cfg`` / ``Normalize`` (``mean=[...], std=[...], to_rgb=...``)
  or 3.x ``DetDataPreprocessor`` (``..., bgr_to_rgb=...``), the arguments in any order (MMEngine's
  dumps sort them). Images are read as BGR by OpenCV, so ``to_rgb=False`` means a BGR model,
  whose mean and std are in BGR order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from instaseg.data.coco_categories import coco_categories
from instaseg.errors import CheckpointError

__all__ = [
    "Normalization",
    "MMDetMeta",
    "read_mmdet_meta",
    "config_style",
    "config_normalization",
    "category_ids_for",
]

_STYLES = ("pytorch", "caffe")
_STYLE = re.compile(r"(?<![\w.])style\s*=\s*['\"](\w+)['\"]")
_MEAN = re.compile(r"(?<![\w.])mean\s*=\s*[\[(]")
_STD = re.compile(r"(?<![\w.])std\s*=\s*[\[(]([^\])]*)[\])]")
_MEAN_VALUES = re.compile(r"mean\s*=\s*[\[(]([^\])]*)[\])]")
_TO_RGB = re.compile(r"(?<![\w.])(?:bgr_)?to_rgb\s*=\s*(True|False)")


@dataclass(frozen=True)
class Normalization:
    """``(image - pixel_mean) / pixel_std`` on 0-255 images in ``channel_order``."""

    channel_order: str  # "RGB" or "BGR"
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]


@dataclass(frozen=True)
class MMDetMeta:
    """The parts of a checkpoint's ``meta`` the converter uses (all optional)."""

    config_text: str = ""
    classes: tuple[str, ...] | None = None
    version: str = ""  # "MMDetection 2.25.0", "MMEngine 0.7.0", or ""

    @property
    def style(self) -> str | None:
        return config_style(self.config_text)

    @property
    def normalization(self) -> Normalization | None:
        return config_normalization(self.config_text)


def _three_floats(text: str) -> tuple[float, float, float]:
    values = tuple(float(v) for v in text.replace("\n", " ").split(",") if v.strip())
    if len(values) != 3:
        raise CheckpointError(f"config text: expected 3 values in a mean/std, got [{text}]")
    return values  # type: ignore[return-value]


def config_style(text: str) -> str | None:
    """The backbone's ``style`` named in MMDetection config text, or None if it names none."""
    found = set(_STYLE.findall(text))
    if not found:
        return None
    if len(found) > 1 or not found <= set(_STYLES):
        raise CheckpointError(f"config text: backbone style {sorted(found)}; expected one of {_STYLES}")
    return found.pop()


def _enclosing_call(text: str, position: int) -> str:
    """The text of the innermost bracketed call (``dict(...)``) around ``position``."""
    depth, start = 0, position
    while start > 0:
        start -= 1
        if text[start] in ")]":
            depth += 1
        elif text[start] in "([":
            if depth == 0:
                break
            depth -= 1
    depth, end = 0, position
    while end < len(text):
        if text[end] in "([":
            depth += 1
        elif text[end] in ")]":
            if depth == 0:
                break
            depth -= 1
        end += 1
    return text[start:end + 1]


def _normalizations(text: str) -> set[tuple[tuple[float, ...], tuple[float, ...], bool]]:
    """(mean, std, to_rgb) of every dict that states a mean and a std (img_norm_cfg, Normalize,
    DetDataPreprocessor; Expand(mean=...) has no std). Arguments in any order: MMEngine's dumps
    sort them. A missing flag takes its default: Normalize's to_rgb=True, the preprocessor's
    bgr_to_rgb=False."""
    found = set()
    for match in _MEAN.finditer(text):
        call, mean = _enclosing_call(text, match.start()), _MEAN_VALUES.match(text, match.start())
        std = _STD.search(call)
        if std is None or mean is None:
            continue
        flag = _TO_RGB.search(call)
        to_rgb = flag[1] == "True" if flag else "Normalize" in call
        found.add((_three_floats(mean[1]), _three_floats(std[1]), to_rgb))
    return found


def config_normalization(text: str) -> Normalization | None:
    """The image normalization of MMDetection config text, or None if it states none."""
    found = _normalizations(text)
    if not found:
        return None
    if len(found) > 1:
        raise CheckpointError(f"config text: {len(found)} different image normalizations: {sorted(found)}")
    mean, std, to_rgb = found.pop()
    return Normalization("RGB" if to_rgb else "BGR", mean, std)  # type: ignore[arg-type]


def _classes(meta: dict[str, Any]) -> tuple[str, ...] | None:
    classes = meta.get("CLASSES")
    if classes is None and isinstance(meta.get("dataset_meta"), dict):
        classes = meta["dataset_meta"].get("classes")
    if isinstance(classes, str):  # a one-class dataset can store a bare name
        classes = (classes,)
    if not isinstance(classes, Sequence) or not all(isinstance(c, str) for c in classes):
        return None
    return tuple(classes)


def read_mmdet_meta(meta: Any) -> MMDetMeta:
    """An MMDetection 2.x or 3.x ``meta`` dict (or None) -> :class:`MMDetMeta`."""
    if not isinstance(meta, dict):
        return MMDetMeta()
    text = meta.get("config") if isinstance(meta.get("config"), str) else meta.get("cfg")
    version = ""
    if isinstance(meta.get("mmdet_version"), str):
        version = f"MMDetection {meta['mmdet_version']}"
    elif isinstance(meta.get("mmengine_version"), str):
        version = f"MMEngine {meta['mmengine_version']}"
    return MMDetMeta(text if isinstance(text, str) else "", _classes(meta), version)


def category_ids_for(classes: Sequence[str]) -> list[int]:
    """Dataset category ids in label order: COCO's ids for COCO's 80 classes in COCO's order
    (MMDetection's CocoDataset.CLASSES, mapped to the ids by name), else ``1..C``."""
    ids, names = coco_categories("coco80")
    return ids if list(classes) == names else list(range(1, len(classes) + 1))
