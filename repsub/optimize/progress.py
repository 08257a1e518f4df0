"""One progress bar over all the units a command optimizes, across layers: whole units and an ETA.

The bar advances at every optimization step (so it moves even while one batch of 64 units takes
minutes), but shows whole units: the units of finished batches, out of the total.
"""

from __future__ import annotations

from tqdm.auto import tqdm

_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]"


class UnitProgress:
    def __init__(self, total_units: int, steps: int, enabled: bool = True):
        self.total_units = total_units
        self.done = 0
        # Counted in unit-steps: a batch of B units advances B per step.
        self.bar = tqdm(total=total_units * steps, bar_format=_FORMAT, disable=not enabled, smoothing=0.1)
        self._show()

    def describe(self, what: str) -> None:
        self.bar.set_description_str(what)

    def step(self, units_in_batch: int) -> None:
        self.bar.update(units_in_batch)

    def add_steps(self, unit_steps: int) -> None:
        """Unit-steps not foreseen in the total (the rescue of targets that did not respond)."""
        self.bar.total += unit_steps
        self.bar.refresh()

    def units_done(self, count: int) -> None:
        self.done += count
        self._show()

    def _show(self) -> None:
        self.bar.set_postfix_str(f"{self.done}/{self.total_units} units", refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> UnitProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
