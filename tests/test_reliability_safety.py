"""Files probekit reads are never unpickled: crafted pickles raise a probekit error and run no code.

Every payload below would create a marker file if it were unpickled (``__reduce__`` -> ``open``);
each test first proves the payload is live, then that probekit refuses it without running it.
A static check parses all of ``probekit/`` to make sure no code path can unpickle at all.
"""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

import probekit
from probekit.errors import ImageError, StoreError
from probekit.hooks import ActivationStore
from probekit import tiny
from probekit.readout.lens import TunedLens

from _stores import copy_store, tiny_store  # tests/ is on sys.path

PACKAGE = Path(probekit.__file__).parent


class Payload:
    """Unpickling this creates ``marker`` (a stand-in for arbitrary code execution)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def evil(tmp_path):
    """Writers of live pickles, and the marker that must never appear."""
    marker = tmp_path / "PWNED"

    def torch_file(path: Path) -> Path:
        torch.save({"lm.0.resid": torch.zeros(2, 3), "x": Payload(marker)}, path)
        return path

    def pickle_file(path: Path, protocol: int = 4) -> Path:
        path.write_bytes(pickle.dumps(Payload(marker), protocol=protocol))
        return path

    # the payloads are live: loading them the unsafe way runs the code
    live = tmp_path / "live"
    live.mkdir()
    probe = Payload(live / "m1")
    pickle.loads(pickle.dumps(probe, protocol=0)).close()
    torch.save({"x": Payload(live / "m2")}, live / "f.pt")
    torch.load(live / "f.pt", weights_only=False)["x"].close()
    assert (live / "m1").exists() and (live / "m2").exists()
    with pytest.raises(pickle.UnpicklingError):  # and the safe way refuses them
        torch.load(live / "f.pt", weights_only=True)

    yield type("Evil", (), {"marker": marker, "torch_file": staticmethod(torch_file),
                            "pickle_file": staticmethod(pickle_file)})
    assert not marker.exists(), "a pickle payload ran"


@pytest.fixture(scope="module")
def store_dir(tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("safe") / "store"
    tiny_store(tiny_model("llava"), d, n=4, seed=0, batch_size=2, shard_size=2)
    return d


def _copy(src: Path, tmp: Path) -> Path:
    return copy_store(src, tmp, "copy")


def test_pickled_shard_is_refused(evil, store_dir, tmp_path):
    store = _copy(store_dir, tmp_path)
    evil.torch_file(store / "shard-00001.safetensors")
    s = ActivationStore.open(store)  # the index is fine; the shard is read lazily
    with pytest.raises(StoreError, match="shard-00001.safetensors") as info:
        s["lm.0.resid"]
    assert "How to fix" in str(info.value)
    with pytest.raises(StoreError):
        list(s.iter_shards("lm.0.resid"))


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_pickled_index_is_refused(evil, store_dir, tmp_path, tiny_model, protocol):
    store = _copy(store_dir, tmp_path)
    evil.pickle_file(store / "index.json", protocol)
    with pytest.raises(StoreError, match="index.json"):
        ActivationStore.open(store)
    with pytest.raises(StoreError, match="index.json"):  # nor does a collect into it unpickle anything
        probekit.collect(tiny_model("llava"), tiny.fixture_images(4, 32), "x", points="lm.0.resid", store=store,
                         progress=False)


def test_torch_save_file_as_a_tuned_lens_is_refused(evil, tmp_path):
    path = evil.torch_file(tmp_path / "lens.safetensors")
    with pytest.raises(StoreError, match="lens.safetensors") as info:
        TunedLens.load(path)
    assert "How to fix" in str(info.value)


def test_plain_pickle_as_a_tuned_lens_is_refused(evil, tmp_path):
    with pytest.raises(StoreError):
        TunedLens.load(evil.pickle_file(tmp_path / "lens.safetensors"))


def test_torch_save_file_as_a_direction_is_refused(evil, tmp_path):
    with pytest.raises(StoreError, match="direction.safetensors"):
        probekit.Direction.load(evil.torch_file(tmp_path / "direction.safetensors"))


def test_pickle_as_an_image_is_refused(evil, tmp_path, tiny_model):
    path = evil.pickle_file(tmp_path / "photo.png")
    with pytest.raises(ImageError, match="photo.png"):
        probekit.collect(tiny_model("llava"), [path], progress=False)


def test_real_files_still_load(store_dir, tmp_path):
    """The refusals above are not a blanket failure: files probekit wrote load fine."""
    s = ActivationStore.open(store_dir)
    assert s["lm.0.resid"].shape == (4, 64)
    lens = TunedLens(8, ["lm.0.resid"])
    torch.nn.init.ones_(lens.translators["lm_0_resid"].bias)
    lens.save(tmp_path / "lens.safetensors")
    back = TunedLens.load(tmp_path / "lens.safetensors")
    assert torch.equal(back.translators["lm_0_resid"].bias, torch.ones(8)) and back.points == ["lm.0.resid"]
    d = probekit.Direction.from_vectors({"lm.0.resid": torch.ones(4)})
    d.save(tmp_path / "d.safetensors")
    v = probekit.Direction.load(tmp_path / "d.safetensors").vector("lm.0.resid")
    assert torch.allclose(v.double(), torch.full((4,), 0.5, dtype=torch.float64))


# ----------------------------------------------------------------------------- static check
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib", "marshal"}


def unsafe_loads(source: str, filename: str = "<src>") -> list[str]:
    """Places in ``source`` that could unpickle: imports of pickle-like modules, ``torch.load``
    without ``weights_only=True``, ``numpy.load(allow_pickle=True)``, ``read_pickle``."""
    problems = []
    tree = ast.parse(source, filename)
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in UNSAFE_MODULES:
                    problems.append(f"{where} imports {a.name}")
        elif isinstance(node, ast.ImportFrom):
            mod = (node.module or "").split(".")[0]
            if mod in UNSAFE_MODULES:
                problems.append(f"{where} imports from {node.module}")
            if mod == "torch" and any(a.name == "load" for a in node.names):
                problems.append(f"{where} imports torch.load by name (cannot check its arguments)")
        elif isinstance(node, ast.Call):
            f = node.func
            name = ast.unparse(f)
            kw = {k.arg: k.value for k in node.keywords}
            if name in ("torch.load", "torch.serialization.load"):
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                if not ok:
                    problems.append(f"{where} calls {name} without weights_only=True")
            if name.split(".")[-1] == "load" and name.split(".")[0] in ("np", "numpy"):
                val = kw.get("allow_pickle")
                if val is not None and not (isinstance(val, ast.Constant) and val.value is False):
                    problems.append(f"{where} calls {name} with allow_pickle")
            if name.split(".")[-1] in ("read_pickle", "to_pickle"):
                problems.append(f"{where} calls {name}")
            if name in ("importlib.import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant) \
                    and str(node.args[0].value).split(".")[0] in UNSAFE_MODULES:
                problems.append(f"{where} imports {node.args[0].value} dynamically")
    return problems


def test_the_static_check_catches_what_it_should():
    bad = """
import pickle
from dill import loads
import torch, numpy as np, importlib
torch.load("x")
torch.load("x", weights_only=False)
np.load("x", allow_pickle=True)
importlib.import_module("cloudpickle")
from torch import load
"""
    found = unsafe_loads(bad)
    assert len(found) == 7, found
    good = 'import torch\ntorch.load("x", map_location="cpu", weights_only=True)\nimport numpy as np\nnp.load("x")\n'
    assert unsafe_loads(good) == []


def test_probekit_never_unpickles():
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20 and any(f.name == "store.py" for f in files)
    problems = [p for f in files for p in unsafe_loads(f.read_text(), str(f.relative_to(PACKAGE.parent)))]
    assert problems == []
    # and the word itself only appears in comments/docstrings saying nothing is pickled
    for f in files:
        tree = ast.parse(f.read_text())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
            n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert not {nm for nm in names if "pickle" in nm.lower()}, f"{f} uses a pickle name"
