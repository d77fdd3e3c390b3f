"""Config files: YAML read at the edge and validated into frozen, typed objects.

What every schema shares. :func:`read_yaml` reads one UTF-8 YAML mapping and refuses binary
text, other encodings, syntax errors and duplicate keys, each as one problem at its line and
column. :func:`parse` validates the mapping against a pydantic schema and turns every
validation error into a plain :class:`~controller.errors.Problem` (file, key path, bad value,
what is allowed), all raised at once as one :class:`~controller.errors.ConfigError`; a file of
another kind is named for what it is (:mod:`controller.filekinds`). :class:`Strict` is the base
of every schema: frozen, unknown keys rejected. :func:`resolve` finds a path written in a file;
:func:`real` resolves it to its real path (a symlink loop is a ConfigError). :data:`NAME` is
the pattern of a name that becomes a file name (a site's, a campaign's). Validation never
uses ``assert``.
"""

from __future__ import annotations

import codecs
import copy
import datetime
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from controller import filekinds, yamlmarks
from controller.errors import ConfigError, Problem, suggest, unknown_name
from controller.nocoerce import Coercion, coercions, refusal, union_members

__all__ = [
    "NAME",
    "Finite",
    "PositiveFinite",
    "Strict",
    "existing",
    "parse",
    "read_yaml",
    "real",
    "resolve",
]


#: a name that becomes a file or folder name (a site's log, a campaign's results): no path
#: separator, no leading dot, nothing a shell would have to quote
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


Finite = Annotated[float, Field(allow_inf_nan=False)]


PositiveFinite = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class Strict(BaseModel):
    """Base of every config object: frozen, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


S = TypeVar("S", bound=BaseModel)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read one YAML mapping; raise ConfigError naming the file, line and column on failure.

    The file must be UTF-8 text: a binary file, or text in another encoding, is named with
    the byte offset of the first byte that is not. A key given twice in one mapping is
    refused (YAML would silently keep the last). The marks of the file's keys are kept
    (:mod:`controller.yamlmarks`) so that later problems point at their line. A text read
    before is not parsed again (:func:`_parsed`); the data returned is always a fresh copy.
    """
    source = str(path)
    try:
        raw = path.read_bytes()
    except IsADirectoryError as exc:  # said only "Is a directory"
        why = "is a directory, not a file; allowed: a YAML file (UTF-8 text)"
        raise ConfigError([Problem(source, "", why)]) from exc
    except OSError as exc:
        raise ConfigError([Problem(source, "", f"cannot read file: {exc.strerror}")]) from exc
    loaded = _parsed(raw, source)
    key = yamlmarks.cache_key(path)
    if key is not None:
        yamlmarks.remember(key, loaded.marks)
    if loaded.duplicates:
        raise ConfigError(
            Problem(
                source,
                ".".join(d.path),
                f"duplicate key {d.path[-1]!r} (first given at line {d.first_line}); "
                "YAML would silently keep only the last",
                None,
                d.line,
                d.column,
            )
            for d in loaded.duplicates
        )
    data = loaded.data
    if not isinstance(data, dict):
        raise ConfigError(
            [Problem(source, "", "the file must hold a YAML mapping", type(data).__name__, 1, 1)]
        )
    return _fresh(data)  # the cached parse stays as read: no caller changes another's


#: what YAML's safe loader makes that cannot be changed in place: shared, not copied
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes, datetime.date, datetime.datetime})


def _fresh(value: Any, memo: dict[int, Any] | None = None) -> Any:
    """A copy of parsed YAML data: new dicts and lists all the way down, the immutable
    scalars shared, anything else (a ``!!set``) deep-copied. About 2x faster than
    ``copy.deepcopy`` on the shipped configs (a campaign worker reads ~14 files a case). As
    ``deepcopy``, it copies a node YAML aliased (``*anchor``) once (``memo``, by identity):
    nested aliases stay one node each (no "billion laughs" blow-up) and a node that holds
    itself is copied as such (no endless recursion)."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if memo is None:
        memo = {}
    done = memo.get(id(value))
    if done is not None:
        return done
    if kind is dict:
        out: dict[Any, Any] = {}
        memo[id(value)] = out
        for k, v in value.items():
            out[k] = _fresh(v, memo)
        return out
    if kind is list:
        items: list[Any] = []
        memo[id(value)] = items
        items.extend(_fresh(v, memo) for v in value)
        return items
    return copy.deepcopy(value, memo)


#: parsed texts by their content (a campaign worker reads the same plant, controller and tag
#: files for every case): the bytes are read and compared every time, so a changed file is
#: parsed again, and every caller gets its own copy of the data
_parsed_cache: OrderedDict[bytes, yamlmarks.Loaded] = OrderedDict()
_PARSED_CACHE_SIZE = 64
_parsed_lock = threading.Lock()


def _parsed(raw: bytes, source: str) -> yamlmarks.Loaded:
    """The parse of a config file's bytes (cached by their SHA-256); ConfigError when the
    text is no UTF-8 YAML. The cached parse must never be changed: copy its data."""
    key = hashlib.sha256(raw).digest()
    with _parsed_lock:
        hit = _parsed_cache.get(key)
        if hit is not None:
            _parsed_cache.move_to_end(key)
            return hit
    text = _decode(raw, source)
    try:
        loaded = yamlmarks.load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc, source, raw)]) from exc
    with _parsed_lock:
        _parsed_cache[key] = loaded
        while len(_parsed_cache) > _PARSED_CACHE_SIZE:
            _parsed_cache.popitem(last=False)
    return loaded


def _line_column(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based line and column (in bytes) of a byte offset."""
    return raw.count(b"\n", 0, offset) + 1, offset - (raw.rfind(b"\n", 0, offset) + 1) + 1


