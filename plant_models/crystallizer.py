"""Seeded batch cooling crystallization of potassium sulfate in water (method of moments).

States are per g of solvent: the concentration ``C`` [g/g], the seed-crystal moments
``mu0..mu3`` and the nucleated-crystal moments ``mu0n..mu3n`` (size in um, so mu_k is in
um^k/g). Time in s; the input is the temperature ``T`` [K], which must never rise (the
controller's move limit ``max_rise: 0`` enforces it). The moments span ten orders of
magnitude, so every state carries a ``scale``; integrators and optimizers work on scaled
states. Online estimation targets: ``kg``, ``kb`` and the solubility offset ``dCs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import casadi as ca

from plant_models.base import PlantModel
from plant_models.domains import NON_NEGATIVE, POSITIVE, Interval
from plant_models.smooth import positive_part
from plant_models.variables import Role, SymMap, Variable

_KELVIN = 273.15
_INF = float("inf")


def _moment(name: str, unit: str, scale: float, what: str) -> Variable:
    return Variable(name, unit, Role.STATE, 0.0, _INF, what, scale=scale)


class Crystallizer(PlantModel):
    """Seeded K2SO4 cooling crystallizer: concentration and seed/nuclei moments; input T."""

    name: ClassVar[str] = "crystallizer"
    time_unit: ClassVar[str] = "s"
    description: ClassVar[str] = "Seeded batch cooling crystallizer (K2SO4/water), moments"
    variables: ClassVar[tuple[Variable, ...]] = (
        Variable("C", "g/g", Role.STATE, 0.0, 1.0, "solute concentration", scale=0.1),
        _moment("mu0", "#/g", 1e2, "seed zeroth moment (number)"),
        _moment("mu1", "um/g", 1e4, "seed first moment"),
        _moment("mu2", "um^2/g", 1e7, "seed second moment"),
        _moment("mu3", "um^3/g", 1e9, "seed third moment (volume)"),
        _moment("mu0n", "#/g", 1e3, "nucleated zeroth moment (number)"),
        _moment("mu1n", "um/g", 1e5, "nucleated first moment"),
        _moment("mu2n", "um^2/g", 1e7, "nucleated second moment"),
        _moment("mu3n", "um^3/g", 1e9, "nucleated third moment (volume)"),
        Variable("T", "K", Role.INPUT, 293.15, 333.15, "crystallizer temperature", scale=100.0),
        Variable("C_meas", "g/g", Role.OUTPUT, description="concentration, ATR-FTIR", scale=0.1),
        Variable("count_meas", "#/g", Role.OUTPUT, description="particle count, FBRM", scale=1e2),
    )
    expression_units: ClassVar[Mapping[str, str]] = {
        "supersaturation": "-",
        "growth_rate": "um/s",
        "nucleation_rate": "#/g/s",
        "solubility": "g/g",
        "metastable_limit": "g/g",
        "above_solubility": "g/g",
        "below_metastable": "g/g",
        "seed_growth": "um^3/g",
        "seed_mean_size": "um",
        "mean_size_with_fines": "um",
        "fines_volume": "um^3/g",
    }
    parameter_units: ClassVar[Mapping[str, str]] = {
        "cs0": "g/g",
        "cs1": "g/g/K",
        "cs2": "g/g/K^2",
        "cm0": "g/g",
        "cm1": "g/g/K",
        "cm2": "g/g/K^2",
        "dCs": "g/g",
        "rho": "g/um^3",
        "kv": "-",
        "kb": "#/um^3/s",
        "b": "-",
        "Eb_R": "K",
        "kg": "um/s",
        "g": "-",
        "Eg_R": "K",
    }
    #: where the equations hold (a density, an area, a rate constant ... is positive)
    parameter_domain: ClassVar[Mapping[str, Interval]] = {
        **dict.fromkeys(("rho", "kv"), POSITIVE),
        **dict.fromkeys(("kb", "b", "kg", "g"), NON_NEGATIVE),
    }

    @staticmethod
    def solubility(T: Any, p: SymMap) -> Any:
        """Cs(T) [g/g], including the estimated offset ``dCs``."""
        t = T - _KELVIN
        return p["cs0"] + p["cs1"] * t + p["cs2"] * t**2 + p["dCs"]

    @staticmethod
    def metastable_limit(T: Any, p: SymMap) -> Any:
        """Cm(T) [g/g], the metastable limit."""
        t = T - _KELVIN
        return p["cm0"] + p["cm1"] * t + p["cm2"] * t**2

    def _kinetics(self, x: SymMap, u: SymMap, p: SymMap) -> tuple[Any, Any, Any]:
        T = u["T"]
        Cs = self.solubility(T, p)
        S = positive_part((x["C"] - Cs) / Cs, smooth=self.smooth, eps=1e-5)
        G = p["kg"] * ca.exp(-p["Eg_R"] / T) * S ** p["g"]
        B = p["kb"] * ca.exp(-p["Eb_R"] / T) * S ** p["b"] * (x["mu3"] + x["mu3n"])
        return S, G, B

    def ode(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        _, G, B = self._kinetics(x, u, p)
        return {
            "C": -3 * p["rho"] * p["kv"] * G * (x["mu2"] + x["mu2n"]),
            "mu0": 0 * G,
            "mu1": G * x["mu0"],
            "mu2": 2 * G * x["mu1"],
            "mu3": 3 * G * x["mu2"],
            "mu0n": B,
            "mu1n": G * x["mu0n"],
            "mu2n": 2 * G * x["mu1n"],
            "mu3n": 3 * G * x["mu2n"],
        }

    def outputs(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        return {"C_meas": x["C"], "count_meas": x["mu0"] + x["mu0n"]}

    def expressions(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        S, G, B = self._kinetics(x, u, p)
        Cs, Cm = self.solubility(u["T"], p), self.metastable_limit(u["T"], p)
        return {
            "supersaturation": S,
            "growth_rate": G,
            "nucleation_rate": B,
            "solubility": Cs,
            "metastable_limit": Cm,
            "above_solubility": x["C"] - Cs,
            "below_metastable": Cm - x["C"],
            "seed_growth": x["mu3"] - x["mu3n"],
            # number-mean sizes: of the seed population alone (the product), and of seeds and
            # fines together (what an FBRM-like count sees)
            "seed_mean_size": x["mu1"] / x["mu0"],
            "mean_size_with_fines": (x["mu1"] + x["mu1n"]) / (x["mu0"] + x["mu0n"]),
            "fines_volume": x["mu3n"],
        }
