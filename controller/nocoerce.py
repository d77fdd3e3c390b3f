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
from dataclasses import dataclass
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
    return list(_shape(t).members)


@dataclass(frozen=True)
class _Shape:
    """What :func:`_walk` needs of one annotation, worked out once per annotation: a campaign
    loads its site's files again for every case, and walking the schema's typing objects
    every time was about half of that load."""

    members: tuple[Any, ...]
    flags_only: bool  # every member a bool
    numeric: bool  # a member int or float
    has_bool: bool
    has_str: bool
    literals: tuple[Any, ...]  # the values of its Literal members
    models: tuple[type[BaseModel], ...]
    map_item: Any  # the value annotation of its one mapping member, else _NONE
    seq: Any  # its one parametrised sequence member, else _NONE
    n_seqs: int


_NONE = object()
#: id(annotation) -> (annotation, its shape); the annotation is kept, so its id is not reused
_SHAPES: dict[int, tuple[Any, _Shape]] = {}
#: id(model) -> (model, its fields as (key, annotation), {key: a Literal field's values})
_MODELS: dict[int, tuple[Any, list[tuple[str, Any]], dict[str, tuple[Any, ...]]]] = {}


def _members(t: Any) -> list[Any]:
    origin = get_origin(t)
    if origin is Annotated:
        return _members(get_args(t)[0])
    if origin is Union or origin is types.UnionType:
        return [m for a in get_args(t) for m in _members(a) if m is not type(None)]
    return [t]


def _shape(t: Any) -> _Shape:
    known = _SHAPES.get(id(t))
    if known is not None and known[0] is t:
        return known[1]
    members = tuple(_members(t))
    maps = [m for m in members if get_origin(m) in (dict, Mapping)]
    seqs = [m for m in members if get_origin(m) in (list, tuple, Sequence) and get_args(m)]
    one_map = len(maps) == 1 and len(get_args(maps[0])) == 2
    shape = _Shape(
        members=members,
        flags_only=bool(members) and all(m is bool for m in members),
        numeric=any(m in (int, float) for m in members),
        has_bool=bool in members,
        has_str=str in members,
        literals=tuple(a for m in members if get_origin(m) is Literal for a in get_args(m)),
        models=tuple(m for m in members if isinstance(m, type) and issubclass(m, BaseModel)),
        map_item=get_args(maps[0])[1] if one_map else _NONE,
        seq=seqs[0] if len(seqs) == 1 else _NONE,
        n_seqs=len(seqs),
    )
    _SHAPES[id(t)] = (t, shape)
    return shape


def _model(schema: type[BaseModel]) -> tuple[list[tuple[str, Any]], dict[str, tuple[Any, ...]]]:
    """A model's fields as (key, annotation), and the values each Literal field allows."""
    known = _MODELS.get(id(schema))
    if known is not None and known[0] is schema:
        return known[1], known[2]
    fields = [(f.alias or n, f.annotation) for n, f in schema.model_fields.items()]
    literal = {key: _shape(a).literals for key, a in fields if _shape(a).literals}
    _MODELS[id(schema)] = (schema, fields, literal)
    return fields, literal


def coercions(schema: type[BaseModel], data: Any, loc: tuple[str, ...] = ()) -> list[Coercion]:
    """Every value of ``data`` that ``schema`` would silently coerce into a number or a flag
    (``true`` or ``"100"`` for a number, ``1`` or ``"yes"`` for a flag); a value pydantic
    refuses anyway (``"fast"`` for a number) is left to its own message."""
    if not isinstance(data, Mapping):
        return []
    out: list[Coercion] = []
    for key, annotation in _model(schema)[0]:
        if key in data:
            out += _walk(annotation, data[key], (*loc, key))
    return out


def _walk(annotation: Any, value: Any, loc: tuple[str, ...]) -> list[Coercion]:
    shape = _shape(annotation)
    if not shape.members:
        return []
    if shape.flags_only:
        return [(loc, value, FLAG)] if _flag_like(value) else []
    if shape.numeric and isinstance(value, bool | str):
        # a union takes the value as a number unless it has a member for it as it is: a
        # bool member for a flag, a str member or a literal of the value for a string
        if isinstance(value, bool):
            kept = shape.has_bool
        else:
            kept = shape.has_str or value in shape.literals
        allowed = NUMBER_OR_TEXT if shape.has_str else NUMBER
        return [] if kept or not _number_like(value) else [(loc, value, allowed)]
    models = shape.models
    if isinstance(value, Mapping):
        if models:
            chosen = _pick(models, value)
            return coercions(chosen, value, loc) if chosen is not None else []
        if shape.map_item is not _NONE:
            item = shape.map_item
            return [c for k, v in value.items() for c in _walk(item, v, (*loc, str(k)))]
        return []
    if isinstance(value, list | tuple):
        if shape.seq is not _NONE:
            return _items(shape.seq, value, loc)
        if not shape.n_seqs and len(models) == 1:  # a model's short form (``[low, high]``)
            mapped = _short_form(models[0], value)
            return coercions(models[0], mapped, loc) if mapped is not None else []
    return []


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


def _pick(models: Sequence[type[BaseModel]], value: Mapping[str, Any]) -> type[BaseModel] | None:
    """The one model of a union that ``value`` can be: its keys all fields of it, and each
    literal field it gives (a discriminator such as ``kind``) one of the literal's values."""
    fits = []
    for m in models:
        fields, literal = _model(m)
        if not set(value) <= {k for k, _ in fields}:
            continue
        if all(value[k] in allowed for k, allowed in literal.items() if k in value):
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