def _decode(raw: bytes, source: str) -> str:
    """The UTF-8 text of a config file (a BOM is dropped); one clear problem otherwise."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        message = "this is UTF-16 text; save the file as UTF-8"
        raise ConfigError([Problem(source, "", message, None, 1, 1)])
    nul = raw.find(b"\x00")
    if nul >= 0:
        message = (
            f"this is a binary file, not YAML text (a NUL byte at byte offset {nul}); "
            "give a UTF-8 YAML config file"
        )
        raise ConfigError([Problem(source, "", message, None, *_line_column(raw, nul))])
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = (
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at byte offset {exc.start} is not "
            "valid UTF-8; save the file as UTF-8"
        )
        where = _line_column(raw, exc.start)
        raise ConfigError([Problem(source, "", message, None, *where)]) from exc


def _yaml_problem(exc: yaml.YAMLError, source: str, raw: bytes) -> Problem:
    """A YAML syntax error as one sentence at its line and column."""
    if isinstance(exc, yaml.reader.ReaderError):
        text = raw.decode("utf-8-sig")
        offset = len(text[: exc.position].encode("utf-8"))
        message = f"invalid YAML: the character {chr(exc.character)!r} is not allowed in YAML"
        return Problem(source, "", message, None, *_line_column(raw, offset))
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    what = ", ".join(str(p) for p in parts if p) or str(exc).splitlines()[0]
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return Problem(source, "", f"invalid YAML: {what}")
    return Problem(source, "", f"invalid YAML: {what}", None, mark.line + 1, mark.column + 1)


def _problems_from(exc: ValidationError, source: str, schema: type[BaseModel]) -> list[Problem]:
    """pydantic's errors as plain sentences, one per problem (the value quoted briefly).

    A misspelt key whose suggestion is a required key missing beside it is one problem (the
    misspelling), not two; a list too short only because its items were refused is their
    problems alone.
    """
    errors = exc.errors()
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    misspelt = set()
    for e in errors:
        loc = tuple(e["loc"])
        if e["type"] == "extra_forbidden" and loc:
            best = suggest(str(loc[-1]), _keys_at(schema, loc[:-1]))
            if best is not None and (*loc[:-1], best) in missing:
                misspelt.add((*loc[:-1], best))
    # a list whose items were all refused is "too short" after validation: the items' own
    # problems say it, pydantic's count of what survived would only confuse
    parents = {tuple(e["loc"])[:i] for e in errors for i in range(len(e["loc"]))}
    consequence = {
        tuple(e["loc"]) for e in errors if e["type"] == "too_short" and tuple(e["loc"]) in parents
    }
    return [
        _problem_from(err, source, schema)
        for err in errors
        if tuple(err["loc"]) not in misspelt | consequence
    ]


def _problem_from(err: Any, source: str, schema: type[BaseModel]) -> Problem:
    loc = tuple(err["loc"])
    where = ".".join(str(part) for part in loc)
    key = str(loc[-1]) if loc else ""
    value = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        return Problem(source, where, unknown_name("key", key, _keys_at(schema, loc[:-1])), value)
    if kind == "missing":
        return Problem(source, where, f"missing required key {key!r}")
    if kind in ("literal_error", "enum"):
        expected = str(err.get("ctx", {}).get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        best = suggest(value, options) if isinstance(value, str) else None
        hint = f"; did you mean {best!r}?" if best is not None else ""
        return Problem(source, where, f"should be {expected}{hint}", value)
    if kind == "too_short":  # pydantic's "List should have at least 1 item after validation"
        ctx = err.get("ctx", {})
        least, got = ctx.get("min_length"), ctx.get("actual_length")
        what = f"at least {least} item{'' if least == 1 else 's'}"
        return Problem(source, where, f"should have {what}; it has {got}", value)
    msg = str(err["msg"]).removeprefix("Value error, ")
    msg = re.sub(r"a valid dictionary( or instance of \w+)?", "a mapping (key: value)", msg)
    msg = re.sub(r"^Input should be", "should be", msg)
    if value is None and kind != "value_error":
        msg += " (got null)"
    return Problem(source, where, msg, value)


def _keys_at(schema: type[BaseModel], path: tuple[Any, ...]) -> list[str]:
    """The keys a mapping at ``path`` (a pydantic ``loc``) of ``schema`` allows."""
    types: list[Any] = [schema]
    for part in path:
        after = [t for each in types for t in _step(each, part)]
        types = after or types  # a union member's tag in the loc: the same mapping
    return [
        field.alias or name
        for t in types
        for m in union_members(t)
        if isinstance(m, type) and issubclass(m, BaseModel)
        for name, field in m.model_fields.items()
    ]


def _step(t: Any, part: Any) -> list[Any]:
    """The annotation one ``loc`` part below ``t`` (a field, a dict value, a list item)."""
    out: list[Any] = []
    for m in union_members(t):
        origin, args = get_origin(m), get_args(m)
        if isinstance(m, type) and issubclass(m, BaseModel):
            out += [f.annotation for n, f in m.model_fields.items() if part in (n, f.alias)]
        elif origin is dict and isinstance(part, str) and len(args) == 2:
            out.append(args[1])
        elif origin in (tuple, list) and isinstance(part, int) and args:
            fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)
            out.append(args[part] if fixed and part < len(args) else args[0])
    return out


def parse(schema: type[S], data: Mapping[str, Any], source: str) -> S:
    """Validate ``data`` against ``schema``; every problem goes into one ConfigError.

    A value pydantic would silently coerce into a number or a flag (``true`` for a count,
    ``"100"`` for a weight, ``1`` for a flag) is a problem too (:mod:`controller.nocoerce`).

    A file of another kind (a site file where a scenario is expected) is one problem that
    names its kind and the commands that take it, not a list of missing keys.
    """
    coerced = coercions(schema, data)
    flagged = {".".join(loc) for loc, _, _ in coerced}
    try:
        model = schema.model_validate(data)
    except ValidationError as exc:
        wrong = _wrong_kind(schema, data, source)
        if wrong:
            raise ConfigError(wrong) from exc
        found = [p for p in _problems_from(exc, source, schema) if p.location not in flagged]
        raise ConfigError(_coercion_problems(coerced, source) + found) from exc
    if coerced:
        raise ConfigError(_coercion_problems(coerced, source))
    return model


def _coercion_problems(found: list[Coercion], source: str) -> list[Problem]:
    """Values pydantic would coerce into a number or a flag (:mod:`controller.nocoerce`)."""
    return [Problem(source, ".".join(loc), refusal(v, allowed), v) for loc, v, allowed in found]


def _wrong_kind(schema: type[BaseModel], data: Any, source: str) -> list[Problem]:
    expected = filekinds.kind_of_schema(schema.__name__)
    found = filekinds.detect(data) if isinstance(data, Mapping) else None
    if expected is None or found is None or found is expected:
        return []
    marks = yamlmarks.marks_for(source)
    mark = marks.find(filekinds.signature_key(data, found)) if marks is not None else None
    message = filekinds.wrong_kind(found, expected)
    return [Problem(source, "", message, None, *(mark or (None, None)))]


def resolve(base: Path, ref: str) -> Path:
    """A path written in a config file, relative to that file's folder."""
    p = Path(ref)
    return p if p.is_absolute() else (base.parent / p)


