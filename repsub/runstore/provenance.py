"""Which command made each row, with which settings, and the rule against mixing rows of different meaning.

Every row of the selectivity, units and importance tables names the manifest command that wrote it (its
`command` column: `selectivity`, `visualize/am`, `importance/zero`, `sweep`). The manifest keeps, under that
command, each invocation that still owns rows:

    "commands": {"visualize/am": {"config": <latest>, "completed_at": ..., "invocations": [
        {"seq": 3, "started_at": ..., "completed_at": ..., "status": "completed", "config": {...},
         "writes": {"units/am": {"layers": {"conv1": "0-15"}, "meaning": {"image_size": 32, ...}}},
         "allowed_mixed": [...]}]}}

An invocation is recorded when it starts (so rows of a killed command still resolve), and completed at the
end. A row resolves to the latest invocation of its command whose `writes` cover its layer and unit
(`row_settings`); invocations whose rows were all replaced are dropped.

**Mixing.** Within a table (for units: within a method) every row must mean the same thing: `MEANING` lists
the settings that define it. A command whose meaning differs from that of rows that would stay beside its
own is refused, saying what differs, unless it is given `allow_mixed` (recorded in its invocation).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from repsub.errors import RunError
from repsub.optimize.settings import OptimSettings, meaning_names
from repsub.runstore.tables import UNIT_BASIS, scope_name
from repsub.selection import ranges_text

# The settings that define what a table's rows mean (README, "Run integrity"). Other settings (steps, lr,
# precision, batch size, seed, device) may differ between commands: each row records its steps and seed,
# and each invocation its whole configuration. The units' are the optimization settings declared `meaning`.
MEANING = {
    "selectivity": ("data", "image_size"),  # data: location, image count, classes
    "exemplars": ("data", "image_size"),
    "interpretability": ("trials", "references", "temperature"),
    "units": meaning_names(OptimSettings),
    "importance": ("data", "image_size", "images"),  # images: the size of the class-balanced subset
}


@dataclass(frozen=True)
class Scope:
    """What one command writes into one table (and one key of it: a method, an ablation)."""

    table: str
    key: str | None  # the method (units) or ablation (importance); None for whole-layer tables
    layers: dict[str, str | None]  # layer -> unit ranges ("0-7,9"); None: the whole layer
    meaning: dict
    # The targets' basis: its rows are a scope of their own (`units@pca/am`), and its meaning holds the basis's
    # content hash (`basis_meaning`), so that two fits of one basis name are never mixed.
    basis: str = UNIT_BASIS
    # What differs by layer (a sweep's basis: each layer's fit has its own content hash), over `meaning`.
    layer_meanings: dict[str, dict] | None = None

    @property
    def name(self) -> str:
        return scope_name(self.table, self.key, self.basis)

    def record(self) -> dict:
        """What an invocation records of the scope (its `writes` entry)."""
        entry = {"layers": dict(self.layers), "meaning": self.meaning}
        if self.layer_meanings:
            entry["layer_meanings"] = self.layer_meanings
        return entry


def meaning_at(write: dict, layer: str) -> dict | None:
    """The meaning of a recorded scope's rows of `layer` (an invocation's `writes` entry, or Scope.record())."""
    meaning = write.get("meaning")
    extra = (write.get("layer_meanings") or {}).get(layer)
    return meaning if meaning is None or not extra else {**meaning, **extra}


def _expand(text: str) -> set[int]:
    units: set[int] = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        units.update(range(int(first), int(last or first) + 1))
    return units


def data_meaning(source) -> dict:
    """A dataset as mixing compares it: where it is, how many images, which classes (a digest of their names)."""
    described = source.describe()
    staged = described.get("staged_from") or {}
    location = staged.get("uri") or described.get("path") or getattr(source, "path", "?")
    if "://" not in str(location):
        import os

        location = os.path.abspath(str(location))
    classes = [str(c) for c in source.classes]
    return {
        "location": str(location),
        "images": len(source),
        "classes": len(classes),
        "classes_sha256": hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16],
    }


def selectivity_meaning(source, image_size: int) -> dict:
    return {"data": data_meaning(source), "image_size": int(image_size)}


def importance_meaning(source, image_size: int, images: int) -> dict:
    """`images`: how many images the class-balanced subset holds."""
    return {"data": data_meaning(source), "image_size": int(image_size), "images": int(images)}


def basis_meaning(meaning: dict, readout) -> dict:
    """A scope's meaning for targets of `readout` (None: units, the meaning as it is): the basis's content hash
    added, so that rows of another fit of the same basis name are told apart."""
    if readout is None or readout.name == UNIT_BASIS:
        return meaning
    return {**meaning, "basis": {"kind": getattr(readout, "kind", None), "K": int(readout.K),
                                 "content_hash": readout.content_hash()}}  # fmt: skip


def basis_layer_meanings(readouts: dict) -> dict[str, dict] | None:
    """A scope's per-layer meaning for the targets of `readouts` ({layer: readout}; None or a unit readout: the
    units, nothing added): each layer's fit, as `basis_meaning` records it. A basis fitted to several layers has
    a fit (a content hash) per layer, so its rows of one layer never conflict with another layer's."""
    found = {
        layer: {"basis": basis_meaning({}, readout)["basis"]}
        for layer, readout in readouts.items()
        if readout is not None and readout.name != UNIT_BASIS
    }
    return found or None


