"""The cases of a campaign: its scenario matrix expanded into plain-data scenarios.

Each block of the matrix is the product of its factors (one variant per factor) times each
seed, or times each draw of its Monte Carlo parameters (:mod:`hil.campaign.montecarlo`; the
draw, with its own seed and its parameters, is part of the case). A case's scenario is the
base HIL scenario with every chosen variant's overlay merged in (:func:`merge_overlay`); its
criteria are those that apply to its factors (:func:`applies`).
A :class:`Case` is what a worker receives.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import Any

from controller.errors import Problem
from hil.campaign import montecarlo
from hil.campaign.checks import Criterion, FallbackWithin
from hil.campaign.schema import Block, CampaignFile, Overlay
from plant_models import PlantModel


@dataclass(frozen=True)
class Case:
    """One scenario of a campaign, as plain data (what a worker receives)."""

    id: str
    index: int
    factors: dict[str, str]
    seed: int
    scenario: dict[str, Any]  # a complete scenario file's content (absolute plant path)
    controller_loss_at: float | None
    criteria: tuple[str, ...]  # the requirement IDs that apply
    mode: str | None = None  # the mode this case needs (None: the campaign's)
    #: a Monte Carlo draw: its index, the block's draw count and seed, the drawn parameters
    draw: dict[str, Any] | None = None

    def run_mode(self, campaign_mode: str) -> str:
        """The mode this case runs in: its own if it needs one, else the campaign's."""
        return self.mode or campaign_mode

    def to_json(self) -> dict[str, Any]:
        out = {
            "mode": self.mode,
            "id": self.id,
            "index": self.index,
            "factors": dict(self.factors),
            "seed": self.seed,
            "scenario": self.scenario,
            "controller_loss_at": self.controller_loss_at,
            "criteria": list(self.criteria),
        }
        if self.draw is not None:  # only then: the digests of other cases stay as they were
            out["draw"] = self.draw
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Case:
        return cls(
            id=data["id"],
            index=int(data["index"]),
            factors=dict(data["factors"]),
            seed=int(data["seed"]),
            scenario=data["scenario"],
            controller_loss_at=data["controller_loss_at"],
            criteria=tuple(data["criteria"]),
            mode=data.get("mode"),
            draw=data.get("draw"),
        )

    @property
    def digest(self) -> str:
        """A hash of everything that defines the case (a changed case is run again)."""
        text = json.dumps(self.to_json(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def merge_overlay(base: dict[str, Any], overlay: Overlay) -> None:
    """Merge ``overlay`` into the scenario ``base`` in place (mappings merged, lists appended)."""
    tp = base.setdefault("true_plant", {})
    for key in ("parameters", "initial_state", "noise_std"):
        extra = getattr(overlay, key)
        if extra:
            tp[key] = {**tp.get(key, {}), **extra}
    if overlay.disturbances:
        tp["disturbances"] = [
            *tp.get("disturbances", []),
            *(d.model_dump() for d in overlay.disturbances),
        ]
    if overlay.faults:
        base["faults"] = [
            *base.get("faults", []),
            *(f.model_dump(exclude_defaults=True) for f in overlay.faults),
        ]


def applies(c: Criterion, factors: dict[str, str], loss: float | None) -> bool:
    """Whether ``c`` judges a case with these factors (a fallback check needs a loss)."""
    if isinstance(c.check, FallbackWithin) and loss is None:
        return False
    return all(factors.get(f) in allowed for f, allowed in c.applies_to.items())


def expand_matrix(
    spec: CampaignFile, base: dict[str, Any], source: str, model: PlantModel
) -> tuple[list[Case], list[Problem]]:
    """Every case of the matrix, in matrix order, and a problem for each repeated combination
    and each parameter a Monte Carlo block cannot draw (``model``: the true plant's)."""
    cases: list[Case] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for b, block in enumerate(spec.matrix):
        draws, more = _draws(block, model, source, f"matrix.{b}")
        problems += more
        for factors, overlays, seed in _combinations(block):
            for drawn in draws:
                key = json.dumps([factors, seed, drawn], sort_keys=True)
                if key in seen:
                    problems.append(
                        Problem(source, f"matrix.{b}", "this combination repeats another", key)
                    )
                seen.add(key)
                sd = seed if drawn is None else drawn["seed"]
                cases.append(_case(spec, base, len(cases), factors, overlays, sd, block, drawn))
    return cases, problems


def _draws(
    block: Block, model: PlantModel, source: str, where: str
) -> tuple[list[dict[str, Any] | None], list[Problem]]:
    """The draws of a Monte Carlo block (``[None]`` for any other block), and its problems:
    names and ranges the model refuses, and parameters that a variant of the block also sets."""
    mc = block.monte_carlo
    if mc is None:
        return [None], []
    laws, problems = montecarlo.laws(mc, model, source, f"{where}.monte_carlo")
    for factor, variants in block.factors.items():
        for variant, overlay in variants.items():
            for name in sorted(set(overlay.parameters) & set(laws)):
                message = f"parameter {name!r} is drawn by monte_carlo and set by this variant"
                problems.append(Problem(source, f"{where}.factors.{factor}.{variant}", message))
    if problems:
        return [], problems
    values = montecarlo.draw(laws, mc.draws, mc.seed)
    seeds = montecarlo.draw_seeds(mc.seed, mc.draws)
    return [
        {"index": k, "draws": mc.draws, "block_seed": mc.seed, "seed": seeds[k],
         "parameters": values[k]}
        for k in range(mc.draws)
    ], []  # fmt: skip


def _combinations(block: Block) -> list[tuple[dict[str, str], list[Overlay], int]]:
    """(factor -> variant, the variants' overlays, seed) for every case of ``block`` (a Monte
    Carlo block's seeds come with its draws)."""
    names = list(block.factors)
    seeds = block.seeds if block.monte_carlo is None else (0,)
    out = []
    for combo in itertools.product(*(block.factors[n].items() for n in names)):
        factors = {name: variant for name, (variant, _) in zip(names, combo, strict=True)}
        overlays = [overlay for _, overlay in combo]
        out += [(factors, overlays, seed) for seed in seeds]
    return out


def _case(
    spec: CampaignFile,
    base: dict[str, Any],
    index: int,
    factors: dict[str, str],
    overlays: list[Overlay],
    seed: int,
    block: Block,
    drawn: dict[str, Any] | None = None,
) -> Case:
    """Case number ``index``: the base scenario with ``overlays`` (and a Monte Carlo draw's
    parameters) merged, named and seeded."""
    sc = json.loads(json.dumps(base))
    loss: float | None = None
    for overlay in overlays:
        merge_overlay(sc, overlay)
        if overlay.controller_loss_at is not None:
            loss = overlay.controller_loss_at
    label = "-".join(factors.values()) or ("mc" if drawn is not None else "base")
    if drawn is None:
        case_id = f"c{index:03d}-{label}-s{seed}"
    else:
        width = len(str(drawn["draws"] - 1))
        case_id = f"c{index:03d}-{label}-d{drawn['index']:0{width}d}"
        tp = sc.setdefault("true_plant", {})
        tp["parameters"] = {**tp.get("parameters", {}), **drawn["parameters"]}
    sc["name"] = case_id
    sc["description"] = f"{spec.name}: " + ", ".join(f"{k}={v}" for k, v in factors.items())
    if drawn is not None:
        sc["description"] += f" (Monte Carlo draw {drawn['index']} of {drawn['draws']})"
    sc.setdefault("true_plant", {})["seed"] = seed
    if spec.duration is not None:
        sc["duration"] = spec.duration
    applying = tuple(c.id for c in spec.criteria if applies(c, factors, loss))
    return Case(case_id, index, dict(factors), seed, sc, loss, applying, block.mode, drawn)
