"""The operator side of the runtime: a web view fed as a sink (:mod:`.ui.server`)."""

from controller.runtime.ui.bind import Bind, parse_bind
from controller.runtime.ui.server import OperatorView, Refused

__all__ = ["Bind", "OperatorView", "Refused", "parse_bind"]
