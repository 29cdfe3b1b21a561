"""Every crash window of a store write: a collect is killed (SIGKILL, no cleanup runs) at each point
where the files on disk change, and the next collect into the same directory resumes to exactly the
store an uninterrupted run writes, recomputing only what was not finished and leaving only the
store's own files.

The windows, in the order a collect of 2 shards passes them (index.json is written to
index.json.tmp, fsynced and renamed each time; shards likewise):

1. the directory made, the lock not yet taken              6. a shard's temporary file half written
2. the lock taken, nothing written                          7. a shard renamed, the index not yet updated
3. the first index.json.tmp half written                    8. the updated index.json.tmp written, not renamed
4. the first index.json.tmp whole, not renamed              9. the completing index.json.tmp written, not renamed
5. index.json written, no shard yet                        10. complete, the lock not yet removed
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import probekit

from _stores import count_prepare, tiny_images, tiny_store  # tests/ is on sys.path

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = dict(points="lm.0.resid", batch_size=3, shard_size=3, progress=False)

_KILLED = r"""
import json, os, signal, sys
os.environ["HF_HUB_OFFLINE"] = "1"
import torch; torch.set_num_threads(1)
import probekit
import probekit.hooks.store_writer as sw
from probekit import tiny

window, model_dir, store = sys.argv[1], sys.argv[2], sys.argv[3]
die = lambda: os.kill(os.getpid(), signal.SIGKILL)  # no except, no finally, no atexit
real_replace, real_dump, real_save = os.replace, sw.json.dump, sw.save_file
seen = {"index": 0}

def replace(src, dst, *a, **k):
    name = os.path.basename(str(dst))
    if name == "index.json":
        seen["index"] += 1
        if (window, seen["index"]) in (("index-tmp-whole", 1), ("update-tmp", 2), ("finish-tmp", 4)):
            die()
    real_replace(src, dst, *a, **k)
    if window == "shard-unlisted" and name == "shard-00000.safetensors":
        die()

def dump(obj, f, **k):
    if window == "index-tmp-half":
        text = json.dumps(obj, **k)
        f.write(text[: len(text) // 2]); f.flush(); os.fsync(f.fileno())
        die()
    real_dump(obj, f, **k)

def save_file(tensors, filename, metadata=None):
    if window == "no-shard":
        die()
    if window == "shard-tmp-half":
        from safetensors.torch import save
        data = save(tensors, metadata=metadata)
        with open(filename, "wb") as f:
            f.write(data[: len(data) // 2]); f.flush(); os.fsync(f.fileno())
        die()
    real_save(tensors, filename, metadata=metadata)

os.replace, sw.json.dump, sw.save_file = replace, dump, save_file
if window == "before-lock":
    sw.StoreWriter._acquire = lambda self: die()
if window == "lock-only":
    sw._atomic_write_json = lambda path, obj: die()
if window == "before-unlock":
    sw.StoreWriter.close = lambda self: die()
model = probekit.load(model_dir)
probekit.collect(model, tiny.fixture_images(6, 32, seed=1), "x", store=store, points="lm.0.resid",
                 batch_size=3, shard_size=3, progress=False)
print("finished without being killed", flush=True)
"""

# window -> (files left by the kill, batches the resume runs)
WINDOWS = {
    "before-lock": ([], 2),
    "lock-only": (["write.lock"], 2),
    "index-tmp-half": (["index.json.tmp", "write.lock"], 2),
    "index-tmp-whole": (["index.json.tmp", "write.lock"], 2),
    "no-shard": (["index.json", "write.lock"], 2),
    "shard-tmp-half": (["index.json", "shard-00000.safetensors.tmp", "write.lock"], 2),
    "shard-unlisted": (["index.json", "shard-00000.safetensors", "write.lock"], 2),
    "update-tmp": (["index.json", "index.json.tmp", "shard-00000.safetensors", "write.lock"], 2),
    "finish-tmp": (["index.json", "index.json.tmp", "shard-00000.safetensors", "shard-00001.safetensors",
                    "write.lock"], 0),
    "before-unlock": (["index.json", "shard-00000.safetensors", "shard-00001.safetensors", "write.lock"], 0),
}


@pytest.fixture(scope="module")
def reference(llava, tmp_path_factory):
    return tiny_store(llava, tmp_path_factory.mktemp("crash") / "ref")["lm.0.resid"].clone()


@pytest.mark.parametrize("window", list(WINDOWS))
def test_kill_in_every_window_then_resume(llava, tiny_dir, reference, tmp_path, monkeypatch, window):
    d = tmp_path / "s"
    res = subprocess.run([sys.executable, "-c", _KILLED, window, tiny_dir("llava"), str(d)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == -9, (res.returncode, res.stdout, res.stderr[-2000:])
    left, batches = WINDOWS[window]
    assert sorted(f.name for f in d.iterdir()) == left  # the kill happened where this window says
    if window == "index-tmp-half":
        with pytest.raises(ValueError):
            json.loads((d / "index.json.tmp").read_text())  # really half a file
    calls = count_prepare(llava, monkeypatch)
    again = probekit.collect(llava, tiny_images(), "x", store=d, **ARGS)
    assert calls["n"] == batches
    assert torch.equal(again["lm.0.resid"], reference)
    assert torch.equal(probekit.ActivationStore.open(d, verify=True)["lm.0.resid"], reference)
    assert sorted(f.name for f in d.iterdir()) == ["index.json", "shard-00000.safetensors", "shard-00001.safetensors"]
    index = json.loads((d / "index.json").read_text())
    assert index["complete"] and [s["start"] for s in index["shards"]] == [0, 3]


def test_a_foreign_temporary_file_is_still_refused(no_forward, tmp_path):
    """Only probekit's own index.json.tmp (and a lock) marks a store that never started; anything else
    in the directory is not a store, and nothing in it is touched."""
    d = tmp_path / "s"
    d.mkdir()
    (d / "index.json.tmp").write_text("{}")
    (d / "notes.txt").write_text("mine")
    with pytest.raises(probekit.errors.StoreError, match="exists and is not an activation store"):
        probekit.collect(no_forward, tiny_images(), "x", store=d, **ARGS)
    assert sorted(f.name for f in d.iterdir()) == ["index.json.tmp", "notes.txt"]
    assert (d / "notes.txt").read_text() == "mine"


def test_reading_a_store_that_never_started_is_a_clear_error(tmp_path):
    d = tmp_path / "s"
    d.mkdir()
    (d / "index.json.tmp").write_text('{"format": "probekit.activations", "ver')
    (d / "write.lock").write_text("")
    with pytest.raises(probekit.errors.StoreError, match="holds no activation store"):
        probekit.ActivationStore.open(d)
    assert Path(d / "index.json.tmp").exists()  # reading never deletes anything
