"""Precision and speed choices: pure decisions for given hardware (CUDA logic tested without a GPU), and the
switches that keep the recorded forward exact."""

import json

import numpy as np
import pytest
import torch
from scipy import stats

import repsub
from repsub.capture.precision import (
    FAST_ENOUGH,
    SPEEDUP_VARIABLE,
    Hardware,
    autocast_ready,
    choose_precision,
    cpu_bf16_flags,
    cpu_bf16_speedup,
    exact_fp32,
    prepare_for_speed,
    resolve_precision,
    speed_settings,
)
from repsub.capture.selectivity_pass import accumulate_class_sums
from repsub.core.selectivity import selectivity_index
from repsub.data.sources import ImageFolderSource
from repsub.errors import UsageError
from repsub.models import IMAGENET_MEAN, IMAGENET_STD


@pytest.mark.parametrize(
    ("hw", "used"),
    [
        (Hardware("cuda", "NVIDIA A10G", cuda_capability=(8, 6)), "bf16"),
        (Hardware("cuda", "NVIDIA H100", cuda_capability=(9, 0)), "bf16"),
        (Hardware("cuda", "Tesla T4", cuda_capability=(7, 5)), "fp32"),  # bf16 only emulated: slower
        (Hardware("cuda", "Tesla V100", cuda_capability=(7, 0)), "fp32"),
        (Hardware("cpu", cpu_flags=("avx512_bf16",), cpu_bf16_speedup=2.5), "bf16"),  # e.g. AMD Zen 4
        (Hardware("cpu", cpu_flags=("avx512_bf16",), cpu_bf16_speedup=0.55), "fp32"),  # Xeon without AMX
        (Hardware("cpu", cpu_flags=("avx512_bf16", "amx_bf16"), cpu_bf16_speedup=None), "fp32"),
        (Hardware("cpu", cpu_flags=()), "fp32"),
        (Hardware("mps"), "fp32"),
    ],
)
def test_auto_picks_bf16_only_where_the_hardware_runs_it_fast(hw, used):
    chosen = choose_precision("auto", hw)
    assert (chosen.requested, chosen.used) == ("auto", used)
    assert chosen.reason  # the manifest and the command's message say why


def test_an_explicit_precision_is_used_as_asked_and_a_wrong_one_lists_the_valid():
    slow = Hardware("cuda", "Tesla T4", cuda_capability=(7, 5))
    assert choose_precision("bf16", slow).used == "bf16"
    assert choose_precision("fp32", Hardware("cuda", "H100", cuda_capability=(9, 0))).used == "fp32"
    with pytest.raises(UsageError, match="auto, fp32, bf16"):
        resolve_precision("fp16", "cpu")


def test_this_cpus_choice_follows_its_flags_and_measured_bf16_speed(monkeypatch):
    monkeypatch.delenv(SPEEDUP_VARIABLE, raising=False)  # the probe itself (the suite sets the variable)
    chosen = resolve_precision("auto", "cpu")
    fast = bool(cpu_bf16_flags()) and cpu_bf16_speedup() >= FAST_ENOUGH
    assert chosen.used == ("bf16" if fast else "fp32")


@pytest.mark.parametrize("given", ["1.0", "8"])
def test_a_given_speedup_replaces_the_probe_in_every_process(monkeypatch, given):
    monkeypatch.setenv(SPEEDUP_VARIABLE, given)
    fast = bool(cpu_bf16_flags()) and float(given) >= FAST_ENOUGH
    assert resolve_precision("auto", "cpu").used == ("bf16" if fast else "fp32")
    if cpu_bf16_flags():
        assert (
            f"given {float(given):.2f}x fp32 (REPSUB_CPU_BF16_SPEEDUP)"
            in resolve_precision("auto", "cpu").reason
        )


@pytest.mark.parametrize("given", ["fast", "0", "-2", "nan"])
def test_a_given_speedup_that_is_no_positive_number_is_refused(monkeypatch, given):
    monkeypatch.setenv(SPEEDUP_VARIABLE, given)
    if not cpu_bf16_flags():
        pytest.skip("this CPU has no fast-bf16 flags: the variable is never read")
    with pytest.raises(UsageError, match=SPEEDUP_VARIABLE):
        resolve_precision("auto", "cpu")


def test_speed_settings_per_device():
    cuda, cpu = speed_settings("cuda", convolutions=True), speed_settings("cpu", convolutions=True)
    assert cuda.channels_last and cuda.tf32 and cuda.cudnn_benchmark
    assert cpu.channels_last and not cpu.tf32 and not cpu.cudnn_benchmark
    assert not speed_settings("cuda", convolutions=False).channels_last  # an MLP keeps its layout


