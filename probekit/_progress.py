"""One progress bar for all of probekit: live in a terminal or notebook, quiet in logs.

tqdm redraws a bar ten times a second; in a CI log or ``cmd > log 2>&1`` every redraw is a
line, so a minute of work wrote hundreds of them. When stderr is not a terminal (and we are
not in a Jupyter kernel, where ``tqdm.auto`` draws a widget), a bar redraws at most once per
``LOG_INTERVAL`` seconds and stays on screen as one final line.
"""

from __future__ import annotations

import sys
import time
from typing import Any

__all__ = ["progress_bar", "LOG_INTERVAL", "interactive", "step_line", "say"]

LOG_INTERVAL = 10.0  # seconds between two lines of one bar in a log


def interactive() -> bool:
    """True in a terminal or a Jupyter kernel (where bars redraw in place)."""
    if "ipykernel" in sys.modules:
        try:
            from IPython import get_ipython

            if get_ipython() is not None and hasattr(get_ipython(), "kernel"):
                return True
        except ImportError:
            pass
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Any = None, *, desc: str | None = None, total: int | None = None, unit: str = "it",
                 disable: bool = False, leave: bool = False, **kwargs: Any) -> Any:
    """A ``tqdm`` bar that does not flood non-terminal logs (same arguments as ``tqdm``).

    Example:
        >>> from probekit._progress import progress_bar
        >>> sum(progress_bar(range(3), desc="demo", disable=True))
        3
    """
    from tqdm.auto import tqdm

    if not disable and not interactive():
        kwargs.setdefault("mininterval", LOG_INTERVAL)
        kwargs.setdefault("maxinterval", max(LOG_INTERVAL, kwargs["mininterval"]))
        kwargs.setdefault("ascii", True)  # no block characters in log files
        kwargs.setdefault("ncols", 100)
        leave = True  # a log keeps the final count; there is no line to clear
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, leave=leave, **kwargs)


def step_line(msg: str, seconds: float) -> str:
    """One progress line of a long run: the seconds since it began, then what it does, in words.

    >>> step_line("Fine-tuning the tiny model to answer yes/no (400 steps)...", 3.2)
    '[    3 s] Fine-tuning the tiny model to answer yes/no (400 steps)...'
    """
    return f"[{seconds:5.0f} s] {msg}"


def say(msg: str, t0: float, enabled: bool = True) -> None:
    """Print :func:`step_line` for a run that began at ``t0`` (``time.perf_counter()``), when enabled."""
    if enabled:
        print(step_line(msg, time.perf_counter() - t0), flush=True)
