"""Jacketed CSTR for API synthesis: the van de Vusse reaction A -> B -> C, 2A -> D.

Source: Klatt & Engell; the CSTR example shipped with do-mpc. Time in hours, concentrations
in mol/L, temperatures in degC, feed F as a dilution rate [1/h], jacket duty Q_dot [kJ/h].
Online estimation targets: ``Kw`` (jacket fouling), ``C_A0`` (feed strength), ``alpha`` and
``beta`` (catalyst drift).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import casadi as ca

from plant_models.base import PlantModel
from plant_models.domains import NON_NEGATIVE, POSITIVE, Interval
from plant_models.variables import Role, SymMap, Variable

_INF = float("inf")


class VanDeVusseCSTR(PlantModel):
    """Jacketed van de Vusse CSTR: states C_a, C_b, T_R, T_K; inputs F, Q_dot."""

    name: ClassVar[str] = "cstr"
    time_unit: ClassVar[str] = "h"
    description: ClassVar[str] = "Jacketed CSTR, van de Vusse kinetics (Klatt & Engell)"
    variables: ClassVar[tuple[Variable, ...]] = (
        # validity: concentrations >= 0, temperatures above absolute zero. The operating limits
        # are do-mpc's optimizer bounds; the classic design point (C_a = 2.14) lies outside them.
        Variable(
            "C_a",
            "mol/L",
            Role.STATE,
            0.0,
            _INF,
            "concentration of reactant A",
            operating=(0.1, 2.0),
        ),
        Variable(
            "C_b",
            "mol/L",
            Role.STATE,
            0.0,
            _INF,
            "concentration of product B (the API)",
            operating=(0.1, 2.0),
        ),
        Variable(
            "T_R",
            "degC",
            Role.STATE,
            -273.15,
            _INF,
            "reactor temperature",
            scale=100.0,
            operating=(50.0, 140.0),
        ),
        Variable(
            "T_K",
            "degC",
            Role.STATE,
            -273.15,
            _INF,
            "jacket temperature",
            scale=100.0,
            operating=(50.0, 140.0),
        ),
        Variable("F", "1/h", Role.INPUT, 5.0, 100.0, "feed dilution rate", scale=10.0),
        Variable("Q_dot", "kJ/h", Role.INPUT, -8500.0, 0.0, "jacket heat duty", scale=1000.0),
        Variable("C_a_meas", "mol/L", Role.OUTPUT, description="A, online analyser"),
        Variable("C_b_meas", "mol/L", Role.OUTPUT, description="B, online analyser"),
        Variable("T_R_meas", "degC", Role.OUTPUT, description="reactor temperature", scale=100.0),
        Variable("T_K_meas", "degC", Role.OUTPUT, description="jacket temperature", scale=100.0),
    )
    expression_units: ClassVar[Mapping[str, str]] = {
        "k1": "1/h",
        "k2": "1/h",
        "k3": "L/mol/h",
        "selectivity_b": "mol/L/h",
    }
    parameter_units: ClassVar[Mapping[str, str]] = {
        "k0_ab": "1/h",
        "k0_ad": "L/mol/h",
        "E_R_ab": "K",
        "E_R_ad": "K",
        "H_ab": "kJ/mol",
        "H_bc": "kJ/mol",
        "H_ad": "kJ/mol",
        "rho": "kg/L",
        "Cp": "kJ/kg/K",
        "Cp_k": "kJ/kg/K",
        "A_R": "m^2",
        "V_R": "L",
        "m_k": "kg",
        "Kw": "kJ/h/m^2/K",
        "C_A0": "mol/L",
        "T_in": "degC",
        "alpha": "-",
        "beta": "-",
    }
    #: where the equations hold (a density, an area, a rate constant ... is positive)
    parameter_domain: ClassVar[Mapping[str, Interval]] = {
        **dict.fromkeys(("k0_ab", "rho", "Cp", "Cp_k", "A_R", "V_R", "m_k"), POSITIVE),
        **dict.fromkeys(("k0_ad", "Kw", "C_A0", "alpha", "beta"), NON_NEGATIVE),
    }

    def _rates(self, x: SymMap, p: SymMap) -> tuple[Any, Any, Any]:
        T_abs = x["T_R"] + 273.15
        k2 = p["k0_ab"] * ca.exp(-p["E_R_ab"] / T_abs)
        k1 = p["beta"] * k2
        k3 = p["k0_ad"] * ca.exp(-p["alpha"] * p["E_R_ad"] / T_abs)
        return k1, k2, k3

    def ode(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        C_a, C_b, T_R, T_K = x["C_a"], x["C_b"], x["T_R"], x["T_K"]
        F, Q_dot = u["F"], u["Q_dot"]
        k1, k2, k3 = self._rates(x, p)
        heat = k1 * C_a * p["H_ab"] + k2 * C_b * p["H_bc"] + k3 * C_a**2 * p["H_ad"]
        wall = p["Kw"] * p["A_R"] * (T_K - T_R)
        return {
            "C_a": F * (p["C_A0"] - C_a) - k1 * C_a - k3 * C_a**2,
            "C_b": -F * C_b + k1 * C_a - k2 * C_b,
            "T_R": heat / (-p["rho"] * p["Cp"])
            + F * (p["T_in"] - T_R)
            + wall / (p["rho"] * p["Cp"] * p["V_R"]),
            "T_K": (Q_dot - wall) / (p["m_k"] * p["Cp_k"]),
        }

    def outputs(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        return {f"{n}_meas": x[n] for n in ("C_a", "C_b", "T_R", "T_K")}

    def expressions(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        k1, k2, k3 = self._rates(x, p)
        return {"k1": k1, "k2": k2, "k3": k3, "selectivity_b": k1 * x["C_a"] - k2 * x["C_b"]}
