"""Monte Carlo blocks of a campaign: the true plant's parameters drawn, one case per draw.

A matrix block with ``monte_carlo: {draws: N, seed: S, parameters: ...}``
(:class:`hil.campaign.schema.MonteCarlo`) expands to N cases per combination of its factors.
Each parameter's law (:class:`Law`) is its plausible range in the plant file
(``plausible``), a ``[low, high]`` range (uniform) or a named distribution; the N parameter
sets are a Latin hypercube from ``S`` mapped through each law's quantile function
(:func:`draw`, shared with the probabilistic design space, :mod:`hil.design_space_mc`), and
draw ``k`` runs with its own noise seed (:func:`draw_seeds`). Everything is reproducible
from ``S``: the same file gives the same cases, byte for byte.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from controller.errors import Problem, unknown_name
from hil.campaign.schema import Distribution, MonteCarlo
from plant_models import PlantModel


@dataclass(frozen=True)
class Law:
    """How one parameter is drawn over ``[low, high]``: ``uniform``, ``triangular`` (peak
    at ``mode``) or ``normal`` (``mode`` is the mean, ``std`` the spread; truncated)."""

    distribution: str
    low: float
    high: float
    mode: float
    std: float = 0.0

    def quantile(self, q: float) -> float:
        """The value below which a share ``q`` (0..1) of the draws falls."""
        lo, mode, hi = self.low, self.mode, self.high
        if self.distribution == "triangular" and hi > lo:
            c = (mode - lo) / (hi - lo)
            return float(
                lo + math.sqrt(q * (hi - lo) * (mode - lo))
                if q < c
                else hi - math.sqrt((1 - q) * (hi - lo) * (hi - mode))
            )
        if self.distribution == "normal":
            from scipy.stats import truncnorm  # here: scipy.stats costs a worker 0.6 s to import

            a, b = (lo - mode) / self.std, (hi - mode) / self.std
            value = float(truncnorm.ppf(q, a, b, loc=mode, scale=self.std))
            return min(max(value, lo), hi)
        return float(lo + q * (hi - lo))


def draw(laws: dict[str, Law], n: int, seed: int) -> list[dict[str, float]]:
    """``n`` parameter sets: a Latin hypercube from ``seed`` through each law (names sorted)."""
    if not laws:
        return [{} for _ in range(n)]
    from scipy.stats import qmc  # here: scipy.stats costs a worker 0.6 s to import

    names = sorted(laws)
    u = qmc.LatinHypercube(d=len(names), seed=seed).random(n)
    return [{name: laws[name].quantile(row[k]) for k, name in enumerate(names)} for row in u]


def draw_seeds(seed: int, n: int) -> list[int]:
    """The noise seed of each of ``n`` draws: reproducible from ``seed``, independent of the
    parameter draws and of each other (numpy's SeedSequence)."""
    state = np.random.SeedSequence([seed, 0x4D43]).generate_state(n, dtype=np.uint32)
    return [int(s) & 0x7FFFFFFF for s in state]


def laws(
    mc: MonteCarlo, model: PlantModel, source: str, where: str
) -> tuple[dict[str, Law], list[Problem]]:
    """The law of every parameter ``mc`` draws, and a problem for every name or range that
    the plant model does not allow (a range must stay inside the plausible range)."""
    params = model.parameter_set.parameters
    ranged = {n for n, p in params.items() if math.isfinite(p.lower) and math.isfinite(p.upper)}
    if mc.parameters is None:  # plausible
        if not ranged:
            message = "the plant file gives no parameter a plausible range ('range: [low, high]')"
            return {}, [Problem(source, f"{where}.parameters", message, "plausible")]
        specs = {n: Distribution(distribution="plausible") for n in sorted(ranged)}
    else:
        specs = dict(mc.parameters)
    out: dict[str, Law] = {}
    problems: list[Problem] = []
    for name, spec in specs.items():
        at = f"{where}.parameters.{name}"
        if name not in params:
            message = unknown_name("parameter", name, sorted(params))
            problems.append(Problem(source, at, message, name))
            continue
        p = params[name]
        if spec.distribution == "plausible":
            if name not in ranged:
                message = "has no plausible range in the plant file (give 'range: [low, high]')"
                problems.append(Problem(source, at, message, name))
                continue
            out[name] = Law(mc.distribution, p.lower, p.upper, _clip(p.value, p.lower, p.upper))
            continue
        law = _explicit(spec, p.value)
        if name in ranged and not p.lower <= law.low < law.high <= p.upper:
            message = (
                f"[{law.low:g}, {law.high:g}] leaves the plausible range "
                f"[{p.lower:g}, {p.upper:g}] of the plant file"
            )
            problems.append(Problem(source, at, message, [law.low, law.high]))
            continue
        out[name] = law
    return out, problems


def _clip(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _explicit(spec: Distribution, value: float) -> Law:
    """The law of an explicit :class:`Distribution` (its centre by default: ``value``)."""
    low, high = float(spec.low or 0.0), float(spec.high or 0.0)  # both given (schema)
    centre = spec.mode if spec.distribution == "triangular" else spec.mean
    if centre is None:
        centre = _clip(value, low, high)
    return Law(spec.distribution, low, high, centre, spec.std or 0.0)