def units_meaning(settings: OptimSettings) -> dict:
    """The settings (an OptimSettings, or a subclass declaring more) that define what its units rows mean."""
    values = settings.to_dict()
    return {key: values[key] for key in meaning_names(type(settings))}


# ------------------------------------------------------------------ ownership of rows


def _invocations(manifest: dict) -> list[tuple[str, dict]]:
    """(command, invocation) of every recorded invocation, oldest first."""
    found = [
        (command, inv)
        for command, entry in ((manifest or {}).get("commands") or {}).items()
        if isinstance(entry, dict)
        for inv in entry.get("invocations") or []
        if isinstance(inv, dict)
    ]
    return sorted(found, key=lambda item: item[1].get("seq", 0))


def owners(manifest: dict, scope: str) -> dict[str, dict]:
    """For each layer of `scope` ("units/am"...): {"whole": (command, inv) or None, "units": {unit: (command,
    inv)}}: the invocation whose rows are there now, by the rule that a later write replaces earlier rows."""
    layers: dict[str, dict] = {}
    for command, inv in _invocations(manifest):
        written = ((inv.get("writes") or {}).get(scope) or {}).get("layers") or {}
        for layer, units in written.items():
            owned = layers.setdefault(layer, {"whole": None, "units": {}})
            if units is None:
                owned.update(whole=(command, inv), units={})
            else:
                owned["units"].update(dict.fromkeys(_expand(units), (command, inv)))
    return layers


def _remaining(owned: dict, new_units: str | None) -> dict[int, tuple] | None:
    """Owners of a layer's rows that a write of `new_units` leaves in place: {unit or -1 (the rest): owner}."""
    if new_units is None:
        return {}
    replaced = _expand(new_units)
    left = {u: o for u, o in owned["units"].items() if u not in replaced}
    if owned["whole"] is not None:
        left[-1] = owned["whole"]  # units of the whole-layer write not named in any later write
    return left


def mixing_conflicts(manifest: dict, scopes: list[Scope]) -> list[str]:
    """What differs, in words, between each scope's meaning and that of rows that would stay beside it."""
    conflicts = []
    for scope in scopes:
        owned = owners(manifest, scope.name)
        differing: dict[str, dict] = {}  # describe(old meaning) -> {layer: units}
        for layer, state in owned.items():
            left = _remaining(state, scope.layers.get(layer, "")) if layer in scope.layers else _all(state)
            for unit, (command, inv) in left.items():
                old = meaning_at((inv.get("writes") or {}).get(scope.name, {}), layer)
                new = meaning_at(scope.record(), layer)
                if old is not None and layer not in scope.layers and scope.layer_meanings:
                    # A layer this scope leaves alone: what differs by layer (each layer's fit) is no conflict.
                    per_layer = {key for extra in scope.layer_meanings.values() for key in extra}
                    old = {k: v for k, v in old.items() if k not in per_layer}
                    new = {k: v for k, v in new.items() if k not in per_layer}
                if old is None or old == new:
                    continue
                text = _difference(old, new, command)
                differing.setdefault(text, {}).setdefault(layer, set()).add(unit)
        for text, layers in differing.items():
            where = ", ".join(
                layer if -1 in units or not units else f"{layer} (units {ranges_text(units)})"
                for layer, units in sorted(layers.items())
            )
            conflicts.append(f"{_table_words(scope)} of {where} {text}")
    return conflicts


def _all(state: dict) -> dict[int, tuple]:
    left = dict(state["units"])
    if state["whole"] is not None:
        left[-1] = state["whole"]
    return left


def _table_words(scope: Scope) -> str:
    of = "" if scope.basis == UNIT_BASIS else f" of basis {scope.basis}"
    if scope.table == "units":
        return f"the {scope.key} rows{of} of the units table"
    if scope.table == "importance":
        return f"the importance rows{of} ({scope.key} ablation)"
    return f"the {scope.table} rows{of}"


def _difference(old: dict, new: dict, command: str) -> str:
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "were made by {} with {}; this command's: {}".format(
        command,
        ", ".join(f"{k} {_show(k, old.get(k))}" for k in keys),
        ", ".join(f"{k} {_show(k, new.get(k))}" for k in keys),
    )


