"""The notebooks run top to bottom on tiny models (executed with nbclient)."""

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def _plain(text: str) -> str:
    """Text as compared across machines: a scratch directory's name, and the digits of a float beyond the fifth
    decimal (a different thread count sums in another order), are not what a notebook says."""
    text = re.sub(r"/tmp/[\w.-]+", "<tmp>", text)
    return re.sub(r"(\d+\.\d{5})\d+", r"\1", text)


def _texts(nb) -> list[list[str]]:
    """Per code cell, what it printed and returned as text (stdout and text/plain), figures and stderr aside."""
    out = []
    for c in nb.cells:
        if c.cell_type != "code":
            continue
        texts = []
        for o in c.get("outputs", []):
            if o.output_type == "stream" and o.name == "stdout":
                texts.append(_plain(o.text))
            elif o.output_type in ("execute_result", "display_data"):
                data = o.get("data", {})
                if set(data) == {"text/plain"}:  # a value's repr; a figure's text/plain stand-in is left out
                    texts.append(_plain(data["text/plain"]))
        out.append(texts)
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    committed = _texts(nb)
    os.environ["HF_HUB_OFFLINE"] = "1"
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    # every code cell ran and the figures rendered
    assert all(c.get("execution_count") for c in nb.cells if c.cell_type == "code")
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) or "text/html" in o.get("data", {}) for o in outputs)
    # the committed outputs are what the notebook prints today: re-run notebooks/execute.py after a change
    fresh = _texts(nb)
    for i, (was, now) in enumerate(zip(committed, fresh)):
        assert was == now, f"code cell {i} of {path.name} prints something else now: run python notebooks/execute.py"
    assert len(committed) == len(fresh)


def test_there_are_two_notebooks():
    assert {p.name for p in NOTEBOOKS} >= {"quickstart.ipynb", "steering.ipynb"}
