"""Where things are in a YAML file: the line and column of every key, for error messages.

PyYAML's composer builds a node tree whose nodes carry ``start_mark`` (0-based line and
column). :func:`load` parses a text once into both the plain Python data and a
:class:`Marks` table (key path -> 1-based line and column of the key, or of the item for a
sequence entry), and finds duplicate keys, which ``yaml.safe_load`` silently collapses to the
last one. :func:`Marks.find` maps a problem's dotted key path (``inputs.F.max_move``,
``faults.0.target``: the ``loc`` of a pydantic error joined with dots) onto the deepest key of
that path the file really has: a missing key points at its parent.

:func:`marks_for` gives the marks of a file on disk (cached by path, size and modification
time), so an error raised anywhere can point at the line of the file it names.
"""

from __future__ import annotations

import contextlib
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Duplicate", "Loaded", "Marks", "cache_key", "load", "marks_for", "remember"]

#: A key path: the keys (and sequence indices, as strings) from the document's root.
KeyPath = tuple[str, ...]
_MERGE = "<<"
_KEY_PATH = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*")
_CACHE_SIZE = 64
#: the largest file :func:`marks_for` parses by itself [bytes]
MAX_BYTES = 4_000_000
#: ``1e-4``, ``1.0e4``, ``-.5``, ``.5e3``: floats in YAML 1.2, strings in PyYAML's YAML 1.1
#: (which wants a dot and a signed exponent, and no sign before a leading dot); a config's
#: number is never meant as a string. Plain integers and YAML 1.1's own floats are resolved
#: before this (the earlier resolvers match first).
_EXPONENT = re.compile(
    r"^[-+]?(?:\.[0-9]+(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+)$"
)  # a leading dot or an exponent: digits alone (``0815``, a name) stay as YAML 1.1 has them


def _with_exponent_floats(base: Any) -> Any:
    """``base`` (a PyYAML safe loader class) that also reads :data:`_EXPONENT` as floats."""
    if base is None:
        return None
    loader: Any = type(f"Config{base.__name__}", (base,), {})
    loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT, list("-+.0123456789"))
    for first, resolvers in loader.yaml_implicit_resolvers.items():  # a copy: the class's own
        loader.yaml_implicit_resolvers[first] = [
            (tag, _INT if tag == _INT_TAG else rx) for tag, rx in resolvers
        ]
    return loader


