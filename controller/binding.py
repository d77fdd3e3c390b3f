"""The model-name <-> tag binding: which tag carries which model variable.

A tag names the plant-model variable it carries in ``binds`` (see :mod:`controller.tags`).
:class:`Binding` reads those links once, for one tag map and one model's inputs and outputs,
and answers every question about them in the model's words:

* a model input has a **setpoint tag** (writable: the twin writes the remote setpoint) and a
  **working-setpoint tag** (read-only: what the PLC really applies);
* a model output has a **measurement tag** (read-only);
* the **measurement tags** (read-only, bound to anything but an input) in map order are the
  order of the ``measurement_validity`` bits;
* every bound tag gives back its model name (:meth:`Binding.variable_of`).

It sits beside :mod:`controller.timebase`, the other half of what links the model to the PLC.
Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.errors import Problem
from controller.tags import TagMap
from plant_models import PlantModel

__all__ = ["Binding"]


@dataclass(frozen=True, slots=True)
class Binding:
    """The tags of one model's ``inputs`` and ``outputs`` in ``tags`` (names as declared)."""

    tags: TagMap
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @classmethod
    def of(cls, tags: TagMap, model: PlantModel) -> Binding:
        """The binding of ``model``'s inputs and outputs to ``tags``."""
        return cls(tags, tuple(model.input_names), tuple(model.output_names))

    @classmethod
    def of_inputs(cls, tags: TagMap, inputs: Sequence[str]) -> Binding:
        """The binding of ``inputs`` alone (a PLC that knows its loops but not the model)."""
        return cls(tags, tuple(inputs), ())

    # ----------------------------------------------------------------- model name -> tag
    def setpoint_tag(self, variable: str) -> str | None:
        """The writable tag that carries ``variable`` (a model input's remote setpoint)."""
        found = (n for n, t in self.tags.tags.items() if t.binds == variable and t.writable)
        return next(found, None)

    def setpoint_tags(self) -> dict[str, str]:
        """Input -> its setpoint tag, for every input that has one (in input order)."""
        return {i: tag for i in self.inputs if (tag := self.setpoint_tag(i)) is not None}

    def reading_tags(self) -> dict[str, str]:
        """Model variable -> the read-only tag that carries it (measurements, working SPs)."""
        tags = self.tags.tags.items()
        return {t.binds: n for n, t in tags if t.binds is not None and not t.writable}

    def working_setpoint_tag(self, variable: str) -> str | None:
        """The read-only tag with the setpoint the PLC applies to input ``variable``."""
        return self.reading_tags().get(variable) if variable in self.inputs else None

    def working_setpoint_tags(self) -> dict[str, str]:
        """Input -> its working-setpoint tag, for every input that has one."""
        readings = self.reading_tags()
        return {i: readings[i] for i in self.inputs if i in readings}

    def measurement_tag(self, variable: str) -> str | None:
        """The read-only tag that measures output ``variable``."""
        return self.reading_tags().get(variable) if variable in self.outputs else None

    def output_tags(self) -> dict[str, str]:
        """Output -> its measurement tag, for every output that has one."""
        readings = self.reading_tags()
        return {o: readings[o] for o in self.outputs if o in readings}

    def measurement_tags(self) -> list[str]:
        """Read-only tags bound to anything but an input, in map order: the order of the
        ``measurement_validity`` bits."""
        return [
            n
            for n, t in self.tags.tags.items()
            if not t.writable and t.binds is not None and t.binds not in self.inputs
        ]

    # ----------------------------------------------------------------- tag -> model name
    def variable_of(self, tag: str) -> str | None:
        """The model variable ``tag`` carries (None for an unbound or unknown tag)."""
        spec = self.tags.tags.get(tag)
        return spec.binds if spec is not None else None

    def is_output_tag(self, tag: str) -> bool:
        """Whether ``tag`` carries one of the model's outputs (read or written)."""
        return self.variable_of(tag) in self.outputs

    # ----------------------------------------------------------------- checks
    def bad_data_problems(self, source: str) -> list[Problem]:
        """The bad-data keys a tag may not carry, named in ``source`` (the tag file):

        * ``on_bad: predict`` needs a measurement: a tag that reads a model input (a working
          setpoint) has no prediction to ride on (its bad value holds the writes);
        * ``frozen_after`` is judged on the measurements of the model's outputs only: on any
          other tag it would do nothing (a working setpoint rightly holds still).
        """
        problems = [
            Problem(
                source,
                f"tags.{name}.on_bad",
                f"the tag reads the working setpoint of input {tag.binds!r}, which the model "
                "does not predict; allowed here: 'hold'",
                tag.on_bad,
            )
            for name, tag in self.tags.tags.items()
            if tag.on_bad == "predict" and tag.binds in self.inputs
        ]
        measured = set(self.output_tags().values())
        for name, tag in self.tags.tags.items():
            if tag.frozen_after is None or name in measured:
                continue
            if tag.binds in self.inputs:
                what = f"the tag reads input {tag.binds!r} (the PLC's setpoint: it rightly holds)"
            else:
                what = "the tag measures none of the model's outputs"
            allowed = sorted(measured) or "none"
            message = f"{what}; frozen_after is judged on the outputs' measurements only: {allowed}"
            problems.append(Problem(source, f"tags.{name}.frozen_after", message, tag.frozen_after))
        return problems