def test_channels_last_weights_keep_their_values_and_outputs():
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    x = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0))
    before = conv(x)
    weight = conv[0].weight.detach().clone()
    assert prepare_for_speed(conv, "cpu") is True
    assert conv[0].weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(conv[0].weight, weight, rtol=0, atol=0)
    torch.testing.assert_close(conv(x.contiguous(memory_format=torch.channels_last)), before)
    assert prepare_for_speed(torch.nn.Linear(4, 2), "cpu") is False


def test_the_recorded_forward_runs_without_tf32_or_autotuning_and_restores_the_switches():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark)
    try:
        matmul.fp32_precision, conv.fp32_precision = "tf32", "tf32"  # what prepare_for_speed sets on CUDA
        torch.backends.cudnn.benchmark = True
        with exact_fp32():
            assert (matmul.fp32_precision, conv.fp32_precision) == ("ieee", "ieee")
            assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    finally:
        matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def test_preparing_for_a_cuda_device_allows_tf32_and_autotuning():
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = (matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark)
    try:
        prepare_for_speed(torch.nn.Conv2d(3, 4, 3), "cuda")  # the module stays on the CPU: only the switches
        assert (matmul.fp32_precision, conv.fp32_precision) == ("tf32", "tf32")
        assert torch.backends.cudnn.benchmark
    finally:
        matmul.fp32_precision, conv.fp32_precision, torch.backends.cudnn.benchmark = saved


def test_bf16_weights_cast_once_give_exactly_what_autocast_gives():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(5),
    )
    x = torch.rand(4, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    model(x)  # materializes the lazy layer
    model.eval().requires_grad_(False)
    bf16 = choose_precision("bf16", Hardware("cpu"))
    ready = autocast_ready(model, bf16)
    assert ready[0].weight.dtype == ready[4].weight.dtype == torch.bfloat16
    assert ready[1].running_var.dtype == torch.float32  # as autocast leaves them
    assert model[0].weight.dtype == torch.float32  # the caller's model is untouched
    with torch.no_grad(), bf16.autocast("cpu"):
        torch.testing.assert_close(ready(x), model(x), rtol=0, atol=0)
    assert autocast_ready(model, choose_precision("fp32", Hardware("cpu"))) is model


def test_bf16_selectivity_agrees_with_fp32(vgg16_random, image_folder_dir):
    """The same images through the pass in both precisions: each layer's selectivity ranks its units alike."""
    batches = list(ImageFolderSource(image_folder_dir, 32, IMAGENET_MEAN, IMAGENET_STD).batches(8, workers=0))
    selectivity = {}
    for name in ("fp32", "bf16"):
        sums = accumulate_class_sums(
            vgg16_random, vgg16_random.layers, batches, 3, progress=False,
            precision=choose_precision(name, Hardware("cpu")),
        )  # fmt: skip
        selectivity[name] = {
            layer.name: selectivity_index(sums.class_means(layer.name)).selectivity
            for layer in vgg16_random.layers
        }
    for layer in vgg16_random.layers:
        a, b = selectivity["fp32"][layer.name], selectivity["bf16"][layer.name]
        assert (np.isnan(a) != np.isnan(b)).mean() <= 0.01  # dead in one, barely alive in the other: rare
        both = ~np.isnan(a) & ~np.isnan(b)
        # The logits' index divides by mu_max + mu_rest, which can cross zero (README): ranks move more there.
        least = 0.99 if layer.read == "relu" else 0.95
        assert stats.spearmanr(a[both], b[both]).statistic >= least, layer.name


def test_the_manifest_records_the_precision_asked_for_and_the_one_used(
    tmp_path, image_folder_dir, shallow_random
):
    run = tmp_path / "run"
    repsub.selectivity(model=shallow_random, data=image_folder_dir, image_size=16, out=run, workers=0,
                       progress=False, precision="bf16")  # fmt: skip
    repsub.visualize(model=shallow_random, method="am", layers=["conv2"], units="0-1", steps=2, image_size=16,
                     out=run, progress=False, device="cpu")  # fmt: skip
    commands = json.loads((run / "manifest.json").read_text())["commands"]
    assert commands["selectivity"]["config"]["precision"] == {
        "requested": "bf16",
        "used": "bf16",
        "reason": "as asked",
    }
    assert commands["visualize/am"]["config"]["precision"] == resolve_precision("auto", "cpu").to_dict()