def existing(path: Path, source: str, key: str) -> Path:
    """``path`` as written, once :func:`real` found an existing file there (else its
    ConfigError, at ``source``'s ``key``). Loading by the path as written keeps a symlinked
    file's own relative references where they were written, as loading it always did."""
    real(path, source, key)
    return path


def real(path: Path, source: str, key: str) -> Path:
    """``path`` (written in ``source`` under ``key``) resolved to its real, absolute path.

    A symlink loop, a path the system cannot resolve, no file there, or a directory, is one
    ConfigError naming the file, the key and the path (where the missing file's own name
    alone said "cannot read file", not which file named it), never a RuntimeError or an
    OSError.
    """
    try:
        found = path.resolve()
    except (RuntimeError, OSError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else "a symlink loop"
        message = (
            f"cannot resolve the path: {why}; allowed: a path to an existing file "
            "(a symlink must end at a file, not loop)"
        )
        raise ConfigError([Problem(source, key, message, str(path))]) from exc
    if key and not found.is_file():
        what = "a directory, not a file" if found.is_dir() else "no such file"
        message = (
            f"{what}; allowed: a path to an existing file (a relative path is read from the "
            f"folder of {Path(source).name})"
        )
        raise ConfigError([Problem(source, key, message, str(found))])
    return found
