"""Hook layer: hook points, position selectors, the recorder, the activation store, collect()."""

from .coerce import as_store
from .collect import collect
from .positions import PositionContext, normalize_positions, select
from .recorder import Recorder
from .store import ActivationStore

__all__ = ["collect", "Recorder", "ActivationStore", "as_store", "PositionContext", "normalize_positions", "select"]
