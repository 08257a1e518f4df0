"""The prologue every command that writes a run shares, done once: `selectivity`, `visualize`, `importance`
and the sweep's driver.

    ctx = CommandContext.open("units", out=out, model=model, weights=weights, seed=seed, device=device,
                              layers=layers, image_size=image_size, mean=mean, std=std)
    size = ctx.image_size(image_size)          # one priority for every command (below)
    ctx.record.say()                            # what was taken from the run, said once
    with ctx.writing("visualize/am", config, scopes, reduce=reduce) as output:
        output.write("units", layer.name, rows)     # nothing is written without `out`
        output.complete(config)

Reading the run's record, re-creating or checking the model, choosing the layers, the image size and the
spatial reduction, opening the writer, the write session (lock, checks, provenance) and the manifest's
catalog: here, and nowhere else.

**Image size.** A command takes the size given; else, into an existing run of the same model, the size of
the run's own rows of the command's table (so that what it adds mixes with them), then of the run's other
tables (selectivity, units, importance, in that order); else the model's own (`RunRecord.image_size`).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

from repsub.capture.precision import default_device
from repsub.capture.reader import REDUCTIONS
from repsub.capture.resources import check_device, check_memory
from repsub.commands.extend import RunRecord, layers_for_run, load_for_run
from repsub.errors import UsageError
from repsub.models import LoadedModel, UnitLayer, check_image_size
from repsub.runstore.provenance import Scope
from repsub.runstore.session import WriteSession
from repsub.runstore.writer import RunWriter
from repsub.validate import check_int, check_output_dir, check_seed

DEFAULT_REDUCE = "mean"


@dataclass
class CommandContext:
    """What a command works with: the run's record, the model, the chosen layers, the device and the writer
    (None without an output location). `table`: the table the command writes (selectivity, units,
    importance), which decides the image size it takes from the run."""

    table: str
    record: RunRecord
    model: LoadedModel | None  # None: a command on the run's stored tables alone (of_run)
    seed: int
    reuse: bool  # the model is the run's: its layers and settings are taken when not given
    layers: list[UnitLayer]
    device: str
    writer: RunWriter | None

    @classmethod
    def open(cls, table: str, *, out, model, weights, seed, device, layers, image_size, mean, std):
        """Read the run at `out` (if any), load the model (given, else the run's, weights verified by hash)
        and choose the layers (given; `all`; else the run's)."""
        device = check_device(device) if device not in (None, "auto") else default_device()
        if (
            out is not None
        ):  # a file, a symlink loop, /proc: refused before the model loads or a lock is taken
            check_output_dir(out)
        record = RunRecord.read(out)
        loaded, seed, reuse = load_for_run(
            record, model, weights, seed, device, image_size, mean, std, record.image_size(table)
        )
        names = layers_for_run(record, layers, reuse, [layer.name for layer in loaded.layers])
        writer = RunWriter(out) if out is not None else None
        return cls(table, record, loaded, seed, reuse, loaded.select(names), device, writer)

    @classmethod
    def of_run(cls, table: str, out):
        """A context for a command that derives rows from the run's stored tables alone (interpretability): the
        run's own model identity and catalog, and no model loaded (a VGG16 would be read and hashed for
        nothing)."""
        record = RunRecord.read(out)
        if record.manifest is None:
            raise UsageError(f"{out} holds no run (no manifest.json)")
        return cls(table, record, None, record.seed() or 0, True, [], "cpu", RunWriter(out))

    @classmethod
    def for_model(
        cls, table: str, model: LoadedModel, layers: list[str], out, seed: int, device: str = "cpu"
    ):
        """A context for a model already chosen (the sweep's, from its config): nothing taken from the run."""
        return cls(
            table, RunRecord(None, None), model, seed, False, model.select(layers), device, RunWriter(out)
        )

    def image_size(self, given: int | None, option: str = "--image-size", batch: int | None = None) -> int:
        """The image size of the command (module docstring), checked against the model and, with `batch`,
        against the device's free memory (before anything is allocated or locked)."""
        size = given
        if size is None and self.reuse and (size := self.record.image_size(self.table)):
            self.record.taken.append(f"image size {size}")
        size = size or self.model.image_size
        if batch is not None:  # the input alone first: the shape probe below must not build a huge image
            check_memory(self.model, size, batch, self.device, option, probe=False)
        check_image_size(self.model, size, option)
        if batch is not None:
            self.check_memory(size, batch, option)
        return size

    def check_memory(self, size: int, batch: int, option: str = "--image-size") -> None:
        """One batch at `size` fits in the device's free memory (repsub.capture.resources)."""
        check_memory(self.model, size, batch, self.device, option)

    def reduce(self, given: str | None) -> str:
        """The spatial reduction of conv units: the one asked for, else the run's, else mean. Selectivity, the
        AM/IAM objectives and RS of one run share it (the write session refuses a mismatch)."""
        reduce = given
        if reduce is None:
            reduce = (self.writer.run_invariant("reduce") if self.writer else None) or DEFAULT_REDUCE
        if reduce not in REDUCTIONS:
            raise UsageError(f"unknown reduction {reduce!r}; valid reductions: {', '.join(REDUCTIONS)}")
        return reduce

    def catalog(self) -> list[dict] | None:
        """The model's catalog for the manifest, with the layers earlier commands of the run read by name (None
        without a model: the run's stays)."""
        if self.model is None:
            return None
        manifest = (self.writer.read_manifest() if self.writer else None) or {}
        earlier = manifest.get("catalog") or []
        return self.model.catalog_records(also=[record["name"] for record in earlier])

    def identity(self) -> dict:
        """The model's identity, as the run records it (the run's own without a model)."""
        return self.record.model if self.model is None else self.model.identity()

    @contextlib.contextmanager
    def writing(self, command: str, config: dict, scopes: list[Scope], *, reduce: str | None = None,
                allow_mixed: bool = False, force_unlock: bool = False, keep_on_failure=None):  # fmt: skip
        """The command's output: the run's write session (checks, lock, claim, provenance: before any row),
        or, without an output location, an output that writes nothing."""
        if self.writer is None:
            yield CommandOutput(self, None)
            return
        session = WriteSession(
            self.writer, command, self.identity(), config, scopes,
            invariants={"reduce": reduce} if reduce else None, catalog=self.catalog(),
            allow_mixed=allow_mixed, force_unlock=force_unlock, keep_on_failure=keep_on_failure,
        )  # fmt: skip
        with session:
            yield CommandOutput(self, session)


class CommandOutput:
    """Where a command's rows go: the run (inside its write session), or nowhere."""

    def __init__(self, context: CommandContext, session: WriteSession | None):
        self.context, self.session = context, session

    @property
    def writer(self) -> RunWriter | None:
        return self.context.writer if self.session else None

    def write(self, table: str, layer: str, rows) -> None:
        """One layer's rows, landed as soon as they are done."""
        if self.session:
            self.context.writer.write_table(table, layer, rows)

    def complete(self, config: dict, update=None) -> None:
        """Record the command as completed (the manifest last), with its final configuration; `update(manifest)`
        adds what the command records beside it."""
        if self.session:
            self.session.complete(config, self.context.catalog(), update)


def check_common(image_size=None, batch_size=None, workers=None, seed=None, images=None) -> None:
    """The numeric options every command shares, refused with their value before any work."""
    checks = (("--image-size", image_size, 1), ("--batch-size", batch_size, 1), ("--workers", workers, 0),
              ("--images", images, 1))  # fmt: skip
    for option, value, minimum in checks:
        if value is not None:
            check_int(value, option, minimum)
    if seed is not None:
        check_seed(seed)


def say_precision(precision, what: str) -> None:
    if precision.requested == "auto":
        print(f"{what}: precision {precision.used} ({precision.reason})", file=sys.stderr)
