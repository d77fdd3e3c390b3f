"""No silent coercion of a config value into a number or a flag.

pydantic's lax mode turns ``true`` into 1 for an ``int`` field (``horizon: true`` ran a 1-step
horizon), ``"100"`` into 100.0, and ``1`` into ``True`` for a ``bool``. In a config file each
is a typo or a misunderstanding, never intent. :func:`coercions` walks a file's data along its
schema (fields, nested models, mappings' values, lists' items) and lists every such value with
its key path and what is allowed; :func:`controller.configfile.parse` refuses them. In a union
(``Finite | str``: a number or a parameter's name) a flag is refused unless the union takes
flags, and a quoted number unless it takes text as text; a model's short form (``[low, high]``)
is checked as the mapping its own validators make of it. A number written ``1e-4`` is a number:
PyYAML reads YAML 1.1, where it is a string, and :mod:`controller.yamlmarks` resolves it as a
float, as YAML 1.2 does.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

__all__ = ["Coercion", "coercions", "refusal", "union_members"]

#: (key path, the value, what is allowed)
Coercion = tuple[tuple[str, ...], Any, str]
NUMBER = "a number, written without quotes"
_LEADING_ZERO = re.compile(r"[-+]?0[0-9_]+")
NUMBER_OR_TEXT = "a number, or text in quotes"
FLAG = "true or false"


def union_members(t: Any) -> list[Any]:
    """The types a (possibly Annotated, optional or union) annotation stands for, None left
    out (also what :mod:`controller.configfile` walks a schema by)."""
    origin = get_origin(t)
    if origin is Annotated:
        return union_members(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(t) for m in union_members(a) if m is not type(None)]
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
    members = union_members(annotation)
    if not members:
        return []
    if all(m is bool for m in members):
        return [(loc, value, FLAG)] if _flag_like(value) else []
    if any(m in (int, float) for m in members) and isinstance(value, bool | str):
        # a union takes the value as a number unless it has a member for it as it is
        kept = bool in members if isinstance(value, bool) else _kept_as_text(members, value)
        allowed = NUMBER_OR_TEXT if str in members else NUMBER
        return [] if kept or not _number_like(value) else [(loc, value, allowed)]
    models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
    if isinstance(value, Mapping):
        if models:
            chosen = _pick(models, value)
            return coercions(chosen, value, loc) if chosen is not None else []
        maps = [m for m in members if get_origin(m) in (dict, Mapping)]
        if len(maps) == 1 and len(get_args(maps[0])) == 2:
            item = get_args(maps[0])[1]
            return [c for k, v in value.items() for c in _walk(item, v, (*loc, str(k)))]
        return []
    if isinstance(value, list | tuple):
        seqs = [m for m in members if get_origin(m) in (list, tuple, Sequence) and get_args(m)]
        if len(seqs) == 1:
            return _items(seqs[0], value, loc)
        if not seqs and len(models) == 1:  # a model's short form (``[low, high]``)
            mapped = _short_form(models[0], value)
            return coercions(models[0], mapped, loc) if mapped is not None else []
    return []


def _kept_as_text(members: list[Any], value: str) -> bool:
    """A union with a ``str`` member, or a literal of ``value``, keeps a string as it is."""
    literals = [a for m in members if get_origin(m) is Literal for a in get_args(m)]
    return str in members or value in literals


def _items(seq: Any, value: list[Any] | tuple[Any, ...], loc: tuple[str, ...]) -> list[Coercion]:
    origin, args = get_origin(seq), get_args(seq)
    fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
    out: list[Coercion] = []
    for i, v in enumerate(value):
        if fixed and i >= len(args):
            break
        out += _walk(args[i] if fixed else args[0], v, (*loc, str(i)))
    return out


def _short_form(model: type[BaseModel], value: Any) -> Mapping[str, Any] | None:
    """The mapping ``model``'s own "before" validators make of ``value`` (None: none)."""
    for dec in model.__pydantic_decorators__.model_validators.values():
        if dec.info.mode != "before":
            continue
        try:
            value = dec.func(value)  # bound to the model (a classmethod)
        except Exception:  # its refusal is pydantic's to report
            return None
    return value if isinstance(value, Mapping) else None


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
            for a in union_members(f.annotation)
            if get_origin(a) is Literal
        ]
        if all(value[k] in allowed for k, allowed in literal):
            fits.append(m)
    return fits[0] if len(fits) == 1 else None


def refusal(value: Any, allowed: str) -> str:
    """The message for one coercion."""
    if isinstance(value, bool):
        what = f"{str(value).lower()} (a YAML true/false)"
    elif isinstance(value, str) and _LEADING_ZERO.fullmatch(value):
        what = f"{value!r} (text: YAML reads digits with a leading zero as text)"
        allowed = f"{allowed}, without a leading zero" if allowed != FLAG else allowed
    elif isinstance(value, str):
        what = f"{value!r} (a string)"
    else:
        what = repr(value)
    kind = "a flag" if allowed == FLAG else "a number"
    return f"{what} is not {kind}; allowed: {allowed}"
