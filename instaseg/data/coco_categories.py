"""The COCO 2017 instance categories (ids and names), for models trained on COCO.

COCO numbers its 80 categories with ids 1..90 (ten ids are unused). Models that predict 80 classes
(Detectron2, YOLACT, MMDetection) give their label ``k`` to the ``k``-th id below; torchvision's COCO
Mask R-CNN predicts 90 classes, one per id 1..90, the unused ones named "N/A". COCO's keypoint models
(torchvision's and Detectron2's Keypoint R-CNN) predict one class, person (id 1), with its 17 keypoints.
"""

from __future__ import annotations

__all__ = ["COCO_CATEGORIES", "coco_categories"]

# (id, name) of the 80 COCO categories, in id order.
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"),
)


def coco_categories(layout: str) -> tuple[list[int], list[str]]:
    """(category ids, names) for label 0..C-1 of a COCO model.

    ``layout``: ``"coco80"`` (80 classes, label k -> the k-th COCO id), ``"coco91"`` (torchvision's
    90 classes, label k -> id k + 1, unused ids named "N/A") or ``"coco_person"`` (the keypoint
    models' one class: id 1, person).
    """
    if layout == "coco_person":
        return [1], ["person"]
    if layout == "coco80":
        return [i for i, _ in COCO_CATEGORIES], [n for _, n in COCO_CATEGORIES]
    if layout == "coco91":
        names = dict(COCO_CATEGORIES)
        return list(range(1, 91)), [names.get(i, "N/A") for i in range(1, 91)]
    raise ValueError(f"unknown COCO class layout {layout!r}: use 'coco80', 'coco91' or 'coco_person'")
