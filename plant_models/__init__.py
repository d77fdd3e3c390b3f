"""Pure CasADi plant models, one small declarative class per unit operation.

``MODELS`` maps each model's name (as used in ``configs/plants/<name>.yaml``) to its class.
This package imports nothing else of PharmaTwin and does no I/O.
"""

from __future__ import annotations

from plant_models.base import PlantModel, is_shipped
from plant_models.bioreactor import Bioreactor
from plant_models.crystallizer import Crystallizer
from plant_models.cstr import VanDeVusseCSTR
from plant_models.errors import ModelError
from plant_models.lyophilizer import Lyophilizer
from plant_models.variables import Parameter, ParameterSet, Role, Variable

MODELS: dict[str, type[PlantModel]] = {
    cls.name: cls for cls in (Lyophilizer, Bioreactor, Crystallizer, VanDeVusseCSTR)
}

__all__ = [
    "MODELS",
    "Bioreactor",
    "Crystallizer",
    "Lyophilizer",
    "ModelError",
    "Parameter",
    "ParameterSet",
    "PlantModel",
    "Role",
    "VanDeVusseCSTR",
    "Variable",
    "is_shipped",
]
