"""What the machine can hold, checked before a command allocates anything or takes a run's lock: the device
asked for (it exists here), and the memory one batch needs at the image size asked for.

The memory estimate is a lower bound, so a run that fits is never refused: one batch's input plus the largest
single activation of the model at that size (float32), from a forward on the meta device (shapes only).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from repsub.errors import UsageError, shown
from repsub.models.probe import probe_forward

FLOAT_BYTES = 4


def available_devices() -> list[str]:
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += ["cuda", *(f"cuda:{i}" for i in range(torch.cuda.device_count()))]
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        devices.append("mps")
    return devices


def check_device(device, option: str = "--device") -> str:
    """A device string torch reads and this machine has (cpu, cuda, cuda:N within the GPUs seen, mps)."""
    valid = ", ".join(available_devices())
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"{option} {shown(device)} is not a device; available here: {valid}") from None
    if parsed.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (parsed.index or 0) >= count:
            raise UsageError(
                f"{option} {shown(device)}: this machine has no such GPU; available here: {valid}"
            )
    elif parsed.type == "mps" and "mps" not in valid:
        raise UsageError(f"{option} {shown(device)}: no MPS device here; available here: {valid}")
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise UsageError(f"{option} {shown(device)}: repsub runs on {valid}")
    return str(device)


def available_bytes(device) -> int:
    """Free memory of `device`: the GPU's free memory, or on CPU what the kernel can give this process
    (MemAvailable, within a cgroup's limit)."""
    parsed = torch.device(device)
    if parsed.type == "cuda":
        return int(torch.cuda.mem_get_info(parsed)[0])
    free = _meminfo_available()
    limit = _cgroup_room()
    return min(free, limit) if limit is not None else free


def _meminfo_available() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _cgroup_room() -> int | None:
    """memory.max - memory.current of this process's cgroup (v2), None without a limit."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        return None


def input_bytes(image_size: int, batch: int) -> int:
    return 3 * image_size * image_size * batch * FLOAT_BYTES


def batch_bytes(module: torch.nn.Module, image_size: int, batch: int, label: str) -> int:
    """At least what one batch takes at `image_size`: its input and the model's largest activation."""
    facts = probe_forward(module, image_size, label=label)
    largest = max((_numel(f.shape) for f in facts.modules.values() if f.shape), default=0)
    return input_bytes(image_size, batch) + largest * batch * FLOAT_BYTES


def check_memory(
    loaded, image_size: int, batch: int, device, option: str = "--image-size", probe=True
) -> None:
    """Refuse an image size (or batch) whose batch cannot fit in the device's free memory, with the estimate,
    what is free and a size that would fit. `probe=False`: the input alone, without a forward (done first: a
    model that cannot run on the meta device is probed with a real image)."""
    available = available_bytes(device)
    need = input_bytes(image_size, batch)
    if need <= available and probe:
        need = batch_bytes(loaded.module, image_size, batch, loaded.name)
    if need <= available:
        return
    # The need grows with the image's area at least: a size that fits is at most this (need is a lower bound).
    smaller = max(1, math.isqrt(image_size * image_size * available // need))
    raise UsageError(
        f"{option} {image_size} with a batch of {batch}: one batch needs at least {_gib(need)} ({loaded.name}, "
        f"float32), more than the {_gib(available)} free on {device}. Give a smaller image size (at most about "
        f"{smaller}) or batch size"
    )


def _numel(shape) -> int:
    count = 1
    for dim in shape:
        count *= int(dim)
    return count


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB" if size >= 2**28 else f"{size / 2**20:,.1f} MiB"
