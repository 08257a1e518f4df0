"""Reading a run's table with one rule for duplicate rows (every reader of the analysis goes through it).

A key (a (layer, unit) of the selectivity table, a (layer, method, unit) of the units table, a (layer,
ablation, unit) of the importance table) can have more than one row when files overlap (a rewrite
interrupted between writing its file and removing the unit's old rows, or files copied in by hand). The
row of the most recently modified file is kept (then the last path in sort order), as a rerun replaces a
unit's result, and a note says how many rows were left out.

A table with a `basis` column (selectivity, units, importance) is read one basis at a time: the unit basis's
rows by default, which in runs of schema versions 1 and 2 are all rows (their `basis` reads null).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from repsub.errors import RunError

FILENAME = "__filename"  # pyarrow's per-row source file column


UNIT_BASIS = "unit"


def basis_filter(basis: str) -> ds.Expression:
    """The rows of one basis; for the unit basis also the rows of runs written before bases (null)."""
    field = ds.field("basis")
    return field.is_null() | (field == basis) if basis == UNIT_BASIS else field == basis


def read_rows(
    run, table: str, columns: list[str], keys: list[str], where: ds.Expression | None = None,
    basis: str = UNIT_BASIS,
) -> tuple[pa.Table | None, list[str]]:  # fmt: skip
    """`columns` of a table (None if the run has no such table), one row per `keys`, with notes on the
    duplicate rows left out. The source file of each row is kept in the FILENAME column. A table with a
    `basis` column gives the rows of `basis` only (module doc)."""
    dataset = getattr(run, table)
    if dataset is None:
        return None, []
    if "basis" in dataset.schema.names:
        where = basis_filter(basis) if where is None else where & basis_filter(basis)
    try:
        rows = dataset.to_table(columns=[*columns, FILENAME], filter=where)
    except (pa.ArrowException, OSError) as err:
        raise RunError(f"{run.uri}: cannot read the {table} table: {err}") from err
    _refuse_foreign_files(run, table, rows, keys, dataset)
    return drop_duplicates(rows, keys, dataset.filesystem, table)


def _refuse_foreign_files(run, table: str, rows: pa.Table, keys: list[str], dataset: ds.Dataset) -> None:
    """A key that is null comes from a file without the table's columns (read with the table's schema, its
    missing columns are nulls): a Parquet file of another schema placed in the table. Named, never read as
    rows."""
    missing = [key for key in keys if rows.column(key).null_count]
    if not missing:
        return
    nulls = pc.is_null(rows.column(missing[0]))
    files = sorted(set(rows.filter(nulls).column(FILENAME).to_pylist()))
    schema = next((f.physical_schema for f in dataset.get_fragments() if f.path == files[0]), None)
    lacks = [key for key in keys if schema is not None and key not in schema.names and key != "layer"]
    raise RunError(
        f"{run.uri}: {files[0]} is not a file of the {table} table (it has no {', '.join(lacks or missing)} "
        f"column{'s' if len(lacks or missing) > 1 else ''})"
        + (f" (and {len(files) - 1} other file(s) like it)" if len(files) > 1 else "")
        + ": move it out of the run directory"
    )


def _codes(column: pa.ChunkedArray) -> np.ndarray:
    if pa.types.is_integer(column.type):
        return np.asarray(column.to_numpy(), dtype=np.int64)
    return np.asarray(pc.dictionary_encode(column.combine_chunks()).indices.to_numpy(zero_copy_only=False))


def _same_key_as_previous(key_codes: list[np.ndarray], order: np.ndarray) -> np.ndarray:
    """For rows taken in `order` (from the second on): whether the row has the previous row's key."""
    same = np.ones(len(order) - 1, dtype=bool)
    for codes in key_codes:
        same &= codes[order][1:] == codes[order][:-1]
    return same


def drop_duplicates(rows: pa.Table, keys: list[str], fs, table: str) -> tuple[pa.Table, list[str]]:
    """One row per key: the row of the most recently modified file, then of the last path (module doc)."""
    if rows.num_rows < 2:
        return rows, []
    key_codes = [_codes(rows.column(k)) for k in keys]
    order = np.lexsort(key_codes[::-1])
    same = _same_key_as_previous(key_codes, order)
    if not same.any():
        return rows, []
    files = rows.column(FILENAME).to_pylist()
    involved = sorted({files[i] for i in order[1:][same]} | {files[i] for i in order[:-1][same]})
    try:
        modified = {info.path: info.mtime_ns or 0 for info in fs.get_file_info(involved)}
    except OSError as err:
        raise RunError(f"cannot read the modification times of {table} files {involved}: {err}") from err
    newest = {path: rank for rank, path in enumerate(sorted(involved, key=lambda p: (modified.get(p, 0), p)))}
    rank = np.array([newest.get(f, -1) for f in files])
    # Rows by key, newest file first; keep the first of each key.
    order = np.lexsort([-rank, *key_codes[::-1]])
    kept = np.sort(order[np.r_[True, ~_same_key_as_previous(key_codes, order)]])
    dropped = Counter(
        tuple(rows.column(k)[int(i)].as_py() for k in keys[:-1]) for i in np.setdiff1d(order, kept)
    )
    notes = [
        f"{table} {' '.join(map(str, group))}: {count} duplicate row(s) left out (the newest file's row is kept)"
        for group, count in sorted(dropped.items())
    ]
    return rows.take(pa.array(kept)), notes