def _show(key: str, value) -> str:
    if key == "data" and isinstance(value, dict):
        return f"{value.get('location')} ({value.get('images')} images, {value.get('classes')} classes)"
    return repr(value)


def refuse_mixing(uri: str, conflicts: list[str]) -> RunError:
    listed = "\n  ".join(conflicts)
    return RunError(
        f"{uri}: this command would mix rows of different meaning within a table:\n  {listed}\n"
        "Use the same settings, write every such layer (and unit) again, write to another output location, "
        "or pass --allow-mixed (allow_mixed: true in a sweep config) to keep both; the manifest records it"
    )


# ------------------------------------------------------------------ recording


def start_invocation(
    manifest: dict, command: str, config: dict, scopes: list[Scope], allowed_mixed: list[str], now: str
) -> dict:
    """Record that `command` starts writing `scopes` (in place); returns its invocation. Invocations that own
    no rows any more are dropped."""
    seq = int(manifest.get("next_seq") or 1)
    manifest["next_seq"] = seq + 1
    inv = {
        "seq": seq,
        "started_at": now,
        "status": "running",
        "config": config,
        "writes": {s.name: s.record() for s in scopes},
    }
    if allowed_mixed:
        inv["allowed_mixed"] = allowed_mixed
    entry = manifest.setdefault("commands", {}).setdefault(command, {})
    entry.setdefault("invocations", []).append(inv)
    entry.update(config=config, started_at=now)
    _prune(manifest)
    return inv


def finish_invocation(manifest: dict, command: str, seq: int, status: str, now: str, config: dict | None = None,
                      written: dict[str, set[str]] | None = None) -> None:  # fmt: skip
    """Mark invocation `seq` of `command` completed or failed (in place). A failed one keeps only the layers it
    wrote (`written`: scope -> layers); one that wrote nothing is dropped."""
    entry = (manifest.get("commands") or {}).get(command) or {}
    invocations = entry.get("invocations") or []
    inv = next((i for i in invocations if i.get("seq") == seq), None)
    if inv is None:
        return
    inv["status"] = status
    inv[f"{status}_at"] = now
    if config is not None:
        inv["config"] = entry["config"] = config
    if status == "completed":
        entry["completed_at"] = now
    elif written is not None:
        for name, scope in list(inv["writes"].items()):
            kept = {layer: u for layer, u in scope["layers"].items() if layer in written.get(name, set())}
            if kept:
                scope["layers"] = kept
            else:
                del inv["writes"][name]
        if not inv["writes"]:
            invocations.remove(inv)
    _prune(manifest)


def _prune(manifest: dict) -> None:
    """Drop invocations that own no row in any scope (every row they wrote was replaced since)."""
    scopes = {name for _, inv in _invocations(manifest) for name in inv.get("writes") or {}}
    alive = set()
    for name in scopes:
        for state in owners(manifest, name).values():
            for _command, inv in _all(state).values():
                alive.add(inv["seq"])
    alive.add(int(manifest.get("next_seq") or 1) - 1)  # the newest (a command writing no rows yet)
    for entry in (manifest.get("commands") or {}).values():
        if isinstance(entry, dict) and entry.get("invocations"):
            entry["invocations"] = [i for i in entry["invocations"] if i.get("seq") in alive]


def forget_basis_rows(manifest: dict, layer: str, basis: str) -> None:
    """Record (in place) that no row of `basis` is left at `layer` (a refit retired them): every invocation's
    writes of that basis's scopes lose the layer, and invocations left without rows are dropped."""
    for _command, inv in _invocations(manifest):
        writes = inv.get("writes") or {}
        for name in [name for name in writes if _scope_basis(name) == basis]:
            writes[name].get("layers", {}).pop(layer, None)
            if not writes[name].get("layers"):
                del writes[name]
    _prune(manifest)


def _scope_basis(name: str) -> str:
    """The basis of a scope name (scope_name: `units@pca/am` -> pca, `selectivity` -> unit)."""
    table = name.split("/", 1)[0]
    return table.split("@", 1)[1] if "@" in table else UNIT_BASIS


# ------------------------------------------------------------------ reading


def row_settings(manifest: dict, table: str, layer: str, unit: int, command: str, key: str | None = None,
                 basis: str | None = None):  # fmt: skip
    """The configuration of the invocation that made a row (table, layer, unit, its `command` column, its
    method or ablation for units and importance rows, and its basis: null or "unit" for units), or None when
    the manifest does not say (rows written before invocations were recorded)."""
    scope = scope_name(table, key, basis or UNIT_BASIS)
    state = owners(manifest, scope).get(layer)
    if state is None:
        return None
    owner = state["units"].get(int(unit)) or state["whole"]
    if owner is None or owner[0] != command:
        return None
    return owner[1].get("config")
