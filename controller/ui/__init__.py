"""The operator side of the runtime: a web view fed as a sink (see :mod:`controller.ui.server`)."""

from controller.ui.bind import Bind, parse_bind
from controller.ui.server import OperatorView, Refused

__all__ = ["Bind", "OperatorView", "Refused", "parse_bind"]
