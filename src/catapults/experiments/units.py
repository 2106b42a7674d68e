"""Resumable units of a long experiment (``catapults reproduce ... --resume``).

A *unit* is a part of an experiment that trains its own runs and leaves its numbers in CSV
files (``architectures``: one architecture in one parameterisation on one data set, 20-40 min at
full size on one core). When a unit finishes, :func:`save_unit` writes ``STEM-unit.json``
beside its CSVs: the *key* (everything the unit's runs depend on: size, model, data, seeds,
settings), the package version, the time, and each CSV's SHA-256. With ``--resume``,
:func:`load_unit` gives back the unit's rows, read from its CSVs (:func:`read_rows`), when the
record exists, its key equals the one the unit would run with now and every CSV still has its
digest; otherwise (no record, other settings, a CSV changed or missing, a damaged record) the unit
is run again, and the reason is returned for the experiment's notes.

The CSVs are the record's only data: the rows the claims are computed from are exactly those
written (:func:`~catapults.experiments.common._write_csv` writes ``repr`` of each float, so the
numbers come back bit for bit; ``None`` is an empty cell).
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from catapults.storage.atomic import write_json_atomic

UNIT_FORMAT = 1


def _cell(text: str) -> Any:
    """One CSV cell as the value ``_write_csv`` wrote (``str`` of it): empty is None,
    ``True``/``False`` bools, then an int or a float only when ``str`` of it gives the cell
    back exactly (``nan``, ``inf``, ``1e+16`` and ``-0.0`` do; ``007``, ``1_000`` or
    ``Infinity`` stay strings), else the string."""
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        if str(value) == text:
            return value
    return text


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The rows of a CSV written by ``_write_csv``, each cell typed back (:func:`_cell`)."""
    with path.open(newline="") as fh:
        return [{k: _cell(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _normal(key: dict[str, Any]) -> Any:
    """The key as JSON would give it back (tuples as lists)."""
    return json.loads(json.dumps(key))


def save_unit(out: Path, stem: str, key: dict[str, Any], tables: dict[str, Path],
              notes: list[str] = ()) -> Path:
    """Record that the unit ``stem`` finished with ``key``; ``tables`` maps a name to a CSV
    already written (atomically) under ``out``; ``notes`` are given back on reuse."""
    from catapults import __version__

    path = out / f"{stem}-unit.json"
    write_json_atomic(path, {
        "format": UNIT_FORMAT, "key": key, "catapults_version": __version__,
        "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "tables": {name: {"file": p.name, "sha256": _digest(p)} for name, p in tables.items()},
        "notes": list(notes)})
    return path


def load_unit(out: Path, stem: str, key: dict[str, Any], names: tuple[str, ...]
              ) -> tuple[dict[str, list[dict[str, Any]]] | None, list[str]]:
    """``(rows per table name, notes)`` of a finished unit whose record matches ``key`` and
    lists exactly the tables ``names`` (each ``STEM-NAME.csv`` beside the record: a record
    cannot send the reader elsewhere): the notes say it was reused, then the unit's own; or
    ``(None, [why it is run again])``."""
    path = out / f"{stem}-unit.json"
    if not path.is_file():
        return None, [f"{stem}: no {path.name} (not finished before): run"]
    try:
        doc = json.loads(path.read_text())
        tables = doc.get("tables") if isinstance(doc, dict) else None
        if not isinstance(tables, dict) or doc.get("format") != UNIT_FORMAT or not all(
                isinstance(t, dict) and isinstance(t.get("file"), str)
                and isinstance(t.get("sha256"), str) for t in tables.values()):
            return None, [f"{stem}: {path.name} has another format: run again"]
        if _normal(doc.get("key")) != _normal(key):
            return None, [f"{stem}: {path.name} was made with other settings: run again"]
        if set(doc["tables"]) != set(names) or any(
                doc["tables"][k].get("file") != f"{stem}-{k}.csv" for k in names):
            return None, [f"{stem}: {path.name} lists other tables: run again"]
        rows = {}
        for name, t in doc["tables"].items():
            csv_path = out / t["file"]
            if not csv_path.is_file() or _digest(csv_path) != t["sha256"]:
                return None, [f"{stem}: {t['file']} is missing or changed since "
                              f"{path.name}: run again"]
            rows[name] = read_rows(csv_path)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError,
            csv.Error) as exc:  # a damaged record or CSV: run the unit again
        return None, [f"{stem}: {path.name} cannot be read ({type(exc).__name__}): run again"]
    notes = doc.get("notes")
    notes = [n for n in notes if isinstance(n, str)] if isinstance(notes, list) else []
    return rows, [f"{stem}: reused (--resume) from {path.name}: finished "
                  f"{doc.get('finished')} with catapults {doc.get('catapults_version')}", *notes]
