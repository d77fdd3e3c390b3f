"""No silent coercion of a config value into a number or a flag.

pydantic's lax mode turns ``true`` into 1 for an ``int`` field (``horizon: true`` ran a
1-step horizon), ``"100"`` into 100.0, and ``1`` into ``True`` for a ``bool``. In a config
file each is a typo or a misunderstanding, never intent. :func:`coercions` walks a file's
data along its schema (fields, nested models, mappings' values, lists' items) and lists every
such value with its key path and what is allowed; :func:`controller.configfile.parse`
refuses them. A number written ``1e-4`` is a number: PyYAML reads YAML 1.1, where it is a
string, and :mod:`controller.yamlmarks` resolves it as a float, as YAML 1.2 does.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["Coercion", "coercions", "refusal"]

#: (key path, the value, what is allowed)
Coercion = tuple[tuple[str, ...], Any, str]
NUMBER = "a number, written without quotes"
FLAG = "true or false"


def _members(t: Any) -> list[Any]:
    origin = get_origin(t)
    if origin is Annotated:
        return _members(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(t) for m in _members(a) if m is not type(None)]
    return [t]


def coercions(schema: type[BaseModel], data: Any, loc: tuple[str, ...] = ()) -> list[Coercion]:
    """Every value of ``data`` that ``schema`` would silently coerce into a number or a flag
    (``true`` or ``"100"`` for a number, ``1`` or ``"yes"`` for a flag); a value pydantic
    refuses anyway (``"fast"`` for a number) is left to its own message."""
    if not isinstance(data, Mapping):
        return []
    out: list[Coercion] = []
    for name, field in schema.model_fields.items():
        key = field.alias or name
        if key in data:
            out += _walk(field.annotation, data[key], (*loc, key))
    return out


def _walk(annotation: Any, value: Any, loc: tuple[str, ...]) -> list[Coercion]:
    members = _members(annotation)
    if not members:
        return []
    if all(m is bool for m in members):
        return [(loc, value, FLAG)] if _flag_like(value) else []
    if all(m in (int, float) for m in members):
        return [(loc, value, NUMBER)] if _number_like(value) else []
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if models and isinstance(value, Mapping):
        chosen = _pick(models, value)
        return coercions(chosen, value, loc) if chosen is not None else []
    if len(members) != 1:
        return []
    origin, args = get_origin(members[0]), get_args(members[0])
    if origin in (dict, Mapping) and len(args) == 2 and isinstance(value, Mapping):
        return [c for k, v in value.items() for c in _walk(args[1], v, (*loc, str(k)))]
    if origin in (list, tuple, Sequence) and args and isinstance(value, list | tuple):
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
        out: list[Coercion] = []
        for i, v in enumerate(value):
            if fixed and i >= len(args):
                break
            out += _walk(args[i] if fixed else args[0], v, (*loc, str(i)))
        return out
    return []


def _number_like(value: Any) -> bool:
    """A flag, or a string pydantic would read as a number (other strings it refuses itself)."""
    if isinstance(value, bool):
        return True
    if not isinstance(value, str):
        return False
    try:
        float(value)
    except ValueError:
        return False
    return True


#: what pydantic's lax mode reads as a flag besides true/false themselves
_FLAG_WORDS = {"0", "1", "t", "f", "y", "n", "yes", "no", "on", "off", "true", "false"}


def _flag_like(value: Any) -> bool:
    """A number or a string pydantic would read as a flag (others it refuses itself)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value in (0, 1)
    return isinstance(value, str) and value.strip().lower() in _FLAG_WORDS


def _pick(models: list[type[BaseModel]], value: Mapping[str, Any]) -> type[BaseModel] | None:
    """The one model of a union that ``value`` can be: its keys all fields of it, and each
    literal field it gives (a discriminator such as ``kind``) one of the literal's values."""
    fits = []
    for m in models:
        keys = {f.alias or n: f for n, f in m.model_fields.items()}
        if not set(value) <= set(keys):
            continue
        literal = [
            (k, get_args(a))
            for k, f in keys.items()
            if k in value
            for a in _members(f.annotation)
            if get_origin(a) is Literal
        ]
        if all(value[k] in allowed for k, allowed in literal):
            fits.append(m)
    return fits[0] if len(fits) == 1 else None


def refusal(value: Any, allowed: str) -> str:
    """The message for one coercion."""
    if isinstance(value, bool):
        what = f"{str(value).lower()} (a YAML true/false)"
    elif isinstance(value, str):
        what = f"{value!r} (a string)"
    else:
        what = repr(value)
    kind = "a flag" if allowed == FLAG else "a number"
    return f"{what} is not {kind}; allowed: {allowed}"
