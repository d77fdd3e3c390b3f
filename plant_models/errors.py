"""The root of PharmaTwin's error tree, kept in the bottom layer so models can raise it.

``controller.errors`` re-exports these and grows the rest of the tree.
"""

from __future__ import annotations


class PharmaTwinError(Exception):
    """Base of every error PharmaTwin raises on purpose."""


class ModelError(PharmaTwinError):
    """A plant model is inconsistent or cannot be built; the message lists every problem."""
