"""Exceptions raised by probekit.

Every error says what was wrong and how to fix it, and is raised before any heavy
work (a forward pass, a file write) starts. All derive from :class:`ProbekitError`, so
``except probekit.errors.ProbekitError`` catches everything probekit raises on purpose.
"""

from __future__ import annotations

__all__ = [
    "ProbekitError",
    "InputError",
    "ImageError",
    "LabelError",
    "UnknownPointError",
    "PositionError",
    "UnsupportedModelError",
    "StoreError",
    "BackendError",
]


class ProbekitError(Exception):
    """Base class: a problem with what probekit was asked to do.

    ``fix`` holds the hint on how to fix it; it is appended to the message.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.problem = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  How to fix: {fix}")


class InputError(ProbekitError, ValueError):
    """An argument has the wrong type, value or length."""


class ImageError(InputError):
    """An image cannot be read or is of a type probekit cannot use."""


class LabelError(InputError):
    """Labels are unusable: wrong length, a single class, NaN, ..."""


class UnknownPointError(ProbekitError, KeyError):
    """A hook-point name or pattern that the model does not have."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return Exception.__str__(self)


class PositionError(InputError):
    """A position selector that cannot be applied to this batch."""


class UnsupportedModelError(ProbekitError, TypeError):
    """A model whose layers probekit cannot find."""


class StoreError(ProbekitError, OSError):
    """An activation store on disk is missing, corrupt, foreign or cannot be written."""


class BackendError(ProbekitError, RuntimeError):
    """A recording backend is unavailable for this model."""
