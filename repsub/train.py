"""A small training loop, so the demo and tests can make trained shallow CNN / MLP instances on CPU in seconds."""

from __future__ import annotations

import os

import torch
from torch import nn
from torchvision import transforms
from tqdm.auto import tqdm

from .data.imagefolder import eval_transform, image_folder, resize_size
from .models import get_spec, load_model


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
) -> dict:
    """Train a registered model from scratch on an ImageFolder; save its state_dict to `out`.

    Training uses random crops and flips around the evaluation transform. Returns the final training
    loss and accuracy on the evaluation transform.
    """
    spec = get_spec(model)
    size = image_size or spec.default_image_size
    train_set = image_folder(data, size, (0, 0, 0), (1, 1, 1))
    loaded = load_model(model, weights="random", seed=seed, num_classes=len(train_set.classes))
    net = loaded.module.train().requires_grad_(True)
    train_set.transform = transforms.Compose([
        transforms.Resize(resize_size(size), antialias=True),
        transforms.RandomCrop(size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(loaded.mean, loaded.std),
    ])  # fmt: skip
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
    correct = 0
    with torch.no_grad():
        for images, labels in torch.utils.data.DataLoader(train_set, batch_size=256):
            correct += int((net(images).argmax(1) == labels).sum())
    torch.save(net.state_dict(), out)
    return {
        "final_loss": loss.item(),
        "train_accuracy": correct / len(train_set),
        "classes": train_set.classes,
    }
