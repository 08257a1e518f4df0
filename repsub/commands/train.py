"""A small training loop, so the demo, tests and the digits benchmark can make trained shallow CNN / MLP
instances on CPU in seconds."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import torch
from torch import nn
from torchvision import transforms
from tqdm.auto import tqdm

from repsub.capture.resources import check_memory
from repsub.data.imagefolder import eval_transform, image_folder, resize_size
from repsub.errors import RunError, UsageError
from repsub.models import check_image_size, get_spec, load_model
from repsub.validate import check_int, check_output_file, check_seed

# Training augmentations. Horizontal flips suit natural images, not orientation-bearing data such as
# digits or text, so they are a choice.
AUGMENTATIONS = {
    "crop_flip": "random crops (resize to S*256/224, crop S) and horizontal flips",
    "crop": "random crops only (for data whose orientation matters, e.g. digits)",
    "none": "the evaluation transform only",
}


def _train_transform(augment: str, size: int, mean, std) -> transforms.Compose:
    if augment == "none":
        return eval_transform(size, mean, std)
    steps = [transforms.Resize(resize_size(size), antialias=True), transforms.RandomCrop(size)]
    if augment == "crop_flip":
        steps.append(transforms.RandomHorizontalFlip())
    return transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(mean, std)])


def accuracy(net: nn.Module, dataset, batch_size: int = 256) -> float:
    """Top-1 accuracy of `net` (in eval mode) on a labelled dataset."""
    correct = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            correct += int((net(images).argmax(1) == labels).sum())
    return correct / len(dataset)


def train_classifier(
    model: str,
    data: str | os.PathLike,
    out: str | os.PathLike,
    image_size: int | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
    augment: str = "crop_flip",
    val_data: str | os.PathLike | None = None,
) -> dict:
    """Train a registered model from scratch on an ImageFolder; save its state_dict to `out`.

    `augment` is a key of AUGMENTATIONS. Returns the final training loss, the accuracy on the training
    images under the evaluation transform and, with `val_data` (an ImageFolder with the same classes),
    the held-out accuracy. Nothing is written unless training completes.
    """
    if augment not in AUGMENTATIONS:
        raise UsageError(f"unknown augmentation {augment!r}; valid: {', '.join(AUGMENTATIONS)}")
    for name, value in (("epochs", epochs), ("batch-size", batch_size)):
        if value < 1:
            raise UsageError(f"--{name} must be at least 1, got {value}")
    if not lr > 0:
        raise UsageError(f"--lr must be positive, got {lr}")
    check_seed(seed)
    check_int(workers, "workers", 0)
    if image_size is not None:
        check_int(image_size, "--image-size", 1)
    out = Path(out)
    check_output_file(out)  # refused now, not after the training
    spec = get_spec(model)
    size = image_size or spec.default_image_size
    train_set = image_folder(data, size, (0, 0, 0), (1, 1, 1))
    held_out = image_folder(val_data, size, (0, 0, 0), (1, 1, 1)) if val_data is not None else None
    if held_out is not None and held_out.classes != train_set.classes:
        raise UsageError(f"--val-data {val_data}: classes differ from the training data's")
    loaded = load_model(model, weights="random", seed=seed, num_classes=len(train_set.classes))
    check_memory(loaded, size, batch_size, "cpu", probe=False)  # the input alone first: no forward yet
    check_image_size(loaded, size)
    check_memory(loaded, size, batch_size, "cpu")
    net = loaded.module.train().requires_grad_(True)
    train_set.transform = _train_transform(augment, size, loaded.mean, loaded.std)
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        train_set, batch_size=batch_size, shuffle=True, generator=generator, num_workers=workers
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # flips and crops draw from the global generator
        for _ in tqdm(range(epochs), desc=f"train {model}", unit="epoch", disable=not progress):
            for images, labels in loader:
                optimizer.zero_grad()
                loss = loss_fn(net(images), labels)
                loss.backward()
                optimizer.step()
    net.eval()
    train_set.transform = eval_transform(size, loaded.mean, loaded.std)
    result = {
        "final_loss": loss.item(),
        "train_accuracy": accuracy(net, train_set),
        "classes": train_set.classes,
        "augment": augment,
    }
    if held_out is not None:
        held_out.transform = eval_transform(size, loaded.mean, loaded.std)
        result["val_accuracy"] = accuracy(net, held_out)
    _save_atomic(net.state_dict(), out)
    return result


def _save_atomic(state: dict, path: Path) -> None:
    staged = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        torch.save(state, staged)
        staged.replace(path)
    except (OSError, RuntimeError) as err:  # torch's writer raises RuntimeError for a failed write
        if "No space left" in str(err) or getattr(err, "errno", None) == errno.ENOSPC:
            raise RunError(
                f"--out {path}: the disk is full (no space left on device); nothing was written"
            ) from None
        raise
    finally:
        staged.unlink(missing_ok=True)
