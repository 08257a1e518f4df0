"""`repsub demo`: the whole method end to end on generated data, on CPU, with no network.

Generates (once) an ImageFolder with class-dependent structure, trains the paper's shallow CNN on
it briefly, measures selectivity on held-out images, optimizes AM and IAM images for every unit
of every layer, and returns the per-layer summary.
"""

from __future__ import annotations

from pathlib import Path

from repsub.analysis.run import open_run
from repsub.analysis.summary import run_summary
from repsub.commands.selectivity import selectivity
from repsub.commands.train import train_classifier
from repsub.commands.visualize import visualize
from repsub.data.synthetic import cached_demo_data
from repsub.models import load_model
from repsub.optimize import OptimSettings

DEMO_IMAGE_SIZE = 32


def run_demo(
    out: str = "runs/demo",
    cache: str | None = None,  # default: $REPSUB_CACHE, else ~/.cache/repsub
    steps: int = 48,
    epochs: int = 6,
    progress: bool = True,
) -> list[dict]:
    train_dir, val_dir = cached_demo_data(cache)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = out_dir / "shallow_cnn.pt"
    trained = train_classifier(
        "shallow_cnn", train_dir, weights, image_size=DEMO_IMAGE_SIZE, epochs=epochs, progress=progress
    )
    print(f"trained shallow_cnn on {train_dir}: train accuracy {trained['train_accuracy']:.2f}")
    model = load_model("shallow_cnn", weights=str(weights), device="cpu")
    selectivity(
        model=model,
        data=val_dir,
        out=out_dir,
        image_size=DEMO_IMAGE_SIZE,
        batch_size=100,
        device="cpu",
        workers=0,
        progress=progress,
    )
    settings = OptimSettings(steps=steps, image_size=DEMO_IMAGE_SIZE, batch_size=128)
    for method in ("am", "iam"):
        visualize(model=model, method=method, out=out_dir, settings=settings, device="cpu", progress=progress)
    return run_summary(open_run(out_dir))
