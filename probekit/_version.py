"""probekit's version, in a module of its own so that any layer can read it without importing the package root
(which would close an import cycle through every layer the root exposes)."""

__version__ = "0.1.0"
