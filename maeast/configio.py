"""Typed configs from YAML and dotted overrides, and back.

Every config is a tree of dataclasses. A YAML file overrides the dataclass defaults; dotted
overrides (`--optim.lr 3e-4` or `optim.lr=3e-4`) apply on top; an unknown key anywhere is an error
that names it. Values are checked by each dataclass's own `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from maeast.errors import MaeastError
from maeast.files import write_text

T = TypeVar("T")


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _convert(value, tp, where: str):
    tp = _unwrap_optional(tp)
    if value is None:
        return None
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise MaeastError(f"config {where} must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    origin = typing.get_origin(tp)
    try:
        if tp is float and isinstance(value, (int, float, str)) and not isinstance(value, bool):
            return float(value)
        if tp is int and isinstance(value, (int, str)) and not isinstance(value, bool):
            return int(value)
        if tp is bool and isinstance(value, str):
            if value.lower() in ("true", "yes", "1", "on"):
                return True
            if value.lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError(value)
        if tp is str:
            return str(value)
        if origin in (tuple, list) and isinstance(value, (list, tuple)):
            args = typing.get_args(tp)
            item_tp = args[0] if args else Any
            items = [v if item_tp is Any else _convert(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    except ValueError:
        raise MaeastError(f"config {where}: cannot read {value!r} as {getattr(tp, '__name__', tp)}") from None
    return value


def from_dict(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a (possibly partial) dict; unknown keys are an error."""
    types_ = _field_types(cls)
    unknown = [k for k in data if k not in types_]
    if unknown:
        name = f"{where}.{unknown[0]}" if where else unknown[0]
        raise MaeastError(f"unknown config key {name!r}; valid keys here: {', '.join(types_)}")
    kwargs = {k: _convert(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise MaeastError(f"config {where or cls.__name__}: {e}") from None


def to_dict(cfg) -> dict:
    """Plain dict (tuples as lists) that from_dict reads back to an equal config."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v
    return plain(cfg)


def merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def parse_overrides(args: list[str]) -> dict:
    """`['--optim.lr', '3e-4', 'run.steps=10', '--model.depth=2']` -> nested dict of YAML-parsed values."""
    pairs, i = [], 0
    while i < len(args):
        arg = args[i]
        body = arg[2:] if arg.startswith("--") else arg
        if "=" in body:
            key, value = body.split("=", 1)
            i += 1
        elif arg.startswith("--") and i + 1 < len(args):
            key, value = body, args[i + 1]
            i += 2
        else:
            raise MaeastError(f"override {arg!r} needs a value: use --section.key VALUE or section.key=VALUE")
        pairs.append((key, value))
    nested: dict = {}
    for key, value in pairs:
        node = nested
        *parents, leaf = key.replace("-", "_").split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise MaeastError(f"override {key!r} conflicts with another override")
        node[leaf] = yaml.safe_load(value) if value != "" else ""
    return nested


def load_yaml(path: Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MaeastError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise MaeastError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise MaeastError(f"{path} must hold a mapping of config sections")
    return data


def save_yaml(cfg, path: Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
