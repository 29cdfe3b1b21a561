"""nnsight and TransformerLens backends: same numbers as the plain forward, model untouched."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import subprocess  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (  # noqa: E402
    CLIPVisionConfig,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from probekit.errors import BackendError  # noqa: E402

nnsight_backend = pytest.importorskip("probekit.hooks.backends.nnsight_backend")
tl_backend = pytest.importorskip("probekit.hooks.backends.transformer_lens_backend")

N_LAYERS = 2


def _tl_major() -> int:
    from importlib.metadata import version

    return int(version("transformer-lens").split(".")[0])


# TransformerLens 4.x runs the bridged LLaVA bit for bit as the plain eager forward; 3.9 (what sae-lens 6.x
# pins) re-implements the CLIP vision tower's attention too, measured at 3e-5 to 7e-5 relative error per point
TL_EXACT = _tl_major() >= 4


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical on TransformerLens 4.x; within 1e-4 relative error (float rounding) on 3.x."""
    if TL_EXACT:
        return torch.equal(a, b)
    return _relative(a, b)


def _relative(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-4) -> bool:
    return a.shape == b.shape and bool((a.double() - b.double()).norm() <= tol * b.double().norm().clamp_min(1e-12))


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal to float rounding: ``allclose`` at 1e-5 on TransformerLens 4.x, 1e-4 relative error on 3.x."""
    return torch.allclose(a, b, atol=1e-5, rtol=1e-5) if TL_EXACT else _relative(a, b)
IMAGE_TOKEN = 299
N_IMAGE_TOKENS = 16  # (32 / 8) ** 2


def _llava(attn: str) -> LlavaForConditionalGeneration:
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, image_size=32, patch_size=8,
        ),
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=N_LAYERS,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=300,
        ),
        image_token_index=IMAGE_TOKEN,
    )
    model = LlavaForConditionalGeneration(cfg).eval()
    model.set_attn_implementation(attn)
    return model


def _inputs(padded: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, IMAGE_TOKEN - 1, (2, 24), generator=g)
    ids[0, 2:2 + N_IMAGE_TOKENS] = IMAGE_TOKEN
    ids[1, 5:5 + N_IMAGE_TOKENS] = IMAGE_TOKEN
    mask = torch.ones(2, 24, dtype=torch.long)
    if padded:
        mask[1, :3] = 0  # left padding in row 1
        ids[1, :3] = 0
    return {"input_ids": ids, "attention_mask": mask,
            "pixel_values": torch.randn(2, 3, 32, 32, generator=g)}


def _targets() -> dict[str, tuple[str, str]]:
    t = {"lm.embed": ("model.language_model.layers.0", "input"),
         "lm.norm": ("model.language_model.norm", "output"),
         "logits": ("lm_head", "output"),
         "projector": ("model.multi_modal_projector", "output"),
         "vision.1.resid": ("model.vision_tower.encoder.layers.1", "output")}
    for i in range(N_LAYERS):
        t[f"lm.{i}.resid"] = (f"model.language_model.layers.{i}", "output")
        t[f"lm.{i}.attn"] = (f"model.language_model.layers.{i}.self_attn", "output")
        t[f"lm.{i}.mlp"] = (f"model.language_model.layers.{i}.mlp", "output")
    return t


def _reference(model, inputs, targets):
    """Plain forward with plain torch hooks: what every backend must reproduce."""
    seen, handles = {}, []
    modules = dict(model.named_modules())
    for point, (path, mode) in targets.items():
        def hook(mod, args, kwargs, out, point=point, mode=mode):
            if mode == "input":
                seen[point] = args[0] if args else kwargs["hidden_states"]
            else:
                seen[point] = out[0] if isinstance(out, tuple) else out
        handles.append(modules[path].register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            out = model(**inputs, output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, seen


def _hooks_snapshot(model):
    return {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks),
                {k for k in m.__dict__ if k in ("forward", "__nnsight__")})
            for n, m in model.named_modules()}


def _run_and_check_untouched(backend, model, inputs, targets):
    with torch.inference_mode():
        model(**inputs)  # transformers installs its own output-capture hooks on first call
    before_hooks = _hooks_snapshot(model)
    before_sd = {k: v.clone() for k, v in model.state_dict().items()}
    before_modules = [(n, type(m)) for n, m in model.named_modules()]
    attn_before = model.config._attn_implementation
    got = backend.record(model, inputs, targets)
    assert _hooks_snapshot(model) == before_hooks
    after_sd = model.state_dict()
    assert before_sd.keys() == after_sd.keys()
    assert all(torch.equal(before_sd[k], after_sd[k]) for k in before_sd)
    assert [(n, type(m)) for n, m in model.named_modules()] == before_modules
    assert model.config._attn_implementation == attn_before
    assert set(got) == set(targets)
    return got


# ---------------------------------------------------------------- nnsight


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_nnsight_identical_to_plain_forward(attn):
    model, inputs, targets = _llava(attn), _inputs(padded=True), _targets()
    got = _run_and_check_untouched(nnsight_backend, model, inputs, targets)
    out, ref = _reference(model, inputs, targets)
    hs = out.hidden_states
    assert torch.equal(got["lm.embed"], hs[0])
    for i in range(N_LAYERS - 1):
        assert torch.equal(got[f"lm.{i}.resid"], hs[i + 1])
    assert torch.equal(got["lm.norm"], hs[-1])  # transformers 5: hidden_states[-1] is post-norm
    assert torch.equal(got["logits"], out.logits)
    for point in targets:
        assert got[point].dtype == ref[point].dtype and got[point].device == ref[point].device
        assert torch.equal(got[point], ref[point]), point
        assert not got[point].requires_grad


def test_nnsight_record_many_and_errors():
    model, targets = _llava("sdpa"), {"lm.0.resid": ("model.language_model.layers.0", "output")}
    batches = [_inputs(True), _inputs(False)]
    many = nnsight_backend.record_many(model, batches, targets)
    for batch, got in zip(batches, many):
        assert torch.equal(got["lm.0.resid"], _reference(model, batch, targets)[1]["lm.0.resid"])
    with pytest.raises(BackendError, match="not in the model"):
        nnsight_backend.record(model, batches[0], {"x": ("model.nope", "output")})
    with pytest.raises(BackendError, match="mode"):
        nnsight_backend.record(model, batches[0], {"x": ("lm_head", "weights")})


# ---------------------------------------------------------------- TransformerLens


def test_tl_supported_and_hook_names():
    model = _llava("eager")
    assert tl_backend.supported(model)
    assert not tl_backend.supported(torch.nn.Sequential(torch.nn.Linear(2, 2)))
    names = tl_backend.tl_hook_names(model, _targets())
    assert names["lm.embed"] == "blocks.0.hook_in"
    assert names["lm.1.resid"] == "blocks.1.hook_out"
    assert names["lm.0.attn"] == "blocks.0.attn.hook_out"
    assert names["lm.0.mlp"] == "blocks.0.mlp.hook_out"
    assert names["lm.norm"] == "ln_final.hook_out"
    assert names["logits"] == "unembed.hook_out"
    assert names["projector"] == "vision_projector.hook_out"
    assert names["vision.1.resid"] == "vision_encoder.encoder_layers.1.hook_out"
    with pytest.raises(BackendError, match="no hook point"):
        tl_backend.tl_hook_names(model, {"x": ("model.multi_modal_projector.linear_1", "output")})


def test_tl_identical_to_plain_eager_forward_unpadded():
    """Unpadded batch, eager attention: bit-identical everywhere."""
    model, inputs, targets = _llava("eager"), _inputs(padded=False), _targets()
    got = _run_and_check_untouched(tl_backend, model, inputs, targets)
    out, ref = _reference(model, inputs, targets)
    hs = out.hidden_states
    assert _same(got["lm.embed"], hs[0])
    for i in range(N_LAYERS - 1):
        assert _same(got[f"lm.{i}.resid"], hs[i + 1])
    assert _same(got["lm.norm"], hs[-1])
    assert _same(got["logits"], out.logits)
    for point in targets:
        assert got[point].dtype == ref[point].dtype
        assert _same(got[point], ref[point]), point


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tl_padded_batch(attn):
    """The bridge re-implements decoder attention (eager math). Upstream of it (vision
    tower, projector, merged embeddings) stays exact for any attention implementation;
    downstream, rows without padding are exact under eager, and everything agrees to
    float rounding otherwise (padded query positions are garbage in any backend)."""
    model, inputs, targets = _llava(attn), _inputs(padded=True), _targets()
    got = _run_and_check_untouched(tl_backend, model, inputs, targets)
    out, ref = _reference(model, inputs, targets)
    for point in ("lm.embed", "projector", "vision.1.resid"):
        assert _same(got[point], ref[point]), point
    real = inputs["attention_mask"].bool()
    for point in targets:
        if got[point].shape[:2] == real.shape:  # language-model points: compare real tokens
            assert _close(got[point][real], ref[point][real]), point
        if attn == "eager":
            assert _same(got[point][0], ref[point][0]), point  # the unpadded row


def test_tl_text_only_lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_size=300)
    model = LlamaForCausalLM(cfg).eval()
    model.set_attn_implementation("eager")
    inputs = {"input_ids": torch.randint(0, 300, (2, 10)),
              "attention_mask": torch.ones(2, 10, dtype=torch.long)}
    targets = {"lm.embed": ("model.layers.0", "input"), "lm.0.resid": ("model.layers.0", "output"),
               "lm.norm": ("model.norm", "output")}
    got = _run_and_check_untouched(tl_backend, model, inputs, targets)
    with torch.inference_mode():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    assert torch.equal(got["lm.embed"], hs[0])
    assert torch.equal(got["lm.0.resid"], hs[1])
    assert torch.equal(got["lm.norm"], hs[-1])


def test_tl_unsupported_model_raises_clearly():
    with pytest.raises(BackendError, match="no TransformerBridge adapter for Sequential"):
        tl_backend.record(torch.nn.Sequential(torch.nn.Linear(2, 2)), {"input_ids": torch.zeros(1)},
                          {"x": ("0", "output")})


# ---------------------------------------------------------------- no auto-install


def _forbid_subprocess(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"subprocess spawned: {args}")

    for name in ("check_call", "check_output", "run", "call", "Popen"):
        monkeypatch.setattr(subprocess, name, refuse)
    return calls


def test_torchvision_guard_active_and_restored(monkeypatch):
    calls = _forbid_subprocess(monkeypatch)
    if not TL_EXACT:
        # TransformerLens 3.x (sae-lens pins it): the only installer sits in boot(), never called here
        import transformer_lens.model_bridge.sources.transformers as tl_source

        boot = tl_source.boot
        with tl_backend.no_auto_install():
            assert tl_source.boot is boot
        assert calls == []
        return
    import transformer_lens.model_bridge.sources.transformers.helpers as helpers
    import transformer_lens.model_bridge.sources.transformers.source as source

    original = helpers._ensure_torchvision
    original_loader = source.load_modality_processor
    assert not getattr(original, "_probekit_guard", False)
    with tl_backend.no_auto_install():
        assert getattr(helpers._ensure_torchvision, "_probekit_guard", False)
        assert getattr(source.load_modality_processor, "_probekit_guard", False)
        assert getattr(helpers.load_modality_processor, "_probekit_guard", False)
        helpers._ensure_torchvision()  # no pip, whether or not torchvision imports
        source.load_modality_processor(None, None, "llava-hf/llava-1.5-7b-hf", False, None)
    assert helpers._ensure_torchvision is original
    assert source.load_modality_processor is original_loader
    assert calls == []


def test_tl_record_spawns_nothing(monkeypatch):
    calls = _forbid_subprocess(monkeypatch)
    model = _llava("eager")
    tl_backend.record(model, _inputs(padded=False), {"lm.0.resid": ("model.language_model.layers.0", "output")})
    assert calls == []


# ---------------------------------------------------------------- real offline checkpoint


def test_backends_on_tiny_checkpoint(tmp_path):
    tiny = pytest.importorskip("probekit.tiny")
    model, processor = tiny.load(tiny.build("llava", tmp_path / "llava", seed=0))
    prompts = [tiny.prompt("llava", "What?"), tiny.prompt("llava", "What colour is the big square?")]
    inputs = dict(processor(images=tiny.fixture_images(2, 32), text=prompts,
                            return_tensors="pt", padding=True))
    n = model.config.text_config.num_hidden_layers
    targets = {"lm.embed": ("model.language_model.layers.0", "input"),
               "lm.norm": ("model.language_model.norm", "output"),
               **{f"lm.{i}.resid": (f"model.language_model.layers.{i}", "output") for i in range(n)}}
    with torch.inference_mode():
        hs = model(**inputs, output_hidden_states=True).hidden_states
    got = nnsight_backend.record(model, inputs, targets)
    assert torch.equal(got["lm.embed"], hs[0]) and torch.equal(got["lm.norm"], hs[-1])
    assert all(torch.equal(got[f"lm.{i}.resid"], hs[i + 1]) for i in range(n - 1))
    got = tl_backend.record(model, inputs, targets)
    assert _same(got["lm.embed"], hs[0])
    real = inputs["attention_mask"].bool()
    assert _close(got["lm.norm"][real], hs[-1][real])


def test_tl_bridge_cache_follows_the_model():
    model, inputs = _llava("eager"), _inputs(padded=False)
    targets = {"lm.0.resid": ("model.language_model.layers.0", "output")}
    tl_backend.clear_cache()
    first = tl_backend.record(model, inputs, targets)["lm.0.resid"]
    bridge = tl_backend._cached_bridge(model)
    assert tl_backend._cached_bridge(model) is bridge  # reused
    with torch.no_grad():  # in-place weight edits are seen (weights are shared)
        model.model.language_model.layers[0].mlp.down_proj.weight.mul_(2)
    edited = tl_backend.record(model, inputs, targets)["lm.0.resid"]
    assert not torch.equal(first, edited)
    assert _same(edited, _reference(model, inputs, targets)[1]["lm.0.resid"])
    # a hook added to the user's model invalidates the cached copy
    handle = model.model.language_model.layers[0].register_forward_hook(lambda m, a, o: o * 0)
    try:
        assert tl_backend._cached_bridge(model) is not bridge
        assert torch.equal(tl_backend.record(model, inputs, targets)["lm.0.resid"],
                           torch.zeros_like(edited))
    finally:
        handle.remove()
