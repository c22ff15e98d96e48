"""The JSON the HTTP API answers with, as pydantic models: they write its OpenAPI description."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

__all__ = ["Health", "Instance", "ModelInfo", "Prediction", "Problem", "ReviewDetail", "ReviewImage", "ReviewStatus"]


class Problem(BaseModel):
    """Every 4xx/5xx answer: what went wrong, for a person."""

    detail: str


class Health(BaseModel):
    status: str = Field(description="'ok' while the server answers")
    review: str | None = Field(None, description="dataset review progress, 'done/total', when a dataset is given")
    score_threshold: float = Field(description="the server's default score threshold")


class Rle(BaseModel):
    size: list[int] = Field(description="[height, width]")
    counts: str = Field(description="compressed COCO RLE, column-major runs")


class Instance(BaseModel):
    box: list[float] = Field(description="[x1, y1, x2, y2] absolute pixels of the image, continuous coordinates")
    score: float | None = Field(None, description="class confidence (None for ground truth)")
    label: int = Field(description="contiguous label in [0, num_classes)")
    category_id: int = Field(description="the dataset's category id of the label")
    category_name: str
    mask: Rle | None = Field(None, description="the instance's mask; None from a model without masks")
    mask_score: float | None = Field(None, description="mask quality score (MS R-CNN, YOLACT++), else None")
    keypoints: list[list[float]] | None = Field(
        None, description="keypoint models: K [x, y, score] in the box's frame (continuous pixels: the centre of "
                          "pixel column i is i + 0.5); ground truth: [x, y, v], v the COCO visibility")


class Prediction(BaseModel):
    width: int
    height: int
    instances: list[Instance]
    score_threshold: float = Field(description="instances scoring below it were left out")
    seconds: float = Field(description="time the model took on this image (not counting the wait for it)")


class ModelInfo(BaseModel):
    preset: str
    architecture: str
    num_classes: int
    classes: list[dict[str, Any]] = Field(description="label, category_id and name of each class")
    input: dict[str, Any] = Field(description="what the model expects: channel order, normalization, test size")
    score_floor: float = Field(description="the model's own score threshold (model.inference.score_thresh)")
    keypoints: dict[str, Any] | None = Field(
        None, description="keypoint models: names (K), skeleton (0-based pairs) and threshold (the score above "
                          "which the overlays draw a joint); None without keypoints")
    device: str
    weights: dict[str, Any] = Field(description="where the weights came from")


class ReviewStatus(BaseModel):
    total: int
    done: int
    failed: list[str]
    running: bool
    finished: bool


class ReviewImage(BaseModel):
    image_id: int
    file_name: str = Field(description="relative to the dataset's image folder; GET /v1/review/files/{file_name}")
    width: int
    height: int
    classes: list[str]
    truth_count: int
    missed: int
    false_positives: int
    matched: int
    mean_iou: float | None
    error: float = Field(description="missed + false_positives + sum(1 - IoU) over the matches")


class ReviewDetail(BaseModel):
    image_id: int
    file_name: str
    width: int
    height: int
    truth: list[Instance]
    predictions: list[Instance]
    score_threshold: float
    missed: int
    false_positives: int
    matched: int
    mean_iou: float | None
    error: float
