"""The root of PharmaTwin's error tree, kept in the bottom layer so models can raise it.

``controller.errors`` re-exports these and grows the rest of the tree.
"""

from __future__ import annotations

from collections.abc import Iterable


class PharmaTwinError(Exception):
    """Base of every error PharmaTwin raises on purpose."""


class ModelError(PharmaTwinError):
    """A plant model is inconsistent or cannot be built; the message lists every problem."""


def unknown_name(what: str, name: object, known: Iterable[str]) -> str:
    """The models' one wording for a name they do not know (``controller.errors`` has the
    richer one; this layer may not import it)::

        unknown parameter(s) ['bogus']; known: ['K_i', 'mu_m', ...]
        unknown time unit 'd'; known: ['s', 'min', 'h']

    ``known`` is listed in the order given.
    """
    return f"unknown {what} {name!r}; known: {list(known)}"
