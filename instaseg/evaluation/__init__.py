"""instaseg.evaluation: COCO box / mask / keypoint (OKS) AP of detector results."""

from instaseg.evaluation.coco_eval import (
    COCOEvaluator,
    default_iou_types,
    evaluate_coco,
    format_ap,
    format_metrics_table,
    format_per_category_table,
    instances_to_coco_results,
)
from instaseg.evaluation.confusion import ConfusionMatrix, confusion_from_coco
from instaseg.evaluation.curves import PRCurves
from instaseg.evaluation.keypoint_eval import (
    COCO_PERSON_SIGMAS,
    DEFAULT_KEYPOINT_SIGMA,
    KEYPOINT_MAX_DETS,
    keypoint_category_ids,
    keypoint_sigmas,
)
from instaseg.evaluation.results_file import ResultFields, result_fields

__all__ = [
    "COCOEvaluator",
    "COCO_PERSON_SIGMAS",
    "ConfusionMatrix",
    "DEFAULT_KEYPOINT_SIGMA",
    "KEYPOINT_MAX_DETS",
    "PRCurves",
    "confusion_from_coco",
    "default_iou_types",
    "evaluate_coco",
    "format_ap",
    "format_metrics_table",
    "format_per_category_table",
    "instances_to_coco_results",
    "keypoint_category_ids",
    "keypoint_sigmas",
    "ResultFields",
    "result_fields",
]
