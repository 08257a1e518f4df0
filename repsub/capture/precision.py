"""Where and in what precision the heavy forwards run: device choice, bf16 autocast, channels-last, TF32.

`--precision auto` picks bf16 where the hardware runs it fast and fp32 elsewhere: a CUDA GPU with bf16
tensor cores (compute capability 8.0 or later), or a CPU with AVX-512 BF16 or AMX (/proc/cpuinfo) on which
a small bf16 convolution, timed at run time, is clearly faster than fp32. The flag alone is no promise: an
AMD EPYC with AVX-512 BF16 ran VGG's conv3 ~2.6x faster in bf16 (issue 10), an Intel Xeon exposing AVX-512
BF16 without AMX runs it at about half fp32's speed (docs/performance.md). Only the optimization steps and
the selectivity pass's forward run in it; what a run records (the final forward on the stored 8-bit image)
runs in exact fp32 (`exact_fp32`), class sums in float64.

The decisions are pure functions of a `Hardware` description (`choose_precision`, `speed_settings`), so
the CUDA logic is tested on machines without a GPU; `hardware(device)` reads the real one.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from repsub.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16")
FAST_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_TENSOR_CORES = (8, 0)  # Ampere: earlier GPUs emulate bf16 (slower than fp32)
FAST_ENOUGH = 1.25  # a CPU's measured bf16 speed-up worth bf16's rounding


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


SPEEDUP_VARIABLE = "REPSUB_CPU_BF16_SPEEDUP"


@dataclass(frozen=True)
class Hardware:
    """What the precision and speed choices depend on. `hardware(device)` reads it; tests build their own."""

    kind: str  # torch device type: "cpu", "cuda", ...
    name: str = ""  # the GPU's name, for messages
    cuda_capability: tuple[int, int] | None = None
    cpu_flags: tuple[str, ...] = ()  # the CPU's fast-bf16 instruction sets among FAST_BF16_CPU_FLAGS
    cpu_bf16_speedup: float | None = None  # fp32 time / bf16 time of a conv, measured (cpu_bf16_speedup())
    speedup_given: bool = False  # the speed-up came from REPSUB_CPU_BF16_SPEEDUP, not the probe


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
    return tuple(flag for flag in FAST_BF16_CPU_FLAGS if flag in flags)


@functools.cache
def cpu_bf16_speedup(repeats: int = 3) -> float:
    """How much faster this CPU runs a 3x3 convolution (forward and input gradient, channels-last, VGG's
    conv3 width at a small batch: the optimization's work) under bf16 autocast than in fp32: the ratio of
    the best process CPU times of interleaved runs (CPU time, not wall time: other processes on the machine
    do not count). About 0.1 s, once per process."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(128, 128, 3, 3, generator=generator).contiguous(memory_format=torch.channels_last)
    images = torch.randn(8, 128, 16, 16, generator=generator).contiguous(memory_format=torch.channels_last)

    def run(precision: str) -> float:
        started = time.process_time()
        x = images.detach().requires_grad_(True)
        with Precision(precision, precision, "probe").autocast("cpu"):
            out = nn.functional.conv2d(x, weight, padding=1)
        out.float().sum().backward()
        return time.process_time() - started

    best = {"fp32": float("inf"), "bf16": float("inf")}
    for round_ in range(repeats + 1):  # the first round builds oneDNN's kernels: not counted
        for precision in best:
            seconds = run(precision)
            if round_:
                best[precision] = min(best[precision], seconds)
    return best["fp32"] / max(best["bf16"], 1e-9)


def hardware(device: str | torch.device) -> Hardware:
    """The device's description; on a CPU with fast-bf16 flags, this times the probe (cpu_bf16_speedup)."""
    device = torch.device(device)
    if device.type == "cuda":
        return Hardware(
            "cuda",
            torch.cuda.get_device_name(device),
            cuda_capability=torch.cuda.get_device_capability(device),
        )
    if device.type != "cpu":
        return Hardware(device.type)
    flags = cpu_bf16_flags()
    given = flags and SPEEDUP_VARIABLE in os.environ
    speedup = measured_cpu_bf16_speedup() if flags else None
    return Hardware("cpu", cpu_flags=flags, cpu_bf16_speedup=speedup, speedup_given=bool(given))


def measured_cpu_bf16_speedup() -> float:
    """The probe's speed-up, or the one given by REPSUB_CPU_BF16_SPEEDUP (a number): the probe times a busy,
    shared machine, so two processes may choose differently; the variable makes every process of a job (a
    sweep's workers, a test suite) choose alike."""
    given = os.environ.get(SPEEDUP_VARIABLE)
    if given is None:
        return cpu_bf16_speedup()
    try:
        speedup = float(given)
    except ValueError:
        raise UsageError(f"{SPEEDUP_VARIABLE}={given!r}: expected a number (bf16 speed over fp32)") from None
    if not math.isfinite(speedup) or speedup <= 0:
        raise UsageError(f"{SPEEDUP_VARIABLE}={given!r}: expected a positive number")
    return speedup


def choose_precision(requested: str, hw: Hardware) -> Precision:
    """auto: bf16 on a GPU with bf16 tensor cores, or on a CPU with AVX-512 BF16/AMX where bf16 measured at
    least FAST_ENOUGH times faster than fp32; fp32 elsewhere."""
    if requested not in PRECISIONS:
        raise UsageError(f"unknown precision {requested!r}; valid: {', '.join(PRECISIONS)}")
    if requested != "auto":
        return Precision(requested, requested, "as asked")
    if hw.kind == "cuda":
        capability = ".".join(map(str, hw.cuda_capability or ()))
        if hw.cuda_capability is not None and hw.cuda_capability >= BF16_TENSOR_CORES:
            return Precision(
                "auto", "bf16", f"CUDA device {hw.name} (compute {capability}) has bf16 tensor cores"
            )
        return Precision(
            "auto", "fp32", f"CUDA device {hw.name} (compute {capability}) has no bf16 tensor cores"
        )
    if hw.kind == "cpu" and hw.cpu_flags:
        flags = " and ".join(hw.cpu_flags)
        speedup = hw.cpu_bf16_speedup
        if speedup is None:
            return Precision("auto", "fp32", f"CPU with {flags} but bf16 convolutions not measured here")
        how = (
            f"given {speedup:.2f}x fp32 ({SPEEDUP_VARIABLE})"
            if hw.speedup_given
            else f"measured {speedup:.2f}x fp32"
        )
        if speedup >= FAST_ENOUGH:
            return Precision("auto", "bf16", f"CPU with {flags}: bf16 convolutions {how}")
        return Precision("auto", "fp32", f"CPU with {flags} but bf16 convolutions {how} here")
    return Precision("auto", "fp32", f"no fast bf16 on {hw.kind}")


def resolve_precision(requested: str, device: str | torch.device) -> Precision:
    if requested != "auto":  # no need to look at the hardware (nor time the probe)
        return choose_precision(requested, Hardware(torch.device(device).type))
    return choose_precision(requested, hardware(device))


def has_convolutions(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


@dataclass(frozen=True)
class SpeedSettings:
    channels_last: bool  # conv weights and inputs in NHWC (faster convolutions on CPU/oneDNN and cuDNN)
    tf32: bool  # fp32 convolutions and matmuls of the steps and the selectivity forward may use TF32
    cudnn_benchmark: bool  # let cuDNN time its algorithms once per input shape (shapes repeat every step)


def speed_settings(kind: str, convolutions: bool) -> SpeedSettings:
    cuda = kind == "cuda"
    return SpeedSettings(channels_last=convolutions, tf32=cuda, cudnn_benchmark=cuda)


def prepare_for_speed(module: nn.Module, device: str | torch.device) -> bool:
    """Apply `speed_settings` for `device`: a conv model's weights in channels-last memory format (the same
    values), and on CUDA TF32 and cuDNN autotuning (process-wide switches; `exact_fp32` undoes them for
    the recorded forward). Idempotent; returns whether inputs should be channels-last too."""
    convolutions = has_convolutions(module)
    settings = speed_settings(torch.device(device).type, convolutions)
    if settings.tf32:  # the new API only: torch refuses to read a mix of it and the legacy allow_tf32
        torch.backends.cuda.matmul.fp32_precision = "tf32"
        torch.backends.cudnn.conv.fp32_precision = "tf32"
    if settings.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if settings.channels_last and not _is_channels_last(module):
        module.to(memory_format=torch.channels_last)
    return settings.channels_last


def _is_channels_last(module: nn.Module) -> bool:
    return all(
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    )


@contextlib.contextmanager
def exact_fp32():
    """IEEE fp32 and deterministic cuDNN algorithms (no TF32, no autotuning) inside: the recorded forward
    gives the same values on every run. Restores the previous switches; a no-op for CPU tensors."""
    saved = (
        torch.backends.cuda.matmul.fp32_precision,
        torch.backends.cudnn.conv.fp32_precision,
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
    )
    torch.backends.cuda.matmul.fp32_precision = "ieee"
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        yield
    finally:
        (
            torch.backends.cuda.matmul.fp32_precision,
            torch.backends.cudnn.conv.fp32_precision,
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        ) = saved


def autocast_ready(module: nn.Module, precision: Precision) -> nn.Module:
    """For bf16, a copy of `module` whose Conv2d and Linear parameters are bf16 already, made once: autocast
    would cast them again at every forward (VGG16's 138 M parameters: ~0.8 GB of memory traffic a batch).
    The values autocast would use (its casts round the same way), so results are unchanged; other parameters
    and buffers (normalization statistics) stay as they are, as under autocast. For fp32, `module` itself."""
    if precision.used != "bf16":
        return module
    memo = {
        id(p): nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False)
        for m in module.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
        for p in m.parameters(recurse=False)
    }
    return copy.deepcopy(module, memo)


def as_input(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return images.contiguous(memory_format=torch.channels_last) if channels_last else images
