"""Shared fixtures: tiny offline checkpoints built once per test session."""

import os

# Before anything imports huggingface_hub: never reach a hub from tests.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """Build (once) and return the checkpoint directory of a tiny model of a family."""
    from probekit import tiny

    built: dict[str, str] = {}
    root = tmp_path_factory.mktemp("tiny")

    def get(family: str) -> str:
        if family not in built:
            built[family] = str(tiny.build(family, root / family, seed=0))
        return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    """Load (once per family) a tiny probekit.Model."""
    import probekit

    loaded: dict[str, "probekit.Model"] = {}

    def get(family: str) -> "probekit.Model":
        if family not in loaded:
            loaded[family] = probekit.load(tiny_dir(family))
        return loaded[family]

    return get


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module: on a shared 2-core machine two spinning threads were up to 100x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def llava(tiny_model):
    """The shared tiny LLaVA (files that edit its weights load their own copy and override this)."""
    return tiny_model("llava")


@pytest.fixture
def no_forward(llava, monkeypatch):
    """The tiny LLaVA, whose forward fails the test if it is ever called: bad input is reported first."""

    def forbidden(*a, **k):
        raise AssertionError("a forward pass ran before the bad input was reported")

    monkeypatch.setattr(llava.hf, "forward", forbidden)
    return llava
