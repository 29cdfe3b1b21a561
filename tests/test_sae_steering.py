"""SAE interventions through the one Intervention context manager: exact edits, hooks removed, KV-cache safe,
loss / KL recovered; the held-out evaluation of a fitted SAE remover."""

from __future__ import annotations

import pytest
import torch

import probekit
from probekit.errors import InputError
from probekit.hooks.store import ActivationStore
from probekit.sae import SAE, train_sae
from probekit.steering import evaluate, sae_clamp, sae_splice, sae_steer, splice_quality

PROMPT = "What colour?"


@pytest.fixture(scope="module")
def setup(llava, one_thread):
    images = probekit.tiny.fixture_images(24, 32)
    store = probekit.collect(llava, images, PROMPT, points="lm.1.resid", positions=("last", "image"), progress=False)
    sae = train_sae(store, "lm.1.resid", None, architecture="topk", d_sae=256, k=16, epochs=30, batch_size=64, seed=0)
    return llava, images, sae


def _resid(model, images, ctx=None):
    import contextlib

    with ctx if ctx is not None else contextlib.nullcontext():
        st = probekit.collect(model, images, PROMPT, points="lm.1.resid", positions=("last", 2), progress=False)
    return st["lm.1.resid"]


def test_steer_adds_alpha_beta_times_the_decoder_rows_and_removes_its_hooks(setup):
    model, images, sae = setup
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())  # noqa: E731
    n_hooks = hooks()
    before = _resid(model, images[:4])
    iv = sae_steer(model, sae, [3, 7], beta=-2.0, alpha=[0.5, 1.5], positions="last")
    after = _resid(model, images[:4], iv)
    want = -2.0 * (0.5 * sae.W_dec[3] + 1.5 * sae.W_dec[7])
    assert torch.allclose(after[:, 0] - before[:, 0], want.expand(4, -1), atol=1e-5)
    assert torch.equal(after[:, 1], before[:, 1])  # position 2 is not "last": untouched
    assert hooks() == n_hooks
    assert torch.equal(_resid(model, images[:4]), before)


def test_clamp_keeps_the_error_term_and_edits_only_the_chosen_latents(setup):
    model, images, sae = setup
    x = _resid(model, images[:6])[:, 0]
    z = sae.encode(x)
    j = int(z.gt(0).sum(0).argmax())  # the latent that fires most often
    got = _resid(model, images[:6], sae_clamp(model, sae, [j], value=-1.0, positions="last"))[:, 0]
    z2 = z.clone()
    z2[:, j] = torch.where(z[:, j] > 0, torch.tensor(-1.0), z[:, j])
    want = x + sae.decode(z2) - sae.decode(z)
    assert torch.allclose(got, want, atol=1e-5)
    assert torch.allclose((got - x)[z[:, j] == 0], torch.zeros(1), atol=1e-6)  # where it does not fire: unchanged
    # clamping a latent to its own value changes nothing (the error term is kept exactly)
    unchanged = _resid(model, images[:1], sae_clamp(model, sae, [j], value=float(z[0, j]), only_active=False,
                                                    positions="last"))[:, 0]
    assert torch.allclose(unchanged, x[:1], atol=1e-5)


def test_edits_apply_to_generated_tokens_through_the_kv_cache(setup):
    model, images, sae = setup
    inputs = model.prepare(images[:1], [PROMPT])
    outs = []
    for ctx in (None, sae_steer(model, sae, [0], beta=-50.0, positions="last", generated=True),
                sae_steer(model, sae, [0], beta=-50.0, positions="last", generated=False)):
        import contextlib

        with ctx if ctx is not None else contextlib.nullcontext(), torch.no_grad():
            out = model.hf.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                                    return_dict_in_generate=True)
        outs.append(torch.stack(out.logits))
    assert not torch.equal(outs[1][0], outs[0][0])  # the prompt's last token is edited in both
    assert torch.equal(outs[1][0], outs[2][0])
    assert not torch.allclose(outs[1][1:], outs[2][1:])  # generated tokens edited only with generated=True


def test_splice_quality_numbers(setup):
    model, images, sae = setup
    q = splice_quality(model, sae, images[:12], PROMPT, positions="last", n_boot=200)
    assert q["kl_sae"] < q["kl_zero"] and 0.5 < q["kl_recovered"] <= 1.0
    eye = torch.eye(sae.d_in)
    perfect = SAE(torch.cat([eye, -eye], 1), torch.zeros(2 * sae.d_in), torch.cat([eye, -eye], 0),
                  torch.zeros(sae.d_in), architecture="standard", point="lm.1.resid")
    q = splice_quality(model, perfect, images[:12], PROMPT, positions="last", n_boot=200)
    assert q["kl_sae"] < 1e-10 and q["kl_recovered"] == pytest.approx(1.0)


def test_bad_arguments_are_refused_before_any_forward(no_forward, setup):
    _, _, sae = setup
    m = no_forward
    with pytest.raises(InputError, match="latents must be indices 0..255"):
        sae_steer(m, sae, [256], beta=1.0)
    with pytest.raises(InputError, match="beta must be a finite number"):
        sae_steer(m, sae, [1], beta=float("nan"))
    with pytest.raises(InputError, match="value must be one finite number or one per latent"):
        sae_clamp(m, sae, [1, 2], value=[0.0, 1.0, 2.0])
    small = SAE.random(8, 16, "topk", k=2, point="lm.1.resid")
    with pytest.raises(InputError, match="SAE has width 8"):
        sae_splice(m, small)
    with pytest.raises(InputError, match="sae is a Tensor"):
        sae_clamp(m, torch.zeros(3), [0])


def test_held_out_evaluation_of_a_clamp(setup):
    """A clamp of the latents that carry a label, fitted on one half, graded by evaluate() on the other."""
    from probekit.sae.select import select_latents
    from probekit.sae.stats import encode_store

    model, images, sae = setup
    more = probekit.tiny.fixture_images(48, 32, seed=3)
    labels = [i % 2 for i in range(48)]
    fit_i, ev_i = more[:24], more[24:]
    z = encode_store(sae, ActivationStore({"lm.1.resid": probekit.collect(model, fit_i, PROMPT, points="lm.1.resid",
                                                                          positions="last", progress=False)["lm.1.resid"]}),
                     "lm.1.resid", None)
    sel = select_latents(z, labels[:24], m=4)
    rep = evaluate(model, lambda: sae_clamp(model, sae, sel, value=0.0), ev_i, labels[24:], fit_images=fit_i,
                   prompts=PROMPT, points="lm.1.resid", cv=3, n_boot=100)
    assert rep.data["fit_overlap"] == 0 and rep.data["n_eval"] == 24
    assert rep.cost["kl_mean"] > 0
    with pytest.raises(InputError, match="fitted on 24 of the 24 evaluation images"):
        evaluate(model, lambda: sae_clamp(model, sae, sel), fit_i, labels[:24], fit_images=fit_i, prompts=PROMPT,
                 points="lm.1.resid", cv=3, n_boot=100)
