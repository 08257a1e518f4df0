"""Data loading for the selectivity pass: FFCV against torchvision's ImageFolder, and the pass's own overhead.

1. Images per second of the two sources the pass uses (``source.batches()``), on the same JPEG files
   with the same decode, centre crop and normalization and the same number of workers:
   ``ImageFolderSource`` (torchvision ImageFolder + DataLoader, ``workers`` processes) and
   ``BetonSource`` (FFCV Loader, ``workers`` threads) over a ``.beton`` written with
   ``--write-mode jpg --max-resolution 0`` (FFCV re-encodes the JPEGs at quality 90, same pixel size).
   Also the ``raw`` ``.beton`` at shorter side round(S*256/224), the configuration whose images equal
   the ImageFolder's. Each pass reads the files --epochs times over (repeated indices). "pass" includes
   setting up (FFCV compiles its pipeline, about a second; the DataLoader starts its workers);
   "steady" counts from the first batch on.
2. The selectivity pass (``accumulate_class_sums`` over every layer: hooks, spatial means, float64
   class sums) against a bare forward pass of the same model on the same in-memory batches.

    .venv/bin/python benchmarks/data_loading.py [--images 2000] [--size 96] [--image-size 64] [--workers 2]

Generated data is kept under --cache (default /tmp/repsub-bench) between runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.data.beton import BetonSource
from repsub.data.imagefolder import resize_size
from repsub.data.prepare import prepare_beton
from repsub.data.sources import ImageFolderSource
from repsub.data.synthetic import make_image_folder
from repsub.models import IMAGENET_MEAN, IMAGENET_STD, load_model


def generated_data(cache: Path, images: int, size: int, image_size: int, workers: int) -> dict[str, Path]:
    """The JPEG ImageFolder and its two .beton files, made once per set of arguments."""
    key = {"images": images, "size": size, "image_size": image_size, "version": 1}
    root = cache / f"jpg-{images}-{size}-{image_size}"
    paths = {"folder": root / "images", "jpg": root / "jpg.beton", "raw": root / "raw.beton"}
    stamp = root / "complete.json"
    if not (stamp.is_file() and json.loads(stamp.read_text()) == key):
        classes = 10
        make_image_folder(paths["folder"], classes, images // classes, size=size, fmt="jpg")
        prepare_beton(paths["folder"], paths["jpg"], max_resolution=0, write_mode="jpg", workers=workers)
        prepare_beton(paths["folder"], paths["raw"], max_resolution=resize_size(image_size), workers=workers)
        stamp.write_text(json.dumps(key))
    return paths


def time_source(source, batch_size: int, workers: int, epochs: int) -> tuple[float, float, int]:
    """(seconds for the whole pass, seconds from the first batch on, images). The pass reads the files
    `epochs` times over (repeated indices), so that set-up is a realistic share of a long pass."""
    indices = [i for _ in range(epochs) for i in range(len(source))]
    started = time.perf_counter()
    first = None
    count = 0
    for images, labels in source.batches(batch_size, indices=indices, workers=workers):
        if first is None:
            first, first_count = time.perf_counter(), len(labels)
        count += len(labels)
        del images
    ended = time.perf_counter()
    steady = (ended - first) * count / max(count - first_count, 1)  # rescaled to the whole set
    return ended - started, steady, count


def loading(paths, image_size: int, batch_size: int, workers: int, repeats: int, epochs: int) -> None:
    sources = {
        "ImageFolder+DataLoader (jpg)": ImageFolderSource(
            paths["folder"], image_size, IMAGENET_MEAN, IMAGENET_STD
        ),
        "FFCV .beton (jpg)": BetonSource(paths["jpg"], image_size, IMAGENET_MEAN, IMAGENET_STD),
        "FFCV .beton (raw, exact)": BetonSource(paths["raw"], image_size, IMAGENET_MEAN, IMAGENET_STD),
    }
    print(
        f"\n1. loading: the files {epochs} times over, batch {batch_size}, {workers} workers, S={image_size}, "
        f"best of {repeats}"
    )
    print(f"{'source':<30} {'pass img/s':>11} {'steady img/s':>13}")
    rates = {}
    for name, source in sources.items():
        best_pass, best_steady = float("inf"), float("inf")
        for _ in range(repeats):
            seconds, steady, count = time_source(source, batch_size, workers, epochs)
            best_pass, best_steady = min(best_pass, seconds), min(best_steady, steady)
        rates[name] = (count / best_pass, count / best_steady)
        print(f"{name:<30} {rates[name][0]:>11.0f} {rates[name][1]:>13.0f}")
    reference = rates["ImageFolder+DataLoader (jpg)"]
    for name in list(sources)[1:]:
        print(
            f"ratio {name} / ImageFolder: pass {rates[name][0] / reference[0]:.2f}x, "
            f"steady {rates[name][1] / reference[1]:.2f}x"
        )


def overhead(paths, model_name: str, image_size: int, batch_size: int, images: int, repeats: int) -> None:
    model = load_model(model_name, "random", seed=0, num_classes=10)
    source = BetonSource(paths["raw"], image_size, IMAGENET_MEAN, IMAGENET_STD)
    batches = [(x, y) for x, y in source.batches(batch_size, indices=range(images), workers=2)]
    n = sum(len(y) for _, y in batches)

    @torch.no_grad()
    def bare():
        for x, _ in batches:
            model.module(x)

    def selectivity_pass():
        accumulate_class_sums(model, model.layers, batches, 10, progress=False)

    timings = {"bare forward": [], "selectivity pass": []}
    bare()  # warm-up
    for _ in range(repeats):  # interleaved, so both see the same machine load
        for name, run in (("bare forward", bare), ("selectivity pass", selectivity_pass)):
            started = time.perf_counter()
            run()
            timings[name].append(time.perf_counter() - started)
    print(
        f"\n2. overhead: {model_name} at {image_size} px, all {len(model.layers)} layers, {n} images in "
        f"batches of {batch_size}, torch threads {torch.get_num_threads()}, best of {repeats}"
    )
    for name, values in timings.items():
        print(f"{name:<18} {min(values):7.3f} s  {n / min(values):8.1f} img/s")
    ratio = min(timings["selectivity pass"]) / min(timings["bare forward"])
    print(f"overhead ratio (pass / bare): {ratio:.3f}  (goal <= 1.10)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000, help="generated JPEG images (10 classes)")
    parser.add_argument("--size", type=int, default=96, help="side of the generated images")
    parser.add_argument("--image-size", type=int, default=64, help="S, the crop fed to the model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="best of N (the machine may be shared)")
    parser.add_argument("--epochs", type=int, default=5, help="times each loading pass reads the files")
    parser.add_argument("--model", default="vgg16", help="model of the overhead measurement")
    parser.add_argument("--forward-images", type=int, default=512, help="images of the overhead measurement")
    parser.add_argument("--cache", default="/tmp/repsub-bench")
    args = parser.parse_args()
    started = time.perf_counter()
    paths = generated_data(Path(args.cache), args.images, args.size, args.image_size, args.workers)
    print(f"data: {args.images} JPEG images of {args.size} px under {paths['folder'].parent}")
    loading(paths, args.image_size, args.batch_size, args.workers, args.repeats, args.epochs)
    overhead(paths, args.model, args.image_size, args.batch_size, args.forward_images, args.repeats)
    print(f"\ntotal {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
