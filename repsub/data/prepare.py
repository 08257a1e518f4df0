"""`repsub prepare`: images to an FFCV `.beton` file for the selectivity pass.

Two layouts are read:

- an ImageFolder tree (ImageNet's `train/`): one folder per class, classes indexed in sorted
  order (torchvision's convention, so indices match the pretrained VGG16's outputs), images in
  torchvision's order (folders sorted, files sorted);
- a flat folder (ImageNet's `val/`) with `--labels FILE`: one `filename,class` line per image,
  the class a name (a synset id) or an index; images in sorted file-name order.

Every candidate file is decoded once with PIL before anything is written (FFCV's writer waits
forever when a worker fails): an unreadable file is named in the report with its reason and left
out, or, with `strict`, refused before writing. Files whose name starts with '.' are ignored.

Images whose shorter side exceeds `max_resolution` are resized to it exactly as torchvision's
`Resize(max_resolution)` does (PIL bilinear with antialiasing; the longer side keeps the aspect
ratio), then stored as FFCV `RGBImageField` (`raw` pixels, `jpg`, or `proportion`: JPEG for a
random share of the images) with an `IntField` label. Note that FFCV's own `max_resolution` caps
the *longer* side; repsub caps the shorter one, so that with 256 (S=224) the selectivity pass
crops 224 px without any further resize, as the ImageFolder path does.

Beside `FILE.beton` go `FILE.beton.json` (class names in index order, image count, options,
source, skipped files) and `FILE.beton.files.parquet` (image_index, path, label: what an
activation row's image_index refers to). All are written under hidden temporary names and moved
into place at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import queue
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from time import sleep

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from repsub.data.beton import (
    IMAGE_FIELD,
    LABEL_FIELD,
    SIDECAR_FORMAT,
    import_ffcv,
    keep_torch_threads,
    sidecar_path,
)
from repsub.errors import DataError, UsageError

WRITE_MODES = ("raw", "jpg", "proportion")
MAX_SIDE = 65535  # FFCV stores width and height as uint16
MIN_PAGE = 1 << 21  # FFCV's smallest page (2 MiB); its default of 8 MiB makes a tiny dataset 16 MB+
LARGE_PAGE = 1 << 23  # FFCV's default, for datasets of more than a few hundred MB
SIDECAR_VERSION = 1


def files_index_path(beton: str | os.PathLike) -> Path:
    """`FILE.beton.files.parquet`: image_index, path (relative to the source folder), label."""
    return Path(os.fspath(beton) + ".files.parquet")


@dataclass
class PrepareReport:
    """What `prepare_beton` did: totals add up (written + skipped = found)."""

    out: str
    classes: list[str]
    found: int
    written: int
    skipped: list[tuple[str, str]]  # (path, reason)
    unlabelled: list[str] = field(default_factory=list)  # flat layout: files with no label line (not read)
    empty_classes: list[str] = field(default_factory=list)
    bytes: int = 0  # the file's size
    image_bytes: int = 0  # what the images themselves take in it (the rest: header, index, page ends)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        text = [f"found {self.found} images in {len(self.classes)} classes"]
        if self.unlabelled:
            text.append(
                f"note: {len(self.unlabelled)} file(s) have no line in the labels file and were not read, "
                f"e.g. {self.unlabelled[0]}"
            )
        if self.empty_classes:
            text.append(f"note: no image written for class(es) {', '.join(self.empty_classes[:10])}")
        if self.skipped:
            text.append(f"skipped {len(self.skipped)} unreadable file(s):")
            text.extend(f"  {path}: {reason}" for path, reason in self.skipped)
        if self.written:
            per_image = self.image_bytes / self.written / 1024
            text.append(
                f"wrote {self.out} ({self.bytes / 2**20:.1f} MiB; images {per_image:.1f} KiB each on average) "
                f"and its sidecar {sidecar_path(self.out).name} in {self.seconds:.1f} s"
            )
        text.append(f"total: {self.written} written + {len(self.skipped)} skipped = {self.found} found")
        return text


# --- finding the images ------------------------------------------------------------------------


def find_image_folder(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Classes (sorted folder names) and (path, class index) in torchvision's ImageFolder order."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        loose = any(p.is_file() for p in root.iterdir())
        hint = " (a flat folder of images needs --labels FILE)" if loose else ""
        raise DataError(
            f"--images {root}: found {len(classes)} class folder(s); an ImageFolder has one sub-folder of "
            f"images per class, two classes or more{hint}"
        )
    items = []
    for index, name in enumerate(classes):
        for folder, dirs, files in sorted(os.walk(root / name, followlinks=True)):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            items.extend((os.path.join(folder, f), index) for f in sorted(files) if not f.startswith("."))
    return classes, items


def read_class_list(path: str | os.PathLike) -> list[str]:
    """One class name per line, in index order (blank lines and '#' comments ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        raise DataError(f"--classes {path}: {err}") from None
    names = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(set(names)) != len(names):
        raise DataError(f"--classes {path}: class names repeat")
    return names


def read_labels(
    root: Path, labels_file: str | os.PathLike, classes: list[str] | None = None
) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """A flat folder and its labels file -> (classes, (path, index) sorted by file name, unlabelled files).

    Each line is `filename,class`; the class is a name (a synset id such as n01440764) or an index.
    Without a class list, names give the sorted set of names as classes, and indices give classes
    named 0..max. A first line `filename,class` is taken as a header.
    """
    try:
        lines = Path(labels_file).read_text().splitlines()
    except OSError as err:
        raise DataError(f"--labels {labels_file}: {err}") from None
    entries: dict[str, tuple[str, int]] = {}  # file -> (class text, line number)
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 2 or not all(parts):
            raise DataError(f"--labels {labels_file}:{number}: expected 'filename,class', got {line!r}")
        if number == 1 and [p.lower() for p in parts] in (["filename", "class"], ["filename", "label"]):
            continue
        if parts[0] in entries:
            raise DataError(f"--labels {labels_file}:{number}: {parts[0]} is listed twice")
        entries[parts[0]] = (parts[1], number)
    if not entries:
        raise DataError(f"--labels {labels_file}: no 'filename,class' lines")
    classes, index_of = _resolve_classes(
        {name: text for name, (text, _) in entries.items()}, classes, labels_file, entries
    )
    items = [(str(root / name), index_of[name]) for name in sorted(entries)]
    listed = {os.path.normpath(root / name) for name in entries}
    unlabelled = sorted(
        str(p)
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and os.path.normpath(p) not in listed
    )
    return classes, items, unlabelled


def _resolve_classes(
    labels: dict[str, str], classes, labels_file, entries
) -> tuple[list[str], dict[str, int]]:
    def where(name: str) -> str:
        return f"--labels {labels_file}:{entries[name][1]}"

    if classes is not None:
        lookup = {c: i for i, c in enumerate(classes)}
        index_of = {}
        for name, text in labels.items():
            if text in lookup:
                index_of[name] = lookup[text]
            elif text.isdigit() and int(text) < len(classes):
                index_of[name] = int(text)
            else:
                raise DataError(f"{where(name)}: class {text!r} is neither a name of --classes nor an index")
        return classes, index_of
    numeric = {name for name, text in labels.items() if text.isdigit()}
    if numeric and len(numeric) != len(labels):
        other = next(name for name in labels if name not in numeric)
        raise DataError(
            f"{where(other)}: class {labels[other]!r} is a name where other lines give indices; use one "
            "kind (or give --classes to map names to indices)"
        )
    if numeric:
        top = max(int(text) for text in labels.values())
        return [str(i) for i in range(top + 1)], {name: int(text) for name, text in labels.items()}
    names = sorted(set(labels.values()))
    lookup = {c: i for i, c in enumerate(names)}
    return names, {name: lookup[text] for name, text in labels.items()}


# --- decoding ----------------------------------------------------------------------------------


def load_image(path: str, max_resolution: int | None) -> Image.Image:
    """Decode fully as RGB and shrink the shorter side to `max_resolution` as torchvision's Resize does."""
    with open(path, "rb") as f:
        image = Image.open(f)
        image = image.convert("RGB")  # decodes the whole file: a truncated one raises here
    if max_resolution and min(image.size) > max_resolution:
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        image = F.resize(image, max_resolution, interpolation=InterpolationMode.BILINEAR, antialias=True)
    return image


def check_image(task: tuple[str, int | None]) -> tuple[str | None, int]:
    """(None, stored raw bytes) for a usable image, (reason, 0) for an unusable one."""
    path, max_resolution = task
    try:
        image = load_image(path, max_resolution)
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        return f"{type(err).__name__}: {err}", 0
    width, height = image.size
    if max(width, height) > MAX_SIDE:
        return f"{width}x{height} px: FFCV stores sides up to {MAX_SIDE} px (use --max-resolution)", 0
    return None, width * height * 3


class _WriterDataset:
    """What FFCV's writer reads: (uint8 [H, W, 3], label) for each checked image."""

    def __init__(self, items, max_resolution, failure_log: str, seed: int = 0):
        self.items = items
        self.max_resolution = max_resolution
        self.failure_log = failure_log
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        path, label = self.items[index]
        try:
            pixels = np.ascontiguousarray(np.asarray(load_image(path, self.max_resolution), dtype=np.uint8))
        except Exception as err:  # the file changed since it was checked: name it for the parent process
            with open(self.failure_log, "a") as log:
                log.write(f"{path}\t{type(err).__name__}: {err}\n")
            raise
        # FFCV's 'proportion' mode draws from NumPy's global generator right after this call: seed it per
        # image so the same inputs always give the same choice of JPEG-compressed images.
        np.random.seed((self.seed + index) % 2**32)
        return pixels, label


def _writer_class():
    """FFCV's DatasetWriter whose wait loop also watches its worker processes (FFCV's waits forever)."""
    with keep_torch_threads():
        from ffcv.memory_allocator import MemoryAllocator
        from ffcv.writer import DatasetWriter

    class SafeDatasetWriter(DatasetWriter):
        progress = True

        def _write_common(self, num_samples, queue_content, work_fn, extra_worker_args):
            # ffcv 1.0.2's DatasetWriter._write_common, plus: a worker that exits with an error ends the
            # write with an exception, and our own progress bar.
            self.num_samples = num_samples
            self.prepare()
            workqueue = multiprocessing.Queue()
            for todo in queue_content:
                workqueue.put(todo)
            allocations_queue = multiprocessing.Queue()
            for _ in range(self.num_workers):
                workqueue.put(None)
            import ctypes

            done_number = multiprocessing.Value(ctypes.c_uint64, 0)
            allocator = MemoryAllocator(self.fname, self.data_region_start, self.page_size)
            worker_args = (
                workqueue,
                self.metadata_sm,
                self.metadata_type,
                self.fields,
                allocator,
                done_number,
                allocations_queue,
                *extra_worker_args,
            )
            processes = [
                multiprocessing.Process(target=work_fn, args=worker_args) for _ in range(self.num_workers)
            ]
            try:
                for p in processes:
                    p.start()
                with tqdm(total=num_samples, desc="writing", unit="img", disable=not self.progress) as bar:
                    previous = 0
                    while previous != num_samples:
                        value = done_number.value
                        bar.update(value - previous)
                        previous = value
                        failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                        if failed and done_number.value != num_samples:
                            raise _WorkerFailed(f"a writer process exited with status {failed[0]}")
                        sleep(0.05)
                allocation_list = []
                while len(allocation_list) < len(processes):  # each worker sends its allocations, then exits
                    try:
                        allocation_list.append(allocations_queue.get(timeout=0.5))
                    except queue.Empty:
                        failed = [p.exitcode for p in processes if p.exitcode not in (None, 0)]
                        if failed:
                            raise _WorkerFailed(f"a writer process exited with status {failed[0]}") from None
                allocation_list = [a for allocations in allocation_list for a in allocations]
                for p in processes:
                    p.join()
                self.finalize(allocation_list)
            finally:
                for p in processes:
                    if p.is_alive():
                        p.terminate()
                        p.join()
                self.metadata_sm.close()
                self.metadata_sm.unlink()

    return SafeDatasetWriter


class _WorkerFailed(RuntimeError):
    pass


def _fields(write_mode: str, jpeg_quality: int, compress_probability: float):
    with keep_torch_threads():
        from ffcv.fields import IntField, RGBImageField

    image = RGBImageField(
        write_mode=write_mode,
        max_resolution=None,  # resized beforehand (shorter side, as torchvision)
        jpeg_quality=jpeg_quality,
        compress_probability=compress_probability,
    )
    return {IMAGE_FIELD: image, LABEL_FIELD: IntField()}


def _page_size(image_bytes: list[int]) -> int:
    """A page holds at least the largest image twice over; 2 MiB for small sets, 8 MiB past 256 MiB."""
    largest = max(image_bytes, default=0)
    base = LARGE_PAGE if sum(image_bytes) > 256 * 2**20 else MIN_PAGE
    return max(base, 1 << math.ceil(math.log2(max(2 * largest, 1))))


# --- the command -------------------------------------------------------------------------------


def prepare_beton(
    images: str | os.PathLike,
    out: str | os.PathLike,
    max_resolution: int | None = 256,
    write_mode: str = "raw",
    jpeg_quality: int = 90,
    compress_probability: float = 0.5,
    workers: int | None = None,
    labels: str | os.PathLike | None = None,
    classes: str | os.PathLike | None = None,
    strict: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Write `out` (.beton) and its sidecars from an ImageFolder tree, or a flat folder with `labels`.

    Unreadable files are left out and listed in the report (`strict`: a DataError naming them,
    before anything is written). `max_resolution` caps the shorter side (None or 0: keep the size);
    `workers` defaults to every core.
    """
    started = time.monotonic()
    root, out = Path(images), Path(out)
    if write_mode not in WRITE_MODES:
        raise UsageError(f"--write-mode {write_mode!r}; valid modes: {', '.join(WRITE_MODES)}")
    if out.suffix != ".beton":
        raise UsageError(f"--out {out}: the file name must end in .beton (that is how --data recognizes it)")
    if not 1 <= jpeg_quality <= 100:
        raise UsageError(f"--jpeg-quality {jpeg_quality}: expected 1..100")
    if not 0 <= compress_probability <= 1:
        raise UsageError(f"--compress-probability {compress_probability}: expected 0..1")
    if max_resolution is not None and max_resolution < 0:
        raise UsageError(f"--max-resolution {max_resolution}: expected a size in pixels (0: keep the size)")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise UsageError(f"--workers {workers}: expected 1 or more")
    if not root.is_dir():
        raise DataError(f"--images {root}: not a directory")
    max_resolution = max_resolution or None
    class_list = read_class_list(classes) if classes is not None else None
    if labels is None:
        if class_list is not None:
            raise UsageError("--classes goes with --labels (an ImageFolder's classes are its folder names)")
        class_names, items = find_image_folder(root)
        unlabelled: list[str] = []
    else:
        class_names, items, unlabelled = read_labels(root, labels, class_list)
    if strict and unlabelled:
        raise DataError(f"--strict: {len(unlabelled)} file(s) have no line in --labels, e.g. {unlabelled[0]}")

    checked = _check_all(items, max_resolution, workers, progress)
    skipped = [(path, reason) for (path, _), (reason, _) in zip(items, checked, strict=True) if reason]
    if strict and skipped:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in skipped)
        raise DataError(f"--strict: {len(skipped)} unreadable file(s), nothing written:\n{listing}")
    good = [(item, size) for item, (reason, size) in zip(items, checked, strict=True) if not reason]
    if not good:
        raise DataError(f"--images {root}: no readable image among {len(items)} file(s)")
    kept = [item for item, _ in good]
    sizes = [size for _, size in good]
    page_size = _page_size(sizes)
    writer_workers = max(1, min(workers, math.ceil(sum(sizes) / page_size)))
    out.parent.mkdir(parents=True, exist_ok=True)
    options = {
        "max_resolution": max_resolution,
        "resize": "shorter side capped at max_resolution, torchvision Resize (PIL bilinear, antialias)",
        "write_mode": write_mode,
        "jpeg_quality": jpeg_quality,
        "compress_probability": compress_probability if write_mode == "proportion" else None,
        "page_size": page_size,
        "workers": workers,
    }
    source = {
        "images": str(root.absolute()),
        "layout": "imagefolder" if labels is None else "flat+labels",
        "labels": None if labels is None else str(Path(labels).absolute()),
        "classes_file": None if classes is None else str(Path(classes).absolute()),
        "found": len(items),
        "skipped": [{"path": path, "reason": reason} for path, reason in skipped],
        "unlabelled": len(unlabelled),
    }
    labels_written = np.array([label for _, label in kept], dtype=np.int64)
    counts = np.bincount(labels_written, minlength=len(class_names))
    sidecar = {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "classes": class_names,
        "images": len(kept),
        "images_per_class": counts.tolist(),
        "fields": {IMAGE_FIELD: "RGBImageField", LABEL_FIELD: "IntField"},
        "options": options,
        "source": source,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "repsub": _version(),
    }
    _write_all(out, kept, root, sidecar, max_resolution, write_mode, jpeg_quality, compress_probability,
               page_size, writer_workers, progress)  # fmt: skip
    return PrepareReport(
        out=str(out),
        classes=class_names,
        found=len(items),
        written=len(kept),
        skipped=skipped,
        unlabelled=unlabelled,
        empty_classes=[class_names[i] for i in np.flatnonzero(counts == 0)],
        bytes=out.stat().st_size,
        image_bytes=_image_bytes(out),
        seconds=time.monotonic() - started,
    )


def _image_bytes(out: Path) -> int:
    """Bytes the images take in the file, from FFCV's allocation table (a small file is mostly page)."""
    _, _, reader_module, _ = import_ffcv()
    return int(reader_module.Reader(str(out)).alloc_table["size"].sum())


def _check_all(items, max_resolution, workers, progress) -> list[tuple[str | None, int]]:
    """Decode every file once (in `workers` processes), in order."""
    tasks = [(path, max_resolution) for path, _ in items]
    bar = tqdm(total=len(tasks), desc="checking", unit="img", disable=not progress)
    try:
        if workers == 1 or len(tasks) < 64:
            results = []
            for task in tasks:
                results.append(check_image(task))
                bar.update()
            return results
        with multiprocessing.Pool(workers) as pool:
            results = []
            for result in pool.imap(check_image, tasks, chunksize=32):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()


def _write_all(out: Path, items, root: Path, sidecar: dict, max_resolution, write_mode, jpeg_quality,
               compress_probability, page_size, workers, progress) -> None:  # fmt: skip
    """The .beton, its sidecar and its files index, each staged under a hidden name, then moved."""
    token = uuid.uuid4().hex[:12]
    staged = {final: final.with_name(f".{final.name}.tmp-{token}") for final in
              (out, sidecar_path(out), files_index_path(out))}  # fmt: skip
    failure_log = out.with_name(f".{out.name}.failures-{token}")
    try:
        writer = _writer_class()(str(staged[out]), _fields(write_mode, jpeg_quality, compress_probability),
                                 page_size=page_size, num_workers=workers)  # fmt: skip
        writer.progress = progress
        try:
            with keep_torch_threads():
                writer.from_indexed_dataset(_WriterDataset(items, max_resolution, str(failure_log)))
        except _WorkerFailed as err:
            failures = failure_log.read_text().splitlines() if failure_log.exists() else []
            named = "; ".join(line.replace("\t", ": ") for line in failures) or "see the error printed above"
            raise DataError(f"writing {out} failed ({err}): {named}") from None
        staged[sidecar_path(out)].write_text(json.dumps(sidecar, indent=1))
        relative = [os.path.relpath(path, root) for path, _ in items]
        index = pa.table({
            "image_index": pa.array(np.arange(len(items)), pa.int64()),
            "path": pa.array(relative, pa.string()),
            "label": pa.array([label for _, label in items], pa.int32()),
        })  # fmt: skip
        pq.write_table(index, staged[files_index_path(out)])
        for final, temporary in staged.items():
            os.replace(temporary, final)
    finally:
        for temporary in [*staged.values(), failure_log]:
            temporary.unlink(missing_ok=True)


def _version() -> str:
    from repsub import __version__

    return __version__


# --- CLI ---------------------------------------------------------------------------------------


def add_prepare_parser(subparsers) -> argparse.ArgumentParser:
    """Add `repsub prepare` to the CLI's subparsers; `cmd_prepare` runs it."""
    p = subparsers.add_parser(
        "prepare",
        help="write an ImageFolder (or a flat folder with --labels) as an FFCV .beton",
        description="Write an ImageFolder tree, or a flat folder of images with a labels file, as an FFCV "
        ".beton for `repsub selectivity --data FILE.beton`.",
    )
    p.add_argument("--images", required=True, help="ImageFolder directory, or a flat folder with --labels")
    p.add_argument("--out", required=True, help="the .beton file to write (FILE.beton.json goes beside it)")
    p.add_argument(
        "--max-resolution",
        type=int,
        default=256,
        help="cap the shorter side at N px, as torchvision's Resize(N) (default 256, what S=224 needs: "
        "round(S*256/224)); 0 keeps the size",
    )
    p.add_argument(
        "--write-mode", default="raw", choices=WRITE_MODES, help="how images are stored (default raw)"
    )
    p.add_argument(
        "--jpeg-quality", type=int, default=90, help="JPEG quality for jpg/proportion (default 90)"
    )
    p.add_argument(
        "--compress-probability",
        type=float,
        default=0.5,
        help="proportion mode: share of images stored as JPEG, drawn per image from a seed (default 0.5)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--labels", default=None, help="flat layout: file of 'filename,class' lines")
    p.add_argument("--classes", default=None, help="with --labels: class names in index order, one a line")
    p.add_argument("--strict", action="store_true", help="an unreadable image is an error, not a skip")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def cmd_prepare(args) -> None:
    report = prepare_beton(
        images=args.images,
        out=args.out,
        max_resolution=args.max_resolution,
        write_mode=args.write_mode,
        jpeg_quality=args.jpeg_quality,
        compress_probability=args.compress_probability,
        workers=args.workers,
        labels=args.labels,
        classes=args.classes,
        strict=args.strict,
        progress=not args.no_progress,
    )
    for line in report.lines():
        print(line, file=sys.stderr if line.startswith("note:") else sys.stdout)
