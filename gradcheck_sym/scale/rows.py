"""The rows of a batch (`batch`): read from a JSONL or CSV file and validated into tasks.

A row is a dict (a JSON line, or a CSV record)::

    {"id": "nguyen-1", "expr": "x**3 + x**2 + x", "domain": {"x": [-1, 1]}, "samples": 100, "seed": 0,
     "dtype": "float64", "order": 1}

- ``id`` (string or integer, unique) and ``expr`` are required;
- the points: ``at`` ({name: value or list of values}) and/or ``domain``
  ({name: [low, high]}); ``vars`` is read as ``domain`` *and* declares those
  variables (the corpora's convention: a declared variable the expression does
  not use gets gradient 0); ``variables`` declares them explicitly;
- ``samples``, ``seed``, ``dtype``, ``order``: as in `gradcheck_sym.check`; the
  defaults come from the caller (the command line's options);
- other fields are ignored, so corpus files with metadata can be used as they are.

A row that samples points and gives no seed (and no default seed) is seeded from
its id, so every run of the same file gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

from ..errors import InputError
from .guard import stable_seed

__all__ = ["ExpressionTask", "read_rows", "make_tasks"]

_DTYPES = ("float64", "float32", "float16", "bfloat16")


@dataclass(frozen=True)
class ExpressionTask:
    """One row, validated: what a worker needs to run `gradcheck_sym.check` on it."""

    id: str | int
    expr: str
    at: dict[str, Any] | None = None
    domain: dict[str, tuple[float, float]] | None = None
    variables: tuple[str, ...] | None = None
    samples: int | None = None
    seed: int | None = None
    dtype: str = "float64"
    order: int = 1
    timeout: float | None = None
    full: bool = False



def read_rows(path: str | Path, fmt: Literal["jsonl", "csv"] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """The rows of a JSONL or CSV file, each with its location ("file:line") for error messages.

    Raises:
        InputError: the file is missing or a line is not a JSON object / the CSV has no id and expr columns.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{str(path)!r}: no such file")
    fmt = fmt or ("csv" if path.suffix.lower() == ".csv" else "jsonl")
    text = path.read_text(encoding="utf-8")
    rows: list[tuple[str, dict[str, Any]]] = []
    if fmt == "csv":
        reader = csv.DictReader(io.StringIO(text))
        missing = [c for c in ("id", "expr") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}: the CSV header has no {' or '.join(missing)} column",
                             "the first line names the columns, e.g. id,expr,domain,samples")
        for record in reader:
            rows.append((f"{path}:{reader.line_num}", {k: v for k, v in record.items() if k and v not in (None, "")}))
        return rows
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})",
                             "each line is one JSON object, e.g. {\"id\": \"a\", \"expr\": \"sin(x)\", \"at\": {\"x\": 0.5}}"
                             ) from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{n}: a line must be a JSON object, not {type(row).__name__}")
        rows.append((f"{path}:{n}", row))
    return rows


def make_tasks(rows: Iterable[Mapping[str, Any] | tuple[str, Mapping[str, Any]]], *, samples: int | None = None,
               seed: int | None = None, dtype: str = "float64", order: int = 1, timeout: float | None = None,
               full: bool = False) -> list[ExpressionTask]:
    """Validate rows (dicts, or (location, dict) pairs from `read_rows`) into tasks; the keywords are defaults.

    Raises:
        InputError: a row without id or expr, a duplicate id, a field of the wrong type; the message
            names the row (its file:line, or its position).
    """
    tasks: list[ExpressionTask] = []
    seen: dict[str, str] = {}
    for n, item in enumerate(rows, 1):
        where, row = item if isinstance(item, tuple) else (f"row {n}", item)
        if not isinstance(row, Mapping):
            raise InputError(f"{where}: a row must be a dict, not {type(row).__name__}")
        task = _task(where, row, samples=samples, seed=seed, dtype=dtype, order=order, timeout=timeout, full=full)
        key = json.dumps(task.id)
        if key in seen:
            raise InputError(f"{where}: the id {task.id!r} is used twice (first at {seen[key]})",
                             "ids must be unique: the output and --resume find rows by id")
        seen[key] = where
        tasks.append(task)
    return tasks


