"""Which targets a command measures: the units (the basis "unit"), or the directions of a basis.

From Python a basis is any object of the readout protocol (repsub.core.readout.Readout: a fitted basis, a
`LinearReadout` of your own vectors); by name (`--basis NAME`) it is looked up in the run (`lookup_basis`,
the one place that knows where a run keeps its bases).
"""

from __future__ import annotations

from repsub.commands.basis import load_basis
from repsub.core.readout import UNIT, Readout, check_readout, is_units
from repsub.errors import UsageError
from repsub.models import UnitLayer
from repsub.runstore.bases import recorded_bases
from repsub.runstore.location import RunLocation


def stored_bases(out) -> dict[str, list[str]]:
    """The bases a run holds (`repsub basis fit`): {name: the layers it is fitted to}."""
    if out is None:
        return {}
    manifest = RunLocation(out).read_manifest() or {}
    found: dict[str, list[str]] = {}
    for key in recorded_bases(manifest):
        layer, _, name = key.rpartition("/")
        found.setdefault(name, []).append(layer)
    return found


def lookup_basis(out, name: str, layers: list[str] | None = None):
    """The basis `name` of the run `out`: None for "unit" (the units' own path), else the stored basis
    (checked against the run's manifest and model); an unknown name is refused, listing the run's bases, and a
    name fitted to several layers needs one of them among `layers`."""
    if name == UNIT:
        return None
    stored = stored_bases(out)
    if name not in stored:
        names = ", ".join([UNIT, *sorted(stored)])
        raise UsageError(
            f"no basis {name!r} in {out if out is not None else 'this run'}; this run has: {names}"
        )
    fitted = [layer for layer in stored[name] if not layers or layer in layers]
    if len(fitted) != 1:
        raise UsageError(
            f"basis {name!r} is fitted to layers {', '.join(sorted(stored[name]))}: give one of them (--layers)"
        )
    return load_basis(out, fitted[0], name)


def resolve_basis(basis, out, layers: list[str] | None = None):
    """`basis` as a command takes it (None, a name, or a readout) -> a readout, or None for the units."""
    if basis is None:
        return None
    if isinstance(basis, str):
        if "," in basis:
            raise UsageError(
                f"--basis {basis}: one basis here (repsub selectivity measures several together: --basis unit,pca)"
            )
        return lookup_basis(out, basis, layers)
    if not isinstance(basis, Readout):
        raise UsageError(
            f"basis {basis!r}: a basis name or an object with name, layer, K, C, encode, decode and content_hash"
        )
    return None if is_units(basis) else basis


def basis_layer(readout, layers: list[UnitLayer], given) -> list[UnitLayer]:
    """The layer a basis is measured at: the one it was fitted to, else the one layer given."""
    fitted = getattr(readout, "layer", None)
    if fitted is not None:
        matching = [layer for layer in layers if layer.name == fitted]
        if not matching:
            raise UsageError(
                f"basis {readout.name!r} was fitted to layer {fitted}; this command's layers: "
                f"{', '.join(layer.name for layer in layers)}"
            )
        chosen = matching
    elif given is not None and len(layers) == 1:
        chosen = layers
    else:
        raise UsageError(f"basis {readout.name!r} names no layer: give one layer (--layers)")
    check_readout(readout, chosen[0].name, chosen[0].n_units)
    return chosen


def basis_record(readout) -> dict | None:
    """What a command's configuration records of its basis (None for units)."""
    if readout is None:
        return None
    return {"name": readout.name, "kind": getattr(readout, "kind", None), "K": int(readout.K),
            "content_hash": readout.content_hash()}  # fmt: skip


def basis_names(basis) -> list:
    """`basis` as a command takes it for several bases: a comma list of names ("unit,pca,sae"), a list of
    names and readouts, or one of them -> the list (None: the units alone)."""
    if basis is None:
        return [UNIT]
    if isinstance(basis, str):
        names = [name.strip() for name in basis.split(",") if name.strip()]
        if not names:
            raise UsageError(f"--basis {basis!r}: give a basis name, or several separated by commas")
        return names
    return list(basis) if isinstance(basis, list | tuple) else [basis]


def resolve_bases(basis, out, layers: list[str] | None = None) -> tuple[bool, list]:
    """(whether the units are among them, the readouts of the other bases) of `basis` (`basis_names`); a
    basis named twice is refused."""
    readouts, units = [], False
    for item in basis_names(basis):
        readout = resolve_basis(item, out, layers)
        if readout is None:
            units = True
            continue
        if any(other.name == readout.name for other in readouts):
            raise UsageError(f"basis {readout.name!r} is given twice")
        readouts.append(readout)
    return units, readouts
