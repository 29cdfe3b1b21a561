"""``device_map="auto"``: a model split by accelerate, here over the CPU and disk offload, records the same numbers.

A ``max_memory`` of half the weights' size leaves accelerate no choice but to put the rest on disk: those
weights sit on the meta device between forwards and are loaded block by block. The same test on GPUs
(``max_memory={0: ..., 1: ...}``) is what docs/real-models.md describes; on CPU this is the split CI can run.
"""

import warnings

import pytest
import torch

import probekit
from probekit import tiny
from probekit.readout.lens import LogitLens

PROMPTS = ["What shape is it?", "What colour is the big square?"]


def _forward_hooks(model: probekit.Model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_split_over_cpu_and_disk_records_the_same(tiny_dir, tmp_path, family):
    ref = probekit.load(tiny_dir(family))
    half = sum(p.numel() * p.element_size() for p in ref.hf.parameters()) // 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        split = probekit.load(tiny_dir(family), device_map="auto", max_memory={"cpu": half}, offload_folder=str(tmp_path))
    placed = set(split.hf.hf_device_map.values())
    assert placed == {"cpu", "disk"}, split.hf.hf_device_map
    assert any(p.device.type == "meta" for p in split.hf.parameters())  # the disk part is not in memory
    assert split.device == torch.device("cpu") and split.points() == ref.points()

    images = tiny.fixture_images(2, 32, seed=5)
    want = probekit.collect(ref, images, PROMPTS, points="*", positions=("last", "image_mean"), progress=False)
    with torch.no_grad():  # transformers adds its output-capturing hooks on the first forward; count after it
        split.hf(**split.prepare(images, PROMPTS))
    hooks = _forward_hooks(split)
    got = probekit.collect(split, images, PROMPTS, points="*", positions=("last", "image_mean"), progress=False)
    assert _forward_hooks(split) == hooks  # probekit's hooks are gone again
    assert got.points == want.points
    for p in want.points:
        if p == "logits":  # the in-memory head runs on the kept rows (a mean before the head), the offloaded one
            # on every token, as the model runs it (probekit.hooks.backends.deferred_head): equal to float rounding
            torch.testing.assert_close(got[p], want[p], rtol=0, atol=1e-6)
            assert torch.equal(got[p][:, 0], want[p][:, 0])  # `last` keeps a row: the same bits either way
        else:
            assert torch.equal(got[p], want[p]), p
    last = f"lm.{ref.n_layers - 1}.resid"
    # the lens runs the offloaded final norm and unembedding through accelerate's hooks
    assert torch.equal(LogitLens(split).decode(got[last]), LogitLens(ref).decode(want[last]))
