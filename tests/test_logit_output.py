"""The model's output map after lm_head (Aya Vision's logit_scale, PaliGemma 2's soft cap): the logit lens
and the ``logits`` point apply exactly what the installed class's forward applies, no more, no less."""

import inspect
import warnings

import pytest
import torch

import probekit
from probekit import tiny
from probekit.tiny import zoo
from probekit.models.logit_output import LogitOutput, logit_output
from probekit.readout.lens import LogitLens

PROMPTS = ["What shape is it?", "What colour is the big square on the left?"]


def _wrap(arch: str) -> probekit.Model:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return probekit.wrap(*zoo.build(arch))


def _names(model: probekit.Model, field: str) -> bool:
    """Whether the installed class's forward applies a config field (what the rule under test reads)."""
    return field in inspect.getsource(type(model.hf).forward)


def _check_output(model: probekit.Model) -> torch.Tensor:
    """Lens on the last block and the ``logits`` point, both against the model's own logits at the last token."""
    images = tiny.fixture_images(2, 32, seed=3)
    inputs = model.prepare(images, PROMPTS)
    last = (inputs["attention_mask"].long() * torch.arange(1, inputs["attention_mask"].shape[1] + 1)).argmax(1)
    with torch.no_grad():
        logits = model.hf(**inputs).logits[torch.arange(2), last].float()
    store = probekit.collect(model, images, PROMPTS, points=[f"lm.{model.n_layers - 1}.resid", "logits"],
                             positions="last", progress=False)
    torch.testing.assert_close(LogitLens(model).decode(store[f"lm.{model.n_layers - 1}.resid"]), logits,
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(store["logits"].float(), logits, atol=1e-5, rtol=1e-5)
    return logits


def test_map_applies_scale_then_cap():
    x = torch.tensor([-30.0, -1.0, 0.0, 2.0, 40.0])
    assert torch.equal(LogitOutput()(x), x)
    torch.testing.assert_close(LogitOutput(scale=0.25)(x), x * 0.25)
    torch.testing.assert_close(LogitOutput(scale=2.0, softcap=5.0)(x), 5.0 * torch.tanh(2.0 * x / 5.0))
    assert LogitOutput(softcap=5.0)(x).abs().max() < 5.0


def test_paligemma_with_a_soft_capped_text_model():
    """PaliGemma's forward caps the logits when its text config says so (PaliGemma 2's Gemma 2: cap 30)."""
    hf, proc = zoo.build("paligemma")
    hf.config.text_config.final_logit_softcapping = 0.5  # small, so that the cap changes every logit
    model = probekit.wrap(hf, proc)
    if _names(model, "final_logit_softcapping"):
        assert model.target("logits").post == LogitOutput(softcap=0.5)
        logits = _check_output(model)
        assert logits.abs().max() < 0.5  # the cap is in the model's output, so the checks above compared capped logits
    else:  # a release whose PaliGemma forward does not cap: neither does the lens
        assert model.target("logits").post is None
        assert _check_output(model).abs().max() > 0.5


def test_aya_vision_scale_follows_the_installed_forward():
    """Aya Vision's forward applies text_config.logit_scale from transformers 5.25 on, and not before: the map
    follows the installed class's forward, not the config alone."""
    model = _wrap("aya_vision")
    scale = model.hf.config.text_config.logit_scale
    assert scale not in (None, 1.0)
    assert model.target("logits").post == (LogitOutput(scale=scale) if _names(model, "logit_scale") else None)
    _check_output(model)

    # a class whose forward does not apply it (as AyaVisionForConditionalGeneration up to transformers 5.24)
    class Older(type(model.hf)):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            return out

    older = object.__new__(Older)
    older.__dict__.update(model.hf.__dict__)
    assert logit_output(older).identity


@pytest.mark.parametrize("arch", ["llava", "qwen2_vl", "gemma3", "blip-2", "florence2"])
def test_models_without_an_output_map_have_none(arch):
    model = _wrap(arch)
    assert model.target("logits").post is None
    assert isinstance(model.head.output, LogitOutput) and model.head.output.identity
