"""Fed-batch bioreactor, penicillin-type with Haldane (substrate-inhibited) kinetics.

Source: the batch bioreactor example shipped with do-mpc (the problem of Srinivasan et al.).
Time in hours; concentrations in g/L; volume in L; feed in L/h. Online estimation targets:
``S_in`` (raw-material drift in the feed) and ``Y_x``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from plant_models.base import PlantModel
from plant_models.domains import NON_NEGATIVE, POSITIVE, Interval
from plant_models.variables import Role, SymMap, Variable

_INF = float("inf")


class Bioreactor(PlantModel):
    """Haldane-kinetics fed-batch bioreactor: states X, S, P, V; input feed u."""

    name: ClassVar[str] = "bioreactor"
    time_unit: ClassVar[str] = "h"
    description: ClassVar[str] = "Fed-batch bioreactor, penicillin-type, Haldane kinetics"
    variables: ClassVar[tuple[Variable, ...]] = (
        # validity: concentrations >= 0, except S: the source's product term v*X/Y_p does not
        # stop at S = 0, so a starved culture's S goes slightly negative, and the source
        # (do-mpc's example) accepts S down to -0.01 g/L; below that the model is invalid (a
        # plant fault). S < 0 is also outside the operating limits, so KPIs count it.
        # Operating limits (do-mpc's optimizer bounds): X <= 3.7 stands in for the
        # oxygen-transfer limit, P <= 3.0; they are constraints, not physics.
        Variable("X", "g/L", Role.STATE, 0.0, _INF, "biomass concentration", operating=(0.0, 3.7)),
        Variable(
            "S", "g/L", Role.STATE, -0.01, _INF, "substrate concentration", operating=(0.0, _INF)
        ),
        Variable(
            "P", "g/L", Role.STATE, 0.0, _INF, "product (titer) concentration", operating=(0.0, 3.0)
        ),
        Variable("V", "L", Role.STATE, 0.0, float("inf"), "broth volume", scale=100.0),
        Variable("u", "L/h", Role.INPUT, 0.0, 0.2, "substrate feed flow"),
        Variable("X_meas", "g/L", Role.OUTPUT, description="biomass, online (capacitance probe)"),
        Variable("S_meas", "g/L", Role.OUTPUT, description="substrate, online analyser"),
        Variable("P_meas", "g/L", Role.OUTPUT, description="product titer, online HPLC"),
        Variable("V_meas", "L", Role.OUTPUT, description="volume from load cells", scale=100.0),
    )
    expression_units: ClassVar[Mapping[str, str]] = {
        "growth_rate": "1/h",
        "titer": "g/L",
        "product_mass": "g",
    }
    parameter_units: ClassVar[Mapping[str, str]] = {
        "mu_m": "1/h",
        "K_m": "g/L",
        "K_i": "g/L",
        "v": "1/h",
        "Y_p": "-",
        "Y_x": "-",
        "S_in": "g/L",
    }
    #: where the equations hold (a density, an area, a rate constant ... is positive)
    parameter_domain: ClassVar[Mapping[str, Interval]] = {
        **dict.fromkeys(("mu_m", "K_m", "K_i", "Y_p", "Y_x"), POSITIVE),
        **dict.fromkeys(("v", "S_in"), NON_NEGATIVE),
    }

    def ode(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        X, S, P, V = x["X"], x["S"], x["P"], x["V"]
        mu = self._mu(S, p)
        dilution = u["u"] / V
        return {
            "X": mu * X - dilution * X,
            "S": -mu * X / p["Y_x"] - p["v"] * X / p["Y_p"] + dilution * (p["S_in"] - S),
            "P": p["v"] * X - dilution * P,
            "V": u["u"],
        }

    @staticmethod
    def _mu(S: Any, p: SymMap) -> Any:
        return p["mu_m"] * S / (p["K_m"] + S + S**2 / p["K_i"])

    def outputs(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        return {"X_meas": x["X"], "S_meas": x["S"], "P_meas": x["P"], "V_meas": x["V"]}

    def expressions(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        return {
            "growth_rate": self._mu(x["S"], p),
            "titer": x["P"],
            "product_mass": x["P"] * x["V"],
        }
