"""Typed configs: dataclasses with one-line attribute docstrings, built from YAML and
dotted `key=value` overrides, checked before any compute.

A field's documentation is the string literal right below it, as in::

    @dataclass
    class Example:
        lr: float = 1e-4
        \"\"\"Learning rate.\"\"\"

A numeric field declares its valid range where it is defined, and a path field what it
must be, through `num` and `path` (field metadata)::

        lr: float = num(1e-4, gt=0)
        \"\"\"Learning rate.\"\"\"
        run_dir: str = path("runs/default", "dir")

`build` checks them all with one validator (`check_declared`): every float must be finite,
every declared range hold (for each item of a list or mapping field), every declared path be
usable, before any `validate()`, which is left the checks that relate several fields. Integer
fields are annotated `int` (a float is refused), choices `Literal[...]`.

`field_docs` reads those strings from the source, `describe` turns a config class into
the `--help` listing, `build` turns a nested dict into the dataclass, failing with a
ConfigError that names the dotted field and the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from grpo_zoo.errors import (
    FINITE,
    ConfigError,
    Range,
    given_path,
    readable_file,
    writable_dir,
)


def num(
    default: Any = dataclasses.MISSING,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    default_factory: Any = dataclasses.MISSING,
) -> Any:
    """A numeric field with its valid range: `num(1e-4, gt=0)`, `num(0.5, ge=0, le=1)`; on a list
    or mapping of numbers the range holds for each one: `num(default_factory=lambda: [1, 2], ge=1)`."""
    low = gt if gt is not None else ge
    high = lt if lt is not None else le
    rng = Range(low, high, low_open=gt is not None, high_open=lt is not None)
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata={"range": rng})
    return dataclasses.field(default=default, metadata={"range": rng})


def path(default: Any, kind: Literal["dir", "file"]) -> Any:
    """A path field: `dir` must be a writable (or creatable) directory, `file` a readable file."""
    return dataclasses.field(default=default, metadata={"path": kind})


def check_declared(obj: Any, where: str = "") -> None:
    """The one validator of declared ranges and paths (and finiteness of every float)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{where}.{f.name}" if where else f.name
        if value is None:
            continue
        rng = f.metadata.get("range")
        for label, number in _numbers(value, name) if rng else [(name, value)]:
            if isinstance(number, int | float) and not isinstance(number, bool) and (rng or isinstance(number, float)):
                problem = (rng or FINITE).problem(number)
                if problem:
                    fix = f"; the default is {f.default!r}" if f.default not in (None, dataclasses.MISSING) else ""
                    raise ConfigError(f"{label}: {problem}{fix}")
        kind = f.metadata.get("path")
        if kind == "dir" and isinstance(value, str):
            writable_dir(value, name)
        elif kind == "file" and isinstance(value, str):
            readable_file(value, name)


def _numbers(value: Any, name: str) -> list[tuple[str, Any]]:
    """(dotted name, value) of a ranged field's numbers: itself, or each item of a list or mapping."""
    if isinstance(value, list | tuple):
        return [(f"{name}[{i}]", v) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return [(f"{name}.{k}", v) for k, v in value.items()]
    return [(name, value)]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings of a dataclass (and its bases), by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "|".join(str(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp) if a is not type(None)) + " or null"
    if origin in (list, tuple):
        args = [a for a in get_args(tp) if a is not Ellipsis]
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


INT_LIMIT = 2**63
"""Integers in a config fit a signed 64-bit integer."""


def _short(value: Any) -> str:
    """repr(value), shortened in the middle past 40 characters (a 400-digit number is one line)."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:18]}...{text[-18:]} ({len(text)} characters)"


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against the annotation `tp`, converting where YAML is loose."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        last: ConfigError | None = None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as err:
                last = err
        raise last or ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        hint = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        fix = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}{fix}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = [a for a in get_args(tp) if a is not Ellipsis]
        items = [_coerce(v, args[0], f"{where}[{i}]") if args else v for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        args = get_args(tp)
        return {k: _coerce(v, args[1], f"{where}.{k}") for k, v in value.items()} if args else dict(value)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -INT_LIMIT <= value < INT_LIMIT:  # torch, numpy and the C libraries below hold 64 bits
                raise ConfigError(f"{where}: {_short(value)} does not fit a 64-bit integer (|value| < 2**63)")
            return value
        raise ConfigError(f"{where}: expected an integer, got {_short(value)}")
    if tp is float:
        try:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            if isinstance(value, str):
                return float(value)
        except ValueError:
            pass
        except OverflowError:
            raise ConfigError(f"{where}: {_short(value)} is too large for a floating-point number") from None
        raise ConfigError(f"{where}: expected a number, got {_short(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


MOVED = {
    "algorithm.rewards": "several rewards moved to reward.name: {entry: weight}, with reward.aggregate",
}
"""Fields that moved: their old path to where they went (the unknown-field line says so)."""


def build(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and bad values raise ConfigError.

    A class may define `resolve_type(data) -> cls` (a classmethod) to pick a subclass from
    the data (for example an algorithm's config from its `name`), `with_defaults(data) -> data`
    to put defaults that depend on the data under it (a run's algorithm's reference settings),
    and `validate()` to check cross-field constraints once built.
    """
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or cls.__name__}: expected a mapping, got {data!r}")
    if hasattr(cls, "with_defaults"):  # defaults that depend on the data (a run's algorithm's settings)
        data = cls.with_defaults(data)
    if hasattr(cls, "resolve_type"):
        cls = cls.resolve_type(data, where)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            hint = difflib.get_close_matches(str(key), list(names), n=1)
            fix = f"did you mean {hint[0]!r}?" if hint else f"known: {', '.join(names)}"
            fix = MOVED.get(path, fix)
            raise ConfigError(f"{path}: unknown field ({fix})")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        obj = cls(**kwargs)
    except TypeError as err:  # a required field is missing
        raise ConfigError(f"{where or cls.__name__}: {err}") from None
    check_declared(obj, where)
    for f in dataclasses.fields(obj):
        # Nested defaults built by default_factory still need their own validate().
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value) and f.name not in kwargs and hasattr(value, "validate"):
            _validate(value, f"{where}.{f.name}" if where else f.name)
    _validate(obj, where)
    return obj


