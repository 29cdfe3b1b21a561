"""A model with parameters of real size: LLaVA-1.5-7B's vocabulary (32,000) at width 1,024.

Its embedding and unembedding hold 32,768,000 values each, over 2**24: the size at which float32 index
arithmetic stops being exact (the fingerprint once sampled index 32,768,000 of a 32,768,000-value
tensor and crashed every collect). The blocks stay small, so the whole file runs in seconds; every
step a user takes runs on it: load from disk, fingerprint, collect to a disk store and back, scan,
the logit lens, and steering (ablate, orthogonalize and its undo, a saved Direction).
"""

import warnings

import pytest
import torch
import transformers

import probekit
from probekit.readout.lens import LogitLens
from probekit.steering import Direction, ablate, orthogonalize

VOCAB, WIDTH = 32000, 1024


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    path = probekit.tiny.build("llava", tmp_path_factory.mktemp("big") / "llava", hidden_size=WIDTH, num_layers=2,
                               intermediate_size=256, num_heads=8)
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.resize_token_embeddings(VOCAB, mean_resizing=False)
    with torch.no_grad():  # rows past the tokenizer's vocabulary get values (resize leaves them at init)
        torch.manual_seed(0)
        emb = hf.get_input_embeddings().weight
        emb[-1000:].normal_(0, 0.02)
    hf.save_pretrained(path)
    model = probekit.load(path)  # the path a hub checkpoint takes
    sizes = {n: p.numel() for n, p in model.hf.named_parameters()}
    assert max(sizes.values()) == VOCAB * WIDTH > 2**24
    return path, model


def _images(n=24):
    return probekit.tiny.fixture_images(n, 32, seed=1)


def test_fingerprint_reads_every_big_parameter(big):
    _, model = big
    before = model.fingerprint()
    assert before == model.fingerprint()
    emb = model.hf.get_input_embeddings().weight
    with torch.no_grad():
        old = emb.view(-1)[-1].item()
        emb.view(-1)[-1] += 1.0  # the last value of the largest tensor is always sampled
        try:
            assert model.fingerprint() != before
        finally:
            emb.view(-1)[-1] = old
    assert model.fingerprint() == before


def test_collect_to_disk_and_back_and_the_lens_on_the_full_vocabulary(big, tmp_path):
    _, model = big
    images = _images()
    last = f"lm.{model.n_layers - 1}.resid"
    store = probekit.collect(model, images, "What shape is it?", points=["lm.*.resid", "logits"],
                             positions=("last", "image_mean"), store=tmp_path / "acts", batch_size=8, progress=False)
    again = probekit.ActivationStore.open(tmp_path / "acts")
    assert again.points == ["lm.0.resid", "lm.1.resid", "logits"]
    assert again["logits"].shape == (24, 2, VOCAB) and again[last].shape == (24, 2, WIDTH)
    for p in again.points:
        assert torch.equal(again[p], store[p])
    # the lens on the last block is the model's output, over all 32,000 tokens
    torch.testing.assert_close(LogitLens(model).decode(store[last][:, 0]), store["logits"][:, 0].float(),
                               atol=1e-4, rtol=1e-4)
    plan = probekit.store_layout(model, 24, ["lm.*.resid", "logits"], ("last", "image_mean"))
    assert plan.table.set_index("point")["shape"].to_dict() == {p: list(again[p].shape[1:]) for p in again.points}


def test_scan_on_the_big_model(big, tmp_path):
    _, model = big
    labels = ["even" if i % 2 == 0 else "odd" for i in range(24)]
    report = probekit.scan(model, _images(), labels=labels, prompts="What shape is it?", cv=3, n_boot=100,
                           progress=False, store=str(tmp_path / "scan"), tuned_lens=False)
    table = report.table
    assert {"lm.0.resid", "lm.1.resid"} <= set(table["point"])
    acc = table["accuracy"].dropna()
    assert len(acc) >= 4 and acc.between(0, 1).all()
    report.save(tmp_path / "r.html")
    assert (tmp_path / "r.html").stat().st_size > 10_000


def test_steering_on_the_big_model(big, tmp_path):
    _, model = big
    images = _images()
    labels = [i % 2 for i in range(24)]
    acts = probekit.collect(model, images, "What shape is it?", points="lm.*.resid", progress=False)
    d = Direction.from_means(acts, labels)
    d.save(tmp_path / "d")
    back = Direction.load(tmp_path / "d", model)
    for p in d.points:
        assert torch.equal(back.basis(p), d.basis(p))
    with ablate(model, d, points="lm.0.resid"):
        erased = probekit.collect(model, images, "What shape is it?", points="lm.0.resid", progress=False)
    q = d.basis("lm.0.resid").float()
    assert (erased["lm.0.resid"].float() @ q.T).abs().max() < 1e-3
    assert (acts["lm.0.resid"].float() @ q.T).abs().max() > 1e-2
    # a weight edit on the 32,000 x 1,024 embedding, and its undo bit for bit
    weights = {n: p.detach().clone() for n, p in model.hf.named_parameters()}
    handle = orthogonalize(model, d, point="lm.0.resid")
    emb = model.hf.get_input_embeddings().weight
    assert not torch.equal(emb, weights[next(n for n, p in model.hf.named_parameters() if p is emb)])
    handle.undo()
    for n, p in model.hf.named_parameters():
        assert torch.equal(p, weights[n]), n
