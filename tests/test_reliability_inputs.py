"""Bad inputs that used to be accepted, each refused with a clear error before any forward pass:
a prompt longer than the model's context, images with negative float pixels, ``chat=`` or
``progress=`` that are not booleans, labels that mix types, and a forced ``family=`` that contradicts
the checkpoint. The model's forward (``no_forward``) or its weight loading fails the test if reached.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import probekit
from probekit.errors import ImageError, InputError, LabelError, ProbekitError
from probekit import tiny
from probekit.models.context import context_length
from probekit.readout.lens import TunedLens
from probekit.steering import Direction, ablate, evaluate, leace_sequential
from _errors import check

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = dict(points="lm.0.resid", batch_size=2, progress=False)


def images(n=4):
    return tiny.fixture_images(n, 32, seed=1)


# ----------------------------------------------------------------------------- the context length
def test_a_prompt_longer_than_the_context_is_refused_before_any_forward(no_forward, tmp_path, recwarn):
    limit = context_length(no_forward)
    assert limit == 4096  # the tiny LLaVA's max_position_embeddings
    long = "word " * 3 * limit  # the case: ~12,000 tokens for a 4,096-token model
    with pytest.raises(InputError) as info:
        probekit.collect(no_forward, images(), ["ok", long, "ok", "ok"], store=tmp_path / "s", **ARGS)
    check(info, InputError, "prompt 1", "tokens long", "context of 4096 tokens")
    assert not (tmp_path / "s").exists()
    with pytest.raises(InputError) as info:
        probekit.scan(no_forward, images(8), [0, 1] * 4, long, points="lm.0.resid", cv=2, progress=False)
    check(info, InputError, "prompt 0", "context of 4096")
    with pytest.raises(InputError) as info:  # the answer counts too
        probekit.collect(no_forward, images(), "q", answers=long, positions="answer_mean", **ARGS)
    check(info, InputError, "context of 4096")
    assert not [w for w in recwarn.list if "longer than the specified maximum" in str(w.message)]


def test_image_and_template_tokens_that_overflow_are_refused_per_batch(no_forward, tmp_path):
    """The text alone fits; with the chat template and the image's tokens the batch does not."""
    tok = no_forward.processor.tokenizer
    prompt = "a" + " b" * 4080
    n = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert n <= 4096
    with pytest.raises(InputError) as info:
        probekit.collect(no_forward, images(), prompt, store=tmp_path / "s", **ARGS)
    check(info, InputError, "prepared input", "context of 4096")
    assert not (tmp_path / "s").exists()


def test_prompts_within_the_context_still_run(llava):
    s = probekit.collect(llava, images(2), "word " * 500, **ARGS)
    assert s["lm.0.resid"].shape == (2, llava.d_model)


# ----------------------------------------------------------------------------- pixels
@pytest.mark.parametrize("make", [
    lambda: np.random.default_rng(0).normal(size=(32, 32, 3)).astype(np.float32),  # normalised: mean 0, std 1
    lambda: torch.full((3, 32, 32), -0.1),
    lambda: np.full((32, 32, 3), -3, dtype=np.int16),
], ids=["normalised-array", "negative-tensor", "negative-ints"])
def test_negative_pixels_are_refused(no_forward, tmp_path, make):
    with pytest.raises(ImageError) as info:
        probekit.collect(no_forward, [images(1)[0], make()], "x", store=tmp_path / "s", **ARGS)
    check(info, ImageError, "image 1", "below 0")
    assert not (tmp_path / "s").exists()


def test_pixels_in_range_are_accepted(llava):
    ok = [np.zeros((32, 32, 3), np.float32), np.ones((32, 32, 3), np.float32), torch.full((3, 32, 32), 255.0)]
    assert len(probekit.collect(llava, ok, "x", **ARGS)) == 3


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("kw, words", [
    ({"chat": "no"}, ["chat must be True, False or None", "'no'"]),
    ({"chat": 0}, ["chat must be", "0 (int)"]),
    ({"progress": "no"}, ["progress must be True or False", "'no'"]),
    ({"progress": None}, ["progress must be True or False", "None"]),
    ({"progress": 1}, ["progress must be", "(int)"]),
])
def test_collect_flags_that_are_not_booleans(no_forward, tmp_path, kw, words):
    args = {**ARGS, **kw}
    with pytest.raises(InputError) as info:
        probekit.collect(no_forward, images(), "x", store=tmp_path / "s", **args)
    check(info, InputError, *words)
    assert not (tmp_path / "s").exists()