def _validate(obj: Any, where: str) -> None:
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ConfigError as err:
            msg = str(err)
            raise ConfigError(f"{where}.{msg}" if where and not msg.startswith(where) else msg) from None


def to_dict(obj: Any) -> Any:
    """A config as plain YAML-able data (tuples become lists), without the fields a section does not read."""
    if dataclasses.is_dataclass(obj):  # less the fields it says it does not read (a toy model's wan sizes)
        unused = set(obj.unused_fields()) if hasattr(obj, "unused_fields") else set()
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.name not in unused}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a', 'b', 'c'], value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected dotted.key=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: list[str] | dict[str, Any]) -> dict:
    """Return a copy of `data` with dotted overrides applied (deep-merged)."""
    import copy

    out = copy.deepcopy(data)
    items = (
        [parse_override(o) for o in overrides]
        if isinstance(overrides, list)
        else [(k.split("."), v) for k, v in overrides.items()]
    )
    given = [".".join(keys) for keys, _ in items]
    twice = next((k for i, k in enumerate(given) if k in given[:i]), None)
    if twice is not None:  # the last one would silently win
        raise ConfigError(f"override {twice}: given twice; give each key once")
    for keys, value in items:
        node = out
        for i, key in enumerate(keys[:-1]):
            nxt = node.get(key)
            if nxt is None:
                nxt = node[key] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {'.'.join(keys)}: {'.'.join(keys[: i + 1])} is not a section")
            node = nxt
        node[keys[-1]] = value
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a mapping with the same key twice (PyYAML keeps the last)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if isinstance(key, list | dict):
            continue  # unhashable: PyYAML's own error follows
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; a missing or malformed file, or a key given twice, is a ConfigError."""
    path = given_path(path, "config", "file")  # empty, or a symlink that leads nowhere
    if path.exists() and not path.is_file():  # a folder, a FIFO: never opened
        raise ConfigError(f"{path}: not a regular file (expected a YAML config file)")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (expected YAML)") from None
    except PermissionError:
        raise ConfigError(f"{path}: not readable") from None
    except yaml.YAMLError as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        problem = getattr(err, "problem", None)
        why = f": {problem}" if problem and problem.startswith("duplicate key") else ""
        raise ConfigError(f"{path}: not valid YAML{at}{why}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data


def deep_merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursively for mappings."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config_file(path: str | Path, _seen: tuple = ()) -> dict:
    """A YAML config; a top-level `base: other.yaml` (relative to this file) is loaded first
    and this file's keys are merged over it."""
    path = given_path(path, f"{_seen[-1]}: base" if _seen else "config", "file")  # empty, or leads nowhere
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: `base` chain loops back to itself")
    data = load_yaml(path)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"{path}: base: expected the path of a YAML file (relative to this one), got {base!r}")
    return deep_merge(load_config_file(path.parent / base, (*_seen, path.resolve())), data)


def describe(cls: type, prefix: str = "", obj: Any = None) -> list[str]:
    """One line per field, dotted, with its type, default and docstring (for --help)."""
    scalars: list[str] = []
    sections: list[str] = []
    obj = obj if obj is not None else _default_instance(cls)
    docs = field_docs(type(obj) if obj is not None else cls)
    hints = _type_hints(type(obj) if obj is not None else cls)
    for f in dataclasses.fields(obj if obj is not None else cls):
        name = f"{prefix}{f.name}"
        value = getattr(obj, f.name, None) if obj is not None else None
        if dataclasses.is_dataclass(value):
            sections.append(f"{name}:  {docs.get(f.name, '')}".rstrip())
            sections.extend(describe(type(value), prefix=f"{name}.", obj=value))
            continue
        rng = f.metadata.get("range")
        valid = f", {rng.describe()}" if rng else ""
        scalars.append(f"  {name} ({_type_name(hints[f.name])}{valid}, default {value!r}): {docs.get(f.name, '')}")
    # a level's own fields first, then its sections: no field reads as part of the section above it
    return scalars + sections


def _default_instance(cls: type) -> Any:
    try:
        return cls()
    except TypeError:
        return None
