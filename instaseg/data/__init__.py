"""Data: COCO datasets, the synthetic dataset, image reading, transforms and loaders."""

from instaseg.data.coco import CocoDataset, Sample
from instaseg.data.image_io import read_image
from instaseg.data.loader import Batch, build_test_loader, build_train_loader, collate
from instaseg.data.synthetic import SyntheticDataset, generate_synthetic_dataset, synthetic_category_names
from instaseg.data.synthetic_keypoints import FIGURE_KEYPOINT_NAMES, FIGURE_SKELETON, generate_keypoint_dataset
from instaseg.data.transforms import (
    Compose,
    Expand,
    PhotometricDistort,
    RandomHorizontalFlip,
    RandomSampleCrop,
    ResizeShortestEdge,
    ResizeSquare,
    build_transforms,
)

__all__ = [
    "FIGURE_KEYPOINT_NAMES",
    "FIGURE_SKELETON",
    "Batch",
    "CocoDataset",
    "Compose",
    "Expand",
    "PhotometricDistort",
    "RandomHorizontalFlip",
    "RandomSampleCrop",
    "ResizeShortestEdge",
    "ResizeSquare",
    "Sample",
    "SyntheticDataset",
    "build_test_loader",
    "build_train_loader",
    "build_transforms",
    "collate",
    "generate_keypoint_dataset",
    "generate_synthetic_dataset",
    "read_image",
    "synthetic_category_names",
]