def test_progress_not_a_boolean_everywhere(no_forward):
    y = [0, 1, 0, 1]
    acts = {"lm.0.resid": torch.randn(8, 4)}
    calls = [
        lambda: probekit.scan(no_forward, images(), y, "x", points="lm.0.resid", progress="yes"),
        lambda: probekit.probe_layers(acts, [0, 1] * 4, progress="yes"),
        lambda: evaluate(no_forward, lambda: ablate(no_forward, Direction.from_vectors(torch.ones(no_forward.d_model))),
                         images(8), [0, 1] * 4, points="lm.0.resid", progress="yes",
                         direction=Direction.from_vectors(torch.ones(no_forward.d_model)), allow_overlap=True),
        lambda: leace_sequential(no_forward, images(), y, "x", points="lm.0.resid", progress="yes"),
        lambda: TunedLens.fit(no_forward, {"lm.0.resid": torch.zeros(2, no_forward.d_model)}, progress="yes"),
        lambda: no_forward.prepare(images(1), ["x"], chat="yes"),
    ]
    for call in calls:
        with pytest.raises(InputError) as info:
            call()
        check(info, InputError, "must be True")


# ----------------------------------------------------------------------------- labels
MIXED = {
    "int-and-str": ([1, "1", 0, "0"], ["label 0 is 1 (a number)", "label 1 is '1' (a string)"]),
    "bool-and-int": ([True, 1, False, 0], ["a boolean", "a number"]),
    "object-array": (np.array([0, "a", 0, "a"], dtype=object), ["a number", "a string"]),
    "series": (pd.Series(["x", 2, "x", 2]), ["a string", "a number"]),
}


@pytest.mark.parametrize("case", list(MIXED))
def test_labels_of_mixed_types_are_refused(no_forward, tmp_path, case):
    labels, words = MIXED[case]
    with pytest.raises(LabelError) as info:
        probekit.scan(no_forward, images(), labels, "x", points="lm.0.resid", store=str(tmp_path / "s"), progress=False)
    check(info, LabelError, "mix types", *words)
    assert not (tmp_path / "s").exists()
    acts = {"lm.0.resid": torch.randn(4, 6)}
    for call in (lambda: probekit.probe_layers(acts, labels, cv=2, progress=False),
                 lambda: Direction.from_means(acts, labels)):
        with pytest.raises(LabelError) as info:
            call()
        check(info, LabelError, "mix types")


def test_labels_of_one_type_are_accepted():
    acts = {"lm.0.resid": torch.randn(8, 6)}
    for labels in (["a", "b"] * 4, [0, 1] * 4, [0.0, 1] * 4, [True, False] * 4, np.array(["a", "b"] * 4, dtype=object)):
        assert Direction.from_means(acts, labels).points == ["lm.0.resid"]


# ----------------------------------------------------------------------------- family=
def test_a_family_that_contradicts_the_checkpoint_is_refused(tiny_dir, monkeypatch):
    import probekit.models.loading as loading

    monkeypatch.setattr(loading, "_model_class", lambda config: pytest.fail("weights were loaded first"))
    with pytest.raises(InputError) as info:
        probekit.load(tiny_dir("llava"), family="mllama")
    check(info, InputError, "family='mllama'", "'llava'", "family=None")
    with pytest.raises(InputError) as info:
        probekit.load(tiny_dir("llava"), family="no-such-family")
    check(info, InputError, "unknown family")
    monkeypatch.undo()
    m = probekit.load(tiny_dir("llava"))
    with pytest.raises(InputError) as info:
        probekit.wrap(m.hf, m.processor, family="qwen2_vl")
    check(info, InputError, "family='qwen2_vl'")
    assert probekit.wrap(m.hf, m.processor, family="generic").family == "generic"  # generic is always allowed
    assert probekit.wrap(m.hf, m.processor, family="llava").family == "llava"
    assert isinstance(info.value, ProbekitError)
