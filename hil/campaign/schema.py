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
from typing import Annotated, Literal

from pydantic import Field, model_validator

from controller.configfile import Finite, PositiveFinite, Strict
from hil.campaign.checks import Criterion
from hil.faultspec import FaultSpec
from hil.scenario import Disturbance

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$"


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


class Block(Strict):
    """One product of factors: every combination of one variant per factor, times each seed."""

    description: str = ""
    factors: dict[str, dict[Annotated[str, Field(pattern=NAME)], Overlay]]
    seeds: tuple[Annotated[int, Field(ge=0)], ...] = (0,)
    #: the mode these cases need whatever the campaign's (``hil``: a fault that only real
    #: servers can carry out, such as comm_latency); None runs them in the campaign's mode
    mode: Literal["fast", "hil"] | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> Block:
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
    criteria: tuple[Criterion, ...]

    @model_validator(mode="after")
    def _unique(self) -> CampaignFile:
        ids = [c.id for c in self.criteria]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"requirement IDs must be unique; repeated: {dup}")
        if not self.matrix:
            raise ValueError("the matrix needs at least one block")
        return self
