"""instaseg.evaluation: COCO box / mask AP of detector results."""

from instaseg.evaluation.coco_eval import (
    COCOEvaluator,
    evaluate_coco,
    format_metrics_table,
    format_per_category_table,
    instances_to_coco_results,
)

__all__ = [
    "COCOEvaluator",
    "evaluate_coco",
    "format_metrics_table",
    "format_per_category_table",
    "instances_to_coco_results",
]
