"""The model-name <-> tag binding: one answer per question, the same as the tag map's links."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.binding import Binding
from controller.controllerfile import load_controller
from controller.tags import Direction, TagMap, load_tag_map
from plant_models import MODELS

ROOT = Path(__file__).resolve().parents[2]


def _binding(name: str) -> tuple[Binding, TagMap]:
    tags = load_tag_map(ROOT / "configs" / "tags" / f"{name}.yaml")
    _, model = load_controller(ROOT / "configs" / "controllers" / f"{name}.yaml")
    return Binding.of(tags, model), tags


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_input_has_a_setpoint_and_a_working_setpoint_tag(name: str) -> None:
    binding, tags = _binding(name)
    for i in binding.inputs:
        sp, pv = binding.setpoint_tag(i), binding.working_setpoint_tag(i)
        assert sp is not None and tags.tags[sp].writable, i
        assert pv is not None and tags.tags[pv].direction is Direction.READ, i
        assert binding.variable_of(sp) == binding.variable_of(pv) == i
    assert (
        set(binding.setpoint_tags()) == set(binding.working_setpoint_tags()) == set(binding.inputs)
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_outputs_and_the_validity_order(name: str) -> None:
    binding, tags = _binding(name)
    measured = binding.output_tags()
    assert set(measured) == set(binding.outputs)
    for output, tag in measured.items():
        assert binding.measurement_tag(output) == tag and binding.is_output_tag(tag)
        assert binding.working_setpoint_tag(output) is None  # not an input
    order = binding.measurement_tags()
    assert order == [t for t in tags.tags if t in order]  # the map's order
    assert not set(order) & set(binding.working_setpoint_tags().values())
    assert set(measured.values()) <= set(order)
    assert binding.variable_of("no_such_tag") is None


def test_predict_on_a_working_setpoint_is_a_problem() -> None:
    binding, tags = _binding("cstr")
    pv = binding.working_setpoint_tag(binding.inputs[0])
    assert pv is not None and binding.bad_data_problems("t.yaml") == []
    bad = tags.model_copy(
        update={"tags": {**tags.tags, pv: tags.tags[pv].model_copy(update={"on_bad": "predict"})}}
    )
    (problem,) = Binding(bad, binding.inputs, binding.outputs).bad_data_problems("t.yaml")
    assert problem.location == f"tags.{pv}.on_bad" and "allowed here: 'hold'" in problem.message
