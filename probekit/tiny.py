"""Alias of :mod:`probekit.models.tiny` so that ``import probekit.tiny`` works."""

from .models.tiny import *  # noqa: F401,F403
