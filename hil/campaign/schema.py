"""The schema of a campaign file (``configs/campaigns/<name>.yaml``): site, matrix, criteria.

A campaign names the site under test (its controller, tag map, PLC behaviour and base HIL
scenario), optionally another controller config to test on that site, a scenario matrix and
the acceptance criteria::

    name: lyophilizer-oq
    site: ../sites/lyophilizer-modbus.yaml
    matrix:                      # a list of blocks; each block is the product of its factors
      - factors:
          mismatch:              # factor -> variant -> overlay on the base scenario
            nominal: {}
            R0-high: {parameters: {R0: 2.0}}
          faults:
            none: {}
            bias: {faults: [{kind: sensor_bias, target: Tbot, start: 2.0, magnitude: 1.0}]}
        seeds: [1, 2]
      - factors: {faults: {none: {}}}
        monte_carlo:             # 100 cases: the plant's parameters drawn, each with a seed
          draws: 100
          seed: 7
          parameters: plausible  # or e.g. {R0: [0.5, 3.0], KC: plausible, KP: {distribution:
                                 #   normal, low: 5.0e-4, high: 1.3e-3, std: 2.0e-4}}
    criteria:
      - id: REQ-SAFE-01
        description: No setpoint outside its limits
        check: {kind: setpoints_within_limits, limits: {Tsh: [-45, 120]}}

An overlay changes the true plant of the base scenario: ``parameters`` (plant-model
mismatch), ``initial_state``, ``noise_std`` (merged), ``disturbances`` and ``faults``
(appended), and ``controller_loss_at`` (the controller process is lost at that time). Checks
are a fixed set of named kinds (:data:`hil.campaign.checks.Check`). Times are in the plant
model's time unit. Loading and checking a file against its site is :mod:`hil.campaign.spec`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from controller.configfile import NAME, Finite, PositiveFinite, Strict
from hil.campaign.checks import Criterion
from hil.faultspec import FaultSpec
from hil.scenario import Disturbance

#: The most Monte Carlo draws: a campaign's, and a design-space point's (``--monte-carlo``).
MAX_DRAWS = 100_000


class Overlay(Strict):
    """What one variant of a factor changes in the base scenario's true plant."""

    description: str = ""
    parameters: dict[str, Finite] = Field(default_factory=dict)
    initial_state: dict[str, Finite] = Field(default_factory=dict)
    noise_std: dict[str, Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(
        default_factory=dict
    )
    disturbances: tuple[Disturbance, ...] = ()
    faults: tuple[FaultSpec, ...] = ()
    controller_loss_at: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class Distribution(Strict):
    """How one parameter is drawn: over its plausible range in the plant file (``plausible``,
    with the block's distribution), or over ``[low, high]`` uniformly, triangularly (peak at
    ``mode``, default the plant file's value) or normally (``mean``, default the plant file's
    value, and ``std``), truncated to ``[low, high]``. ``[low, high]`` is short for uniform."""

    distribution: Literal["plausible", "uniform", "triangular", "normal"] = "uniform"
    low: Finite | None = None
    high: Finite | None = None
    mode: Finite | None = None
    mean: Finite | None = None
    std: PositiveFinite | None = None

    @model_validator(mode="before")
    @classmethod
    def _short_forms(cls, data: Any) -> Any:
        if data == "plausible":
            return {"distribution": "plausible"}
        if isinstance(data, list | tuple):
            if len(data) != 2:
                raise ValueError(f"give [low, high], got {list(data)}")
            return {"low": data[0], "high": data[1]}
        if isinstance(data, str):
            raise ValueError("should be 'plausible', [low, high] or a mapping (distribution: ...)")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        given = {k for k in ("low", "high", "mode", "mean", "std") if getattr(self, k) is not None}
        if self.distribution == "plausible":
            if given:
                raise ValueError(f"'plausible' takes the plant file's range: drop {sorted(given)}")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"[low, high] needs low < high, got [{self.low}, {self.high}]")
        for key in ("mode", "mean"):
            v = getattr(self, key)
            if v is not None and not self.low <= v <= self.high:
                raise ValueError(f"{key} {v} lies outside [low, high] = [{self.low}, {self.high}]")
        if (self.distribution == "normal") != (self.std is not None):
            raise ValueError("give 'std' for a normal distribution, and only for it")
        if self.mode is not None and self.distribution != "triangular":
            raise ValueError("'mode' is for a triangular distribution only")
        if self.mean is not None and self.distribution != "normal":
            raise ValueError("'mean' is for a normal distribution only")
        return self


