"""Where and in what precision the heavy forwards run: device choice, bf16 autocast, channels-last.

`--precision auto` picks bf16 where the hardware runs it fast (a CUDA GPU with bf16 support; a CPU
with AVX-512 BF16 or AMX, read from /proc/cpuinfo) and fp32 elsewhere. Only the optimization steps
and the selectivity pass's forward run in it; what a run records (the final forward on the stored
8-bit image, the class sums) stays fp32/float64.
"""

from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
_FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def default_device() -> str:
    """CUDA when this process sees a GPU, else CPU (simulated GPU nodes have no CUDA)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(requested: str | None) -> str:
    return default_device() if requested in (None, "auto") else requested


@dataclass(frozen=True)
class Precision:
    """The precision a command asked for, the one it uses, and why (recorded in the manifest)."""

    requested: str
    used: str  # "fp32" or "bf16"
    reason: str

    def to_dict(self) -> dict:
        return {"requested": self.requested, "used": self.used, "reason": self.reason}

    def autocast(self, device: str | torch.device):
        """The context the optimization steps and the selectivity forward run in."""
        if self.used == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


@functools.cache
def cpu_bf16_flags() -> tuple[str, ...]:
    """The CPU's fast-bf16 instruction sets (Linux: /proc/cpuinfo flags); empty elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ()
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
    return tuple(flag for flag in _FAST_BF16_CPU_FLAGS if flag in flags)


def resolve_precision(requested: str, device: str | torch.device) -> Precision:
    if requested not in PRECISIONS:
        raise UsageError(f"unknown precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if requested != "auto":
        return Precision(requested, requested, "as asked")
    if kind == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision(
                "auto", "bf16", f"CUDA device {torch.cuda.get_device_name(device)} supports bf16"
            )
        return Precision("auto", "fp32", "this CUDA device has no fast bf16")
    if kind == "cpu" and cpu_bf16_flags():
        return Precision("auto", "bf16", f"CPU with {' and '.join(cpu_bf16_flags())}")
    return Precision("auto", "fp32", f"no fast bf16 on {kind}")


def has_convolutions(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def prepare_for_speed(module: nn.Module, device: str | torch.device) -> bool:
    """Put a conv model's weights in channels-last memory format (faster convolutions on CPU and GPU;
    the same values) and, on CUDA, allow TF32 for fp32 matmuls/convolutions and cuDNN autotuning.
    Idempotent; returns whether inputs should be channels-last too."""
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if not has_convolutions(module):
        return False
    module.to(memory_format=torch.channels_last)
    return True


def as_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