_FLOAT_TAG, _STR_TAG = "tag:yaml.org,2002:float", "tag:yaml.org,2002:str"
#: YAML 1.1's integers without its octal form: ``010`` was 8 (``horizon: 010`` ran 8
#: intervals); with a leading zero it is text, which a number field refuses, named
_INT_TAG = "tag:yaml.org,2002:int"
_INT = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+
    |[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$""",
    re.X,
)


#: libyaml's safe loader (None without libyaml) and PyYAML's own, each reading 1e-4 as a
#: number; and what PyYAML's reader refuses
_FAST_LOADER: Any = _with_exponent_floats(getattr(yaml, "CSafeLoader", None))
_SAFE_LOADER: Any = _with_exponent_floats(yaml.SafeLoader)
_NON_PRINTABLE = yaml.reader.Reader.NON_PRINTABLE


@dataclass(frozen=True)
class Duplicate:
    """A key given twice in one mapping (YAML keeps only the last)."""

    path: KeyPath
    line: int
    column: int
    first_line: int


@dataclass(frozen=True)
class Marks:
    """Key path -> (line, column), both 1-based; ``()`` is the document's root."""

    at: dict[KeyPath, tuple[int, int]] = field(default_factory=dict)

    def find(self, location: str) -> tuple[int, int] | None:
        """The line and column of the deepest key of the dotted ``location`` the file has.

        ``""`` is the root, and so is a key path whose first key the file does not have (a
        missing top-level key belongs in the root mapping). Free text that is no key path
        (``--historian``, ``line 3``) has no mark: a guess would point at the wrong line.
        """
        if not location:
            return self.at.get(())
        if not _KEY_PATH.fullmatch(location):
            return None
        parts = location.split(".")
        path: KeyPath = ()
        found: tuple[int, int] | None = None
        i = 0
        while i < len(parts):
            for j in range(len(parts), i, -1):  # the longest key first: keys may hold dots
                candidate = (*path, ".".join(parts[i:j]))
                if candidate in self.at:
                    path, found, i = candidate, self.at[candidate], j
                    break
            else:
                break
        return found or self.at.get(())


@dataclass(frozen=True)
class Loaded:
    """A parsed YAML text: its data, the marks of its keys, and the keys it repeats."""

    data: Any
    marks: Marks
    duplicates: tuple[Duplicate, ...]


def load(text: str) -> Loaded:
    """Parse one YAML document (safe tags only) into data and marks.

    Raises ``yaml.YAMLError`` (with ``problem_mark``) on a syntax error, as PyYAML does. The
    text is parsed by libyaml when PyYAML has it (about 3x faster); a text libyaml refuses,
    or one holding a character PyYAML's own reader refuses, is parsed again by the pure-Python
    parser, so that data, marks and error messages are exactly PyYAML's.
    """
    if _FAST_LOADER is not None and not _NON_PRINTABLE.search(text):
        with contextlib.suppress(yaml.YAMLError):
            return _load(text, _FAST_LOADER)
    return _load(text, _SAFE_LOADER)


def _load(text: str, loader_class: Any) -> Loaded:
    """:func:`load` with one loader class (libyaml's or PyYAML's pure-Python one)."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        marks: dict[KeyPath, tuple[int, int]] = {}
        duplicates: list[Duplicate] = []
        if node is not None:
            marks[()] = _mark(node)
            _walk(node, (), marks, duplicates, set())
        # constructing flattens merge keys ('<<') in place: walk the node tree first
        data = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    return Loaded(data, Marks(marks), tuple(duplicates))


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _walk(
    node: yaml.Node,
    path: KeyPath,
    marks: dict[KeyPath, tuple[int, int]],
    duplicates: list[Duplicate],
    seen: set[int],
) -> None:
    if id(node) in seen:  # an alias of a node already walked (or a recursive one)
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.value == _MERGE:
                continue
            if key.tag == _FLOAT_TAG and not key.style and _EXPONENT.match(key.value):
                key.tag = _STR_TAG  # a key (a level's name) stays text, as YAML 1.1 had it
            here = (*path, str(key.value))
            if here in marks:
                first = marks[here][0]
                duplicates.append(Duplicate(here, *_mark(key), first_line=first))
            else:
                marks[here] = _mark(key)
            _walk(value, here, marks, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            here = (*path, str(i))
            marks[here] = _mark(item)
            _walk(item, here, marks, duplicates, seen)


_cache: OrderedDict[tuple[str, int, int], Marks | None] = OrderedDict()


def marks_for(file: str) -> Marks | None:
    """The marks of the YAML file ``file`` names; None when it is no readable YAML text.

    A file the config reader parsed is never read again; any other is parsed here only if
    it is named ``*.yaml``/``*.yml`` and not over :data:`MAX_BYTES` (an error about a
    database or a log file must not read it).
    """
    path = Path(file)
    key = cache_key(path)
    if key is None or not path.is_file():
        return None
    if key in _cache:
        _cache.move_to_end(key)
        return _cache[key]
    if path.suffix.lower() not in (".yaml", ".yml") or key[1] > MAX_BYTES:
        return None
    try:
        marks: Marks | None = load(path.read_text(encoding="utf-8")).marks
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        marks = None
    remember(key, marks)
    return marks


def remember(key: tuple[str, int, int], marks: Marks | None) -> None:
    """Keep the marks of a file just parsed (the config reader parses it anyway)."""
    _cache[key] = marks
    _cache.move_to_end(key)
    while len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)


def cache_key(path: Path) -> tuple[str, int, int] | None:
    """The cache key of a file as it is now (None when it cannot be stat'ed)."""
    try:
        stat = path.stat()
    except (OSError, ValueError):
        return None
    return (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
