"""What the data paths do for a CUDA device, checked without one: the logic is device-independent."""

import torch
from ffcv.transforms import ToDevice

from repsub.data.beton import image_pipeline
from repsub.data.sources import ImageFolderSource
from repsub.models import IMAGENET_MEAN, IMAGENET_STD


def test_the_beton_pipeline_copies_uint8_to_a_cuda_device_without_blocking():
    on_gpu = image_pipeline(64, 0.9, "cuda:1")
    assert isinstance(on_gpu[-1], ToDevice)
    assert on_gpu[-1].device == torch.device("cuda:1") and on_gpu[-1].non_blocking
    assert not any(isinstance(op, ToDevice) for op in image_pipeline(64, 0.9, "cpu"))


def test_the_imagefolder_loader_pins_batches_for_a_cuda_device(image_folder_dir):
    source = ImageFolderSource(image_folder_dir, 32, IMAGENET_MEAN, IMAGENET_STD)
    assert source.loader(4, workers=0, device="cuda").pin_memory
    assert not source.loader(4, workers=0, device="cpu").pin_memory
