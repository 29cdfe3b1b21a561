"""Organisms: small models trained here whose leaks are known by construction, one module each."""

from . import profiles  # noqa: F401
