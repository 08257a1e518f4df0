"""Datasets for the selectivity pass: ImageFolder trees and FFCV .beton files (`sources.open_source` chooses by
the path), `prepare` (ImageFolder -> .beton), S3 staging of .beton files, and generated demo data."""

from repsub.data.imagefolder import eval_transform, image_folder, resize_size

__all__ = ["eval_transform", "image_folder", "resize_size"]
