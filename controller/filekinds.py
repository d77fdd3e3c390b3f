"""The kinds of config file the project ships, told apart by their top-level keys.

``configs/<folder>/*.yaml`` holds eight kinds. Four are read by the controller (site, tag
map, plant, controller) and four by the HIL tools (scenario, campaign, tuning, design space;
their loaders live in ``hil``, which nothing here imports). :func:`detect` names a file's kind
from the keys only it has, so that a file given where another kind is expected is named for
what it is, with the commands that take it (:func:`wrong_kind`), rather than reported as a
list of missing keys. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["KINDS", "FileKind", "detect", "kind_of_schema", "wrong_kind"]


@dataclass(frozen=True)
class FileKind:
    """One kind of config file."""

    name: str  # "site", "tag map", ...
    folder: str  # where the project keeps them: configs/<folder>/
    schema: str  # the name of the pydantic class that validates its top level
    signature: frozenset[str]  # top-level keys only this kind has (any one of them)
    commands: tuple[str, ...] = ()  # the commands that take such a file (FILE stands for it)
    named_by: str = ""  # the keys of other files that name such a file
    hil: bool = False  # loaded by the HIL tools (pharmatwin-hil), not by the controller

    @property
    def checker(self) -> str:
        """The command that checks such a file."""
        return f"{'pharmatwin-hil' if self.hil else 'pharmatwin'} check-config FILE"


KINDS: tuple[FileKind, ...] = (
    FileKind(
        "site",
        "sites",
        "SiteFile",
        frozenset({"connection"}),
        (
            "pharmatwin run FILE --mode shadow|closed-loop",
            "pharmatwin tags read FILE",
            "pharmatwin-hil serve FILE",
        ),
    ),
    FileKind(
        "plant",
        "plants",
        "PlantFile",
        frozenset({"model", "nominal_inputs", "initial_state"}),
        ("pharmatwin describe FILE",),
        "the 'plant:' key of a site, a scenario or a controller config",
    ),
    FileKind(
        "controller",
        "controllers",
        "ControllerConfig",
        frozenset({"horizon", "objective", "inputs", "collocation", "estimator"}),
        ("pharmatwin-hil compare FILE OTHER --scenarios ...",),
        "the 'controller:' key of a site or a scenario",
    ),
    FileKind(
        "scenario",
        "scenarios",
        "ScenarioConfig",
        frozenset({"true_plant", "recipe", "checks", "faults"}),
        ("pharmatwin-hil simulate FILE",),
        "the 'hil: scenario:' key of a site",
        hil=True,
    ),
    FileKind(
        "campaign",
        "campaigns",
        "CampaignFile",
        frozenset({"matrix", "criteria"}),
        ("pharmatwin-hil campaign run FILE",),
        hil=True,
    ),
    FileKind(
        "tuning",
        "tuning",
        "TuningFile",
        frozenset({"objectives", "search", "reject", "start"}),
        ("pharmatwin-hil tune FILE",),
        hil=True,
    ),
    FileKind(
        "design space",
        "design-space",
        "DesignSpaceFile",
        frozenset({"factors", "limits"}),
        ("pharmatwin-hil design-space FILE",),
        hil=True,
    ),
    FileKind(
        "tag map",
        "tags",
        "TagMap",
        frozenset(),  # 'tags' as a mapping, and nothing of a site (see detect)
        (),
        "the 'tags:' key of a site",
    ),
)

_BY_NAME = {k.name: k for k in KINDS}
_BY_SCHEMA = {k.schema: k for k in KINDS}


def kind(name: str) -> FileKind:
    """The kind called ``name`` (KeyError for none)."""
    return _BY_NAME[name]


def kind_of_schema(schema_name: str) -> FileKind | None:
    """The kind whose top level the pydantic class ``schema_name`` validates, if any."""
    return _BY_SCHEMA.get(schema_name)


def detect(data: Mapping[str, Any]) -> FileKind | None:
    """The kind a file's top-level mapping is, from the keys only that kind has; None when
    the keys match no kind (or more than one)."""
    keys = set(data)
    found = [k for k in KINDS if k.signature & keys]
    if not found and isinstance(data.get("tags"), Mapping):
        return _BY_NAME["tag map"]
    if len(found) == 1:
        return found[0]
    # a scenario names a controller or a recipe and runs for a duration; a controller has a
    # horizon: these two share keys with no other kind, so the keys decide between them
    names = {k.name for k in found}
    if names == {"controller", "scenario"}:
        return _BY_NAME["controller" if "horizon" in keys else "scenario"]
    if not found and {"controller", "duration"} <= keys and "connection" not in keys:
        return _BY_NAME["scenario"]
    return None


def signature_key(data: Mapping[str, Any], k: FileKind) -> str:
    """The first key of ``data`` that marks it as ``k`` ("" for none)."""
    if k.name == "tag map":
        return "tags"
    return next((key for key in data if key in k.signature), "")


def wrong_kind(found: FileKind, expected: FileKind) -> str:
    """The sentence for a file of kind ``found`` given where ``expected`` is needed."""
    text = f"this is a {found.name} file (see configs/{found.folder}/), not a {expected.name} file"
    if found.named_by:
        text += f"; name it in {found.named_by}"
    if found.commands:
        text += "; use it with " + " or ".join(f"`{c}`" for c in found.commands)
    return f"{text}; check it with `{found.checker}`"
