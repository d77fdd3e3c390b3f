"""Freeze drying (lyophilization), primary drying: a Pikal-type single-vial model (a DAE).

Source: the model in LyoPRONTO (Shivkumar, Kazarin, Strongrich, Alexeenko, AAPS
PharmSciTech 20:328, 2019). Time in hours. Differential state: dried-cake thickness ``Lck``
[cm]; algebraic state: sublimation-front temperature ``Tsub`` [degC]; inputs: shelf
temperature ``Tsh`` [degC] and chamber pressure ``Pch`` [Torr]; measured output: vial-bottom
product temperature ``Tbot`` [degC]. Primary drying ends when ``Lck`` reaches ``Lpr0``.

Validity domain (where the equations hold): the product below the front is frozen. The
sublimation front is ice (``Tsub <= 0 degC``), and so is the whole frozen layer down to the
vial bottom, its warmest point: ``Tbot <= 0 degC`` (:attr:`expression_domain`). Above 0 degC the
ice at the vial bottom melts (meltback) and the conduction equation through a frozen layer no
longer holds, so the true plant reports a plant fault. It does not carry on, and it never
clips. This is physical validity, not the operating limit: the collapse limit
``Tbot <= T_crit - margin`` (-5 degC) is a constraint for the controller and the checks.

Online estimation targets: ``Kv`` (KC, KP, KD), ``Rp`` (R0, A1), capability ``a_cap``/``b_cap``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import casadi as ca

from plant_models.base import PlantModel
from plant_models.domains import FRACTION, NON_NEGATIVE, POSITIVE, Interval
from plant_models.smooth import positive_part
from plant_models.variables import Role, SymMap, Variable

#: Unit conversions (not parameters): s per h, g per kg, K offset of degC.
_S_PER_H = 3600.0
_G_PER_KG = 1000.0
_KELVIN = 273.15
#: The algebraic residual is in cal/s and of order 1e-2; it is stated in mcal/s for the
#: integrators' and optimizers' tolerances. The equation (0 = Qsub - Qsh) is unchanged.
_ALG_SCALE = 1000.0


class Lyophilizer(PlantModel):
    """Pikal-type primary-drying model: state Lck, algebraic Tsub, inputs Tsh and Pch."""

    name: ClassVar[str] = "lyophilizer"
    time_unit: ClassVar[str] = "h"
    description: ClassVar[str] = "Freeze dryer, primary drying, Pikal-type vial model (LyoPRONTO)"
    variables: ClassVar[tuple[Variable, ...]] = (
        Variable("Lck", "cm", Role.STATE, 0.0, 5.0, "dried-cake thickness (sublimation front)"),
        # ice melts above 0 degC (meltback): the sublimation equations no longer hold
        Variable(
            "Tsub", "degC", Role.ALGEBRAIC, -273.15, 0.0, "sublimation-front temperature", 10.0
        ),
        Variable("Tsh", "degC", Role.INPUT, -45.0, 120.0, "shelf temperature", scale=10.0),
        Variable("Pch", "Torr", Role.INPUT, 0.03, 0.5, "chamber pressure", scale=0.1),
        Variable("Tbot", "degC", Role.OUTPUT, -80.0, 40.0, "vial-bottom product temperature", 10.0),
    )
    expression_units: ClassVar[Mapping[str, str]] = {
        "Psub": "Torr",
        "Kv": "cal/s/K/cm^2",
        "Rp": "cm^2*h*Torr/g",
        "Lpr0": "cm",
        "percent_dried": "%",
        "sublimation_rate": "kg/h",
        "capability_margin": "kg/h",
        "margin_to_collapse": "K",
        "drying_progress": "cm",
    }
    parameter_units: ClassVar[Mapping[str, str]] = {
        "rho_ice": "g/mL",
        "rho_solute": "g/mL",
        "rho_soln": "g/mL",
        "dHs": "cal/g",
        "k_ice": "cal/cm/s/K",
        "psub_A": "Torr",
        "psub_B": "K",
        "Av": "cm^2",
        "Ap": "cm^2",
        "Vfill": "mL",
        "cSolid": "-",
        "R0": "cm^2*h*Torr/g",
        "A1": "cm*h*Torr/g",
        "A2": "1/cm",
        "KC": "cal/s/K/cm^2",
        "KP": "cal/s/K/cm^2/Torr",
        "KD": "1/Torr",
        "T_crit": "degC",
        "n_vial": "-",
        "a_cap": "kg/h",
        "b_cap": "kg/h/Torr",
    }
    #: the frozen layer is ice down to the vial bottom (its warmest point): above 0 degC it
    #: melts and the equations no longer hold (a plant fault, never a clipped value)
    expression_domain: ClassVar[Mapping[str, tuple[float, float, str]]] = {
        "Tbot": (-math.inf, 0.0, "ice at the vial bottom melts above 0 degC: meltback"),
    }
    #: where the equations hold (a density, an area, a rate constant ... is positive)
    parameter_domain: ClassVar[Mapping[str, Interval]] = {
        **dict.fromkeys(
            ("rho_ice", "rho_solute", "rho_soln", "dHs", "k_ice", "psub_A", "psub_B"), POSITIVE
        ),
        **dict.fromkeys(("Av", "Ap", "Vfill", "R0", "KC", "n_vial"), POSITIVE),
        **dict.fromkeys(("A1", "A2", "KP", "KD"), NON_NEGATIVE),
        "cSolid": FRACTION,
    }

    # ------------------------------------------------------------------ sub-models
    @staticmethod
    def psub(Tsub: Any, p: SymMap) -> Any:
        """Vapour pressure of ice [Torr] at ``Tsub`` [degC]."""
        return p["psub_A"] * ca.exp(-p["psub_B"] / (Tsub + _KELVIN))

    @staticmethod
    def kv(Pch: Any, p: SymMap) -> Any:
        """Vial heat-transfer coefficient [cal/s/K/cm^2]."""
        return p["KC"] + p["KP"] * Pch / (1 + p["KD"] * Pch)

    @staticmethod
    def rp(Lck: Any, p: SymMap) -> Any:
        """Dried-cake resistance [cm^2 h Torr/g]."""
        return p["R0"] + p["A1"] * Lck / (1 + p["A2"] * Lck)

    @staticmethod
    def lpr0(p: SymMap) -> Any:
        """Initial frozen-product thickness [cm]."""
        shrink = p["cSolid"] * (p["rho_soln"] - p["rho_ice"]) / p["rho_solute"]
        return p["Vfill"] / (p["Ap"] * p["rho_ice"]) * (p["rho_soln"] - shrink)

    def _balances(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        Lck, Tsub, Tsh, Pch = x["Lck"], z["Tsub"], u["Tsh"], u["Pch"]
        Psub = self.psub(Tsub, p)
        Rp = self.rp(Lck, p)
        Lpr0 = self.lpr0(p)
        Qsub = p["dHs"] * (Psub - Pch) * p["Ap"] / Rp / _S_PER_H
        Tbot = Tsub + Qsub / (p["Ap"] * p["k_ice"]) * (Lpr0 - Lck)
        Qsh = self.kv(Pch, p) * p["Av"] * (Tsh - Tbot)
        drive = positive_part(Psub - Pch, smooth=self.smooth, eps=1e-4)
        dmdt = p["Ap"] / Rp / _G_PER_KG * drive
        return {
            "Psub": Psub,
            "Rp": Rp,
            "Lpr0": Lpr0,
            "Qsub": Qsub,
            "Qsh": Qsh,
            "Tbot": Tbot,
            "dmdt": dmdt,
        }

    # ------------------------------------------------------------------ equations
    def ode(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        b = self._balances(x, z, u, p)
        solid = p["cSolid"] * p["rho_soln"] / p["rho_solute"]
        shrink = 1 - p["cSolid"] * (p["rho_soln"] - p["rho_ice"]) / p["rho_solute"]
        dLck = b["dmdt"] * _G_PER_KG / (1 - solid) / (p["Ap"] * p["rho_ice"]) * shrink
        return {"Lck": dLck}

    def algebraic(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> list[Any]:
        b = self._balances(x, z, u, p)
        return [(b["Qsub"] - b["Qsh"]) * _ALG_SCALE]

    def outputs(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        return {"Tbot": self._balances(x, z, u, p)["Tbot"]}

    def expressions(self, x: SymMap, z: SymMap, u: SymMap, p: SymMap) -> dict[str, Any]:
        b = self._balances(x, z, u, p)
        rate = p["n_vial"] * b["dmdt"]
        capability = p["a_cap"] + p["b_cap"] * u["Pch"]
        return {
            "Psub": b["Psub"],
            "Kv": self.kv(u["Pch"], p),
            "Rp": b["Rp"],
            "Lpr0": b["Lpr0"],
            "percent_dried": 100.0 * ca.fmin(x["Lck"] / b["Lpr0"], 1.0),
            "sublimation_rate": rate,
            "capability_margin": capability - rate,
            "margin_to_collapse": p["T_crit"] - b["Tbot"],
            "drying_progress": x["Lck"],
        }

    def state_bounds(self, p: Mapping[str, float]) -> dict[str, tuple[float, float, str]]:
        """The dried cake is at most as thick as the frozen product was (Lck <= Lpr0)."""
        return {"Lck": (0.0, float(self.lpr0(p)), "at most Lpr0, the frozen product's thickness")}

    def finished(self, x: Mapping[str, float], p: Mapping[str, float]) -> bool:
        return float(x["Lck"]) >= float(self.lpr0(p))

    def finish_margin(self, x: Mapping[str, float], p: Mapping[str, float]) -> float:
        """Frozen layer left [cm]: 0 when the front reaches the vial bottom (Lck = Lpr0)."""
        return float(self.lpr0(p)) - float(x["Lck"])
