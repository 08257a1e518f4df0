"""Datasets for the selectivity pass: ImageFolder trees (and, later, FFCV .beton files), and generated demo data."""

from .imagefolder import eval_transform, image_folder, resize_size

__all__ = ["eval_transform", "image_folder", "resize_size"]