def _task(where: str, row: Mapping[str, Any], **defaults: Any) -> ExpressionTask:
    def bad(message: str, hint: str = "") -> InputError:
        return InputError(f"{where}: {message}", hint)

    rid = row.get("id")
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int)) or rid == "":
        raise bad("every row needs an id (a string or an integer)", 'e.g. {"id": "row-1", "expr": "sin(x)", ...}')
    expr = row.get("expr")
    if not isinstance(expr, str) or not expr.strip():
        raise bad(f"row {rid!r} needs an expr (the expression as text)")
    at = _points(row.get("at"), bad) if "at" in row else None
    domain = _box(row.get("domain"), "domain", bad) if "domain" in row else None
    variables = None
    if "vars" in row:
        box = _box(row["vars"], "vars", bad)
        domain = {**box, **(domain or {})}
        variables = tuple(box)
    if "variables" in row:
        v = row["variables"]
        names = v.replace(",", " ").split() if isinstance(v, str) else v
        if not isinstance(names, (list, tuple)) or not all(isinstance(x, str) for x in names):
            raise bad(f"variables must be a list of names, not {v!r}")
        variables = tuple(names)
    samples = _int(row, "samples", defaults["samples"], bad, minimum=1)
    order = _int(row, "order", defaults["order"], bad)
    if order not in (1, 2):
        raise bad(f"order must be 1 or 2, not {order!r}")
    dtype = row.get("dtype", defaults["dtype"])
    if dtype not in _DTYPES:
        raise bad(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    seed = _int(row, "seed", defaults["seed"], bad, minimum=0)
    if seed is None and domain:
        seed = stable_seed("gradcheck-sym batch", json.dumps(rid))
    return ExpressionTask(rid, expr, at, domain, variables, samples, seed, dtype, order, defaults["timeout"],
                          defaults["full"])


def _int(row: Mapping[str, Any], key: str, default: int | None, bad: Any, minimum: int | None = None) -> int | None:
    value = row.get(key, default)
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise bad(f"{key} must be an integer, not {value!r}") from None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        raise bad(f"{key} must be an integer{f' >= {minimum}' if minimum is not None else ''}, not {value!r}")
    return value


def _number(text: Any, bad: Any, what: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise bad(f"{what}: {text!r} is not a number") from None
    return value


def _points(value: Any, bad: Any) -> dict[str, Any]:
    """at: {name: number or list} (JSON) or "x=0.7,y=1.3;x=1,y=2" (CSV)."""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        out: dict[str, list[float]] = {}
        for point in value.split(";"):
            for part in point.split(","):
                name, eq, text = part.partition("=")
                if not eq or not name.strip():
                    raise bad(f"at {value!r}: write name=value pairs, e.g. x=0.7,y=1.3 (points separated by ;)")
                out.setdefault(name.strip(), []).append(_number(text, bad, f"at {value!r}"))
        return out
    value = _json_object(value, "at", "{name: value}", bad)
    for name, v in value.items():
        items = v if isinstance(v, list) else [v]
        for x in items:
            if isinstance(x, bool) or not isinstance(x, (int, float)):
                raise bad(f"at: the value of {name!r} must be a number or a list of numbers, not {v!r}")
    return dict(value)


def _json_object(value: Any, what: str, shape: str, bad: Any) -> dict[str, Any]:
    """`value` as a JSON object (given as one, or as its text)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise bad(f"{what} {value!r} is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad(f"{what} must be an object {shape}, not {value!r}")
    return value


def _box(value: Any, key: str, bad: Any) -> dict[str, tuple[float, float]]:
    """domain: {name: [low, high]} (JSON) or "x=-1:1,y=0:2" (CSV)."""
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        out = {}
        for part in value.split(","):
            name, eq, text = part.partition("=")
            lo, colon, hi = text.partition(":")
            if not eq or not colon or not name.strip():
                raise bad(f"{key} {value!r}: write name=low:high pairs, e.g. x=-1:1,y=0.5:2")
            out[name.strip()] = (_number(lo, bad, key), _number(hi, bad, key))
        return out
    value = _json_object(value, key, "{name: [low, high]}", bad)
    out = {}
    for name, v in value.items():
        if not isinstance(v, (list, tuple)) or len(v) != 2:
            raise bad(f"{key}: the range of {name!r} must be [low, high], not {v!r}")
        lo, hi = (_number(x, bad, key) for x in v)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise bad(f"{key}: the range of {name!r} must be finite, not {v!r}")
        out[name] = (lo, hi)
    return out
