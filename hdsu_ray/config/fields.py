"""Typed, validated config classes built from plain YAML data.

Every section of a workflow is a frozen dataclass whose fields carry help text and bounds
(``opt(...)``). :func:`build` turns a parsed YAML mapping into such a dataclass and rejects, with
one :class:`WorkflowError` naming the file and the dotted key path, any unknown key, wrong type or
out-of-range value. It never executes or imports anything named in the YAML.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from hdsu_ray.config.reader import number_written
from hdsu_ray.errors import WorkflowError


def opt(default: Any = dataclasses.MISSING, help: str = "", *, ge: float | None = None,
        gt: float | None = None, le: float | None = None, lt: float | None = None,
        factory: Any = dataclasses.MISSING) -> Any:
    """A config field: default (or ``factory`` for mutable defaults), help text and numeric bounds."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "lt": lt}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(tp: Any) -> str:
    """A short human name for a type, used in error messages ("expected an integer >= 1")."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("null" if a is type(None) else describe(a) for a in args)
    if origin is list:
        return f"a list of {describe(args[0])}"
    if origin is dict:
        return f"a mapping of {describe(args[0])} to {describe(args[1])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}"
    return getattr(tp, "__name__", str(tp))


def _accepts_float(tp: Any) -> bool:
    if get_origin(tp) in (Union, types.UnionType):
        return any(_accepts_float(a) for a in get_args(tp))
    return tp is float


def _check_finite(value: Any, key: str, file: str | None) -> None:
    """No inf or NaN anywhere in a free-form value (method specs, weights, sweep choices)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise WorkflowError(f"got {value!r}", file=file, key=key, expected="a finite number")
    if isinstance(value, dict):
        for k, v in value.items():
            _check_finite(v, f"{key}.{k}", file)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]", file)


def _coerce(value: Any, tp: Any, key: str, file: str | None) -> Any:
    def fail() -> WorkflowError:
        written = number_written(value) if _accepts_float(tp) else None
        if written:
            return WorkflowError(f"got {value!r}, a string: YAML 1.1 reads a number without a dot or with an "
                                 "unsigned exponent as text", file=file, key=key,
                                 expected=f"{describe(tp)}: write {written}")
        return WorkflowError(f"got {value!r}", file=file, key=key, expected=describe(tp))

    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        _check_finite(value, key, file)
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if isinstance(value, float) and not math.isfinite(value) and _accepts_float(tp):
            raise WorkflowError(f"got {value!r}", file=file, key=key, expected="a finite number")
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, file)
            except WorkflowError as exc:
                errors.append((arg, exc))
        # A mapping given for an optional section: the section's own error names the exact key
        # (sweep.cache), not the whole section; so does an error inside a list (values[1]).
        sections = [exc for arg, exc in errors if dataclasses.is_dataclass(arg)]
        if isinstance(value, dict) and len(sections) == 1:
            raise sections[0]
        deeper = [exc for _, exc in errors if exc.key != key]
        if isinstance(value, list) and deeper:
            raise deeper[0]
        raise fail()
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise fail()
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise fail()
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer of hundreds of digits
                number = math.inf
            if not math.isfinite(number):  # .inf / .nan pass every bound check below
                shown = repr(value) if len(repr(value)) < 40 else f"an integer of {len(str(value))} digits"
                raise WorkflowError(f"got {shown}", file=file, key=key, expected="a finite number")
            return number
        raise fail()
    if tp is str:
        if isinstance(value, str):
            return value
        raise fail()
    if origin is Literal:
        if value in args:
            return value
        if isinstance(value, bool) and all(isinstance(a, str) for a in args):
            raise WorkflowError(f"got {value!r}", file=file, key=key, expected=f"{describe(tp)}; YAML reads "
                                "unquoted on/off/yes/no as true/false, so quote such a word")
        raise fail()
    if origin is list:
        if not isinstance(value, list):
            raise fail()
        return [_coerce(v, args[0], f"{key}[{i}]", file) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise fail()
        return {_coerce(k, args[0], f"{key}.{k}", file): _coerce(v, args[1], f"{key}.{k}", file)
                for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key=key, file=file)
    raise TypeError(f"config type {tp!r} at {key} is not supported")  # a bug in our schema


def _check_bounds(value: Any, meta: typing.Mapping, key: str, file: str | None) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    checks = [("ge", lambda b: value >= b, ">="), ("gt", lambda b: value > b, ">"),
              ("le", lambda b: value <= b, "<="), ("lt", lambda b: value < b, "<")]
    for name, ok, sym in checks:
        bound = meta.get(name)
        if bound is not None and not ok(bound):
            parts = [f"{s} {meta[n]}" for n, _, s in checks if meta.get(n) is not None]
            raise WorkflowError(f"got {value!r}", file=file, key=key,
                                expected="a value " + " and ".join(parts))


def build(cls: type, data: Any, *, key: str = "", file: str | None = None) -> Any:
    """Build dataclass ``cls`` from a mapping, validating keys, types and bounds.

    After the fields are built the instance's ``validate(key, file)`` method, if any, runs the
    cross-field checks (with the same error format).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise WorkflowError(f"got {data!r}", file=file, key=key or "(top level)", expected=describe(cls))
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        where = f"{key}.{unknown[0]}" if key else unknown[0]
        raise WorkflowError("unknown key", file=file, key=where,
                            expected=f"one of {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise WorkflowError("missing required key", file=file, key=sub,
                                    expected=f.metadata.get("help") or describe(hints[name]))
            continue
        value = _coerce(data[name], hints[name], sub, file)
        _check_bounds(value, f.metadata, sub, file)
        kwargs[name] = value
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(key, file)
    return obj


def to_dict(obj: Any) -> Any:
    """The plain-data form of a config (for hashing, ``best.yaml`` and results)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def default_text(f: dataclasses.Field) -> str:
    """A field's default as a user writes it in YAML (``required`` when there is none)."""
    import json

    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = to_dict(f.default_factory())
    else:
        return "required"
    return "null" if value is None else json.dumps(value, default=str) if not isinstance(value, str) else value


def field_help(cls: type) -> list[tuple[str, str, str, str]]:
    """``(key, type, default, help)`` rows for every field, nested sections flattened (``hdsu-ray
    plan --keys`` and the key reference in docs/usage.md, both generated from here)."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        inner = [a for a in get_args(tp) if a is not type(None)]
        if get_origin(tp) in (Union, types.UnionType) and len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            tp = inner[0]  # an optional section: list its keys too
        if dataclasses.is_dataclass(tp):
            rows += [(f"{f.name}.{k}", t, d, h) for k, t, d, h in field_help(tp)]
        else:
            rows.append((f.name, describe(tp), default_text(f), f.metadata.get("help", "")))
    return rows
