"""instaseg.evaluation: COCO box / mask AP of detector results."""

from instaseg.evaluation.coco_eval import (
    COCOEvaluator,
    evaluate_coco,
    format_ap,
    format_metrics_table,
    format_per_category_table,
    instances_to_coco_results,
)
from instaseg.evaluation.confusion import ConfusionMatrix, confusion_from_coco
from instaseg.evaluation.curves import PRCurves
from instaseg.evaluation.results_file import ResultFields, result_fields

__all__ = [
    "COCOEvaluator",
    "ConfusionMatrix",
    "PRCurves",
    "confusion_from_coco",
    "evaluate_coco",
    "format_ap",
    "format_metrics_table",
    "format_per_category_table",
    "instances_to_coco_results",
    "ResultFields",
    "result_fields",
]