class MonteCarlo(Strict):
    """Draws of the true plant's parameters: each draw is one case with its own seed.

    ``parameters: plausible`` (the default) draws every parameter that has a plausible range in
    the plant file; a mapping names the parameters and how each is drawn
    (:class:`Distribution`). The draws are a Latin hypercube from ``seed``
    (:mod:`hil.campaign.montecarlo`), reproducible from it.
    """

    draws: Annotated[int, Field(ge=1, le=MAX_DRAWS)]
    seed: Annotated[int, Field(ge=0)] = 0
    distribution: Literal["uniform", "triangular"] = "uniform"  # of ``plausible`` parameters
    parameters: dict[str, Distribution] | None = None  # None: ``plausible``

    @field_validator("parameters", mode="before")
    @classmethod
    def _plausible(cls, value: Any) -> Any:
        if value == "plausible":
            return None
        if isinstance(value, str) or value is None:
            raise ValueError("should be 'plausible' or a mapping parameter -> how it is drawn")
        if isinstance(value, dict) and not value:
            raise ValueError("name at least one parameter to draw, or write 'plausible'")
        return value


class Block(Strict):
    """One product of factors: every combination of one variant per factor, times each seed
    (or, with ``monte_carlo``, times each draw: a draw brings its own seed)."""

    description: str = ""
    factors: dict[str, dict[Annotated[str, Field(pattern=NAME)], Overlay]] = Field(
        default_factory=dict
    )
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = (0,)
    monte_carlo: MonteCarlo | None = None
    #: the mode these cases need whatever the campaign's (``hil``: a fault that only real
    #: servers can carry out, such as comm_latency); None runs them in the campaign's mode
    mode: Literal["fast", "hil"] | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> Block:
        if self.monte_carlo is None and "factors" not in self.model_fields_set:
            raise ValueError("a block needs 'factors' or 'monte_carlo'")
        if self.monte_carlo is not None and "seeds" in self.model_fields_set:
            raise ValueError("a monte_carlo block draws a seed per draw: drop 'seeds'")
        for name, variants in self.factors.items():
            if not re.match(NAME, name):
                raise ValueError(f"factor name {name!r} must match {NAME}")
            if not variants:
                raise ValueError(f"factor {name!r} has no variants")
        if not self.seeds:
            raise ValueError("give at least one seed")
        return self


class HilSettings(Strict):
    """The HIL mode's clock: process seconds per wall second."""

    rate: PositiveFinite = 1000.0


class CampaignFile(Strict):
    """A whole campaign file: the site under test, the matrix and the acceptance criteria."""

    name: Annotated[str, Field(pattern=NAME)]
    description: str = ""
    site: str
    controller: str | None = None  # another controller config to test on the site
    duration: PositiveFinite | None = None  # overrides the base scenario's (model time unit)
    mode: Literal["fast", "hil"] = "fast"
    hil: HilSettings = HilSettings()
    retries: Annotated[int, Field(ge=0, le=10)] = 2  # a case whose worker is lost is rerun
    matrix: tuple[Block, ...]
    criteria: tuple[Criterion, ...]  # a campaign needs some (spec.load_campaign)

    @model_validator(mode="after")
    def _unique(self) -> CampaignFile:
        ids = [c.id for c in self.criteria]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"requirement IDs must be unique; repeated: {dup}")
        if not self.matrix:
            raise ValueError("the matrix needs at least one block")
        return self
