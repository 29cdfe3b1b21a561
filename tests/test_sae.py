"""probekit.sae: the value, sae-lens's on-disk format (directories written by the real library), checks on
load, atomic saves, streaming deterministic training, quality numbers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from probekit.errors import InputError, StoreError
from probekit.hooks.store import ActivationStore
from probekit.sae import SAE, load_sae, sae_stats, save_sae, train_sae
from probekit.hooks.points import point_from_hook
from probekit.sae.files import read_config
from probekit.sae.select import select_latents

FIXTURES = Path(__file__).parent / "data" / "saelens"


@pytest.mark.parametrize("arch", ["standard", "topk", "jumprelu"])
def test_directories_written_by_sae_lens_load_and_encode_as_sae_lens_does(arch):
    """tests/data/saelens/* were written by sae-lens 6.54.12's SAE.save_model, with its own encodings."""
    assert (FIXTURES / "VERSION").read_text().startswith("sae-lens 6.54.12")
    sae = load_sae(FIXTURES / arch)
    expected = load_file(str(FIXTURES / arch / "expected.safetensors"))
    assert (sae.architecture, sae.d_in, sae.d_sae, sae.k) == (arch, 8, 16, 3 if arch == "topk" else None)
    assert sae.point == "lm.1.resid"  # metadata.hook_name blocks.1.hook_resid_post, translated
    z = sae.encode(expected["x"])
    assert torch.equal(z, expected["z"]) and torch.equal(sae.decode(z), expected["x_hat"])
    if arch == "topk":
        assert int((z > 0).sum(-1).max()) <= 3


def test_save_load_round_trip_is_exact_and_readable_as_sae_lens_writes(tmp_path):
    sae = SAE.random(8, 32, "topk", k=4, seed=1, point="lm.2.resid", position="last", meta={"note": "x"})
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
    d = save_sae(sae, tmp_path / "s")
    assert sorted(p.name for p in d.iterdir()) == ["cfg.json", "sae_weights.safetensors"]
    cfg = json.loads((d / "cfg.json").read_text())
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"], cfg["metadata"]["hook_name"]) == \
        ("topk", 8, 32, 4, "lm.2.resid")
    assert set(load_file(str(d / "sae_weights.safetensors"))) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    back = load_sae(d)
    assert (back.point, back.position, back.meta) == ("lm.2.resid", "last", {"note": "x"})
    x = torch.randn(20, 8)
    assert all(torch.equal(a, b) for a, b in zip(sae.tensors().values(), back.tensors().values()))
    assert torch.equal(back.encode(x), sae.encode(x))
    save_sae(back, d)  # overwriting an existing directory: replaced whole
    assert torch.equal(load_sae(d).W_dec, sae.W_dec)


def _copy(tmp_path, name="topk") -> Path:
    d = tmp_path / name
    shutil.copytree(FIXTURES / name, d)
    return d


def _edit_cfg(d: Path, **changes) -> None:
    cfg = json.loads((d / "cfg.json").read_text())
    for k, v in changes.items():
        if v is ...:
            cfg.pop(k)
        else:
            cfg[k] = v
    (d / "cfg.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes, field", [
    ({"d_in": ...}, "'d_in' is missing"),
    ({"d_sae": "16"}, "'d_sae' is str"),
    ({"k": 0}, "'k' is 0"),
    ({"k": 17}, "'k' is 17, larger than d_sae=16"),
    ({"architecture": "gated"}, "'architecture' is 'gated'"),
    ({"normalize_activations": "layer_norm"}, "'normalize_activations' is 'layer_norm'"),
    ({"reshape_activations": "hook_z"}, "'reshape_activations' is 'hook_z'"),
    ({"apply_b_dec_to_input": 1}, "'apply_b_dec_to_input' is int"),
    ({"d_in": 9}, "'W_enc' has shape [8, 16], expected [9, 16]"),
])
def test_bad_config_fields_are_refused_naming_the_field(tmp_path, changes, field):
    d = _copy(tmp_path)
    _edit_cfg(d, **changes)
    with pytest.raises(StoreError) as err:
        load_sae(d)
    assert field in str(err.value)


def test_bad_files_are_refused_not_raw_errors(tmp_path):
    d = _copy(tmp_path)
    (d / "cfg.json").write_text('{"d_in": 8, "d_in": 8}')
    with pytest.raises(StoreError, match="'d_in' appears twice"):
        load_sae(d)
    d = _copy(tmp_path / "b")
    (d / "cfg.json").write_text('{"d_in": NaN}')
    with pytest.raises(StoreError, match="NaN is not a JSON number"):
        load_sae(d)
    d = _copy(tmp_path / "c")
    w = load_file(str(d / "sae_weights.safetensors"))
    w["W_dec"][0, 0] = float("nan")
    save_file(w, str(d / "sae_weights.safetensors"))
    with pytest.raises(StoreError, match="'W_dec' holds NaN or inf"):
        load_sae(d)
    w["W_dec"][0, 0] = 0.0
    w["extra"] = torch.zeros(2)
    save_file(w, str(d / "sae_weights.safetensors"))
    with pytest.raises(StoreError, match=r"unexpected \['extra'\]"):
        load_sae(d)
    del w["extra"], w["b_enc"]
    save_file(w, str(d / "sae_weights.safetensors"))
    with pytest.raises(StoreError, match=r"missing \['b_enc'\]"):
        load_sae(d)
    (d / "sae_weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(StoreError, match="truncated"):
        load_sae(d)
    (d / "sae_weights.safetensors").unlink()
    with pytest.raises(StoreError, match="no SAE weights at"):
        load_sae(d)
    with pytest.raises(StoreError, match="has no cfg.json"):
        load_sae(tmp_path)
    with pytest.raises(StoreError, match="no SAE directory"):
        load_sae(tmp_path / "nowhere")


def test_a_probekit_sae_changed_after_saving_is_refused(tmp_path):
    d = save_sae(SAE.random(4, 8, "topk", k=2, point="lm.0.resid"), tmp_path / "s")
    _edit_cfg(d, k=3)  # a valid edit, but not what was saved
    with pytest.raises(StoreError, match="does not match its checksum"):
        load_sae(d)


def test_a_failed_save_leaves_the_old_directory(tmp_path, monkeypatch):
    import probekit.files.writing as writing

    d = save_sae(SAE.random(4, 8, "topk", k=2, seed=0, point="lm.0.resid"), tmp_path / "s")
    old = load_sae(d).W_dec.clone()

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writing.os, "replace", full)
    with pytest.raises(StoreError, match="no space left on device"):
        save_sae(SAE.random(4, 8, "topk", k=2, seed=5, point="lm.0.resid"), d)
    monkeypatch.undo()
    assert torch.equal(load_sae(d).W_dec, old) and [p.name for p in tmp_path.iterdir()] == ["s"]


def test_pre_6_config_and_hook_names():
    assert point_from_hook("blocks.12.hook_resid_post") == "lm.12.resid"
    assert point_from_hook("blocks.3.hook_mlp_out") == "lm.3.mlp" and point_from_hook("hook_embed") is None


def test_pre_6_sae_lens_config_reads_as_6(tmp_path):
    d = _copy(tmp_path)
    _edit_cfg(d, metadata=..., architecture=..., k=..., rescale_acts_by_decoder_norm=..., reshape_activations=...,
              hook_point="blocks.4.hook_resid_post", activation_fn_str="topk", activation_fn_kwargs={"k": 3},
              sae_lens_version="5.9.1")
    cfg = read_config(d)
    assert (cfg["architecture"], cfg["k"], cfg["metadata"]["hook_name"]) == ("topk", 3, "blocks.4.hook_resid_post")
    sae = load_sae(d)
    assert sae.point == "lm.4.resid"
    expected = load_file(str(FIXTURES / "topk" / "expected.safetensors"))
    assert torch.equal(sae.encode(expected["x"]), expected["z"])


def test_bad_sae_arguments():
    with pytest.raises(InputError, match="0 < k <= d_sae=8"):
        SAE.random(4, 8, "topk", k=9)
    with pytest.raises(InputError, match="reads activations of width 4"):
        SAE.random(4, 8, "topk", k=2).encode(torch.zeros(3, 5))
    with pytest.raises(InputError, match="cannot train a 'jumprelu' SAE"):
        train_sae(ActivationStore({"p": torch.zeros(10, 4)}), "p", architecture="jumprelu")
    with pytest.raises(InputError, match="epochs must be a positive"):
        train_sae(ActivationStore({"p": torch.zeros(10, 4)}), "p", epochs=0)


def _low_rank(n: int, seed: int = 0) -> torch.Tensor:
    """Rows that are sparse combinations of 12 directions in 16 dimensions (what an SAE should find)."""
    dirs = torch.randn(12, 16, generator=torch.Generator().manual_seed(99))  # the same directions for every seed
    g = torch.Generator().manual_seed(seed)
    codes = torch.rand(n, 12, generator=g) * (torch.rand(n, 12, generator=g) < 0.2)
    return codes @ dirs + 0.01 * torch.randn(n, 16, generator=g)


@pytest.mark.parametrize("arch", ["topk", "standard"])
def test_training_finds_the_structure_deterministically_from_disk_shards(tmp_path, one_thread, arch):
    x = _low_rank(3000)
    store = ActivationStore({"lm.0.resid": x}).save(tmp_path / "store", shard_size=500)  # 6 shards on disk
    kw = dict(architecture=arch, d_sae=48, k=4, l1=0.3, epochs=8, batch_size=128, seed=3)
    a, b = train_sae(store, "lm.0.resid", **kw), train_sae(store, "lm.0.resid", **kw)
    assert all(torch.equal(p, q) for p, q in zip(a.tensors().values(), b.tensors().values()))
    c = train_sae(store, "lm.0.resid", **{**kw, "seed": 4})
    assert not torch.equal(a.W_dec, c.W_dec)
    held = ActivationStore({"lm.0.resid": _low_rank(1000, seed=1)})
    st = sae_stats(a, held)
    assert st["n"] == 1000 and st["fvu"] < (0.1 if arch == "topk" else 0.2)
    assert st["l0"] <= 4.0 + 1e-9 if arch == "topk" else st["l0"] < 24
    assert a.meta["train"]["rows"] == 3000 and a.meta["train"]["steps"] == 8 * 24
    assert (a.point, a.position) == ("lm.0.resid", None)


def test_training_reads_one_shard_at_a_time(tmp_path, monkeypatch, one_thread):
    """Memory flat in n: the store is never read whole, only shard by shard."""
    import probekit.hooks.store_index as idx

    store = ActivationStore({"lm.0.resid": _low_rank(2000)}).save(tmp_path / "s", shard_size=250)
    seen = []
    real = idx.read_shard

    def spy(directory, index, shard, points, check=True):
        seen.append(shard["stop"] - shard["start"])
        return real(directory, index, shard, points, check)

    monkeypatch.setattr(idx, "read_shard", spy)
    monkeypatch.setattr("probekit.hooks.store.read_shard", spy)
    monkeypatch.setattr(ActivationStore, "__getitem__", lambda *a: pytest.fail("the whole point was read"))
    train_sae(store, "lm.0.resid", d_sae=32, k=4, epochs=2, batch_size=100)
    assert max(seen) == 250 and len(seen) == 3 * 8  # moments pass + 2 epochs, 8 shards each


def test_stats_of_a_known_sae():
    # an SAE that copies its 4 inputs exactly through 8 latents (+x and -x halves): FVU 0
    eye = torch.eye(4)
    sae = SAE(torch.cat([eye, -eye], 1), torch.zeros(8), torch.cat([eye, -eye], 0), torch.zeros(4),
              architecture="standard", point="lm.0.resid")
    x = torch.randn(200, 4)
    st = sae_stats(sae, ActivationStore({"lm.0.resid": x}))
    assert st["fvu"] < 1e-12 and abs(st["cosine"] - 1) < 1e-6 and st["dead"] == 0
    assert st["l0"] == pytest.approx(float((x != 0).sum(-1).float().mean()))
    st = sae_stats(sae, ActivationStore({"lm.0.resid": x.abs()}))  # the -x latents never fire
    assert st["dead"] == 4 and st["dead_fraction"] == 0.5


def test_select_latents():
    z = torch.zeros(40, 6)
    z[:20, 4] = 2.0 + torch.arange(20) / 20
    z[20:, 1] = 1.0
    z[::2, 0] = 0.5  # fires on both classes alike
    s = select_latents(z, ["a"] * 20 + ["b"] * 20, m=2, method="anova")
    assert set(s.latents) == {1, 4} and s.scores[0] > 100
    s = select_latents(z, ["a"] * 20 + ["b"] * 20, m=1, method="diff", positive="a")
    assert s.latents == [4] and s.alpha == [pytest.approx(2.475)]


def test_a_directory_written_by_eai_sparsify_loads_as_the_same_topk_sae(tmp_path):
    """tests/data/sparsify/layers.1 was written by eai-sparsify 1.3.3's SparseCoder.save_to_disk."""
    d = FIXTURES.parent / "sparsify" / "layers.1"
    assert (d.parent / "VERSION").read_text().startswith("eai-sparsify 1.3.3")
    sae = load_sae(d)
    expected = load_file(str(d / "expected.safetensors"))
    assert (sae.architecture, sae.k, sae.d_sae, sae.point) == ("topk", 3, 16, "lm.1.resid")
    z = sae.encode(expected["x"])
    assert torch.equal(z, expected["z"])
    assert torch.allclose(sae.decode(z), expected["x_hat"], atol=1e-5)  # sparsify sums with embedding_bag
    back = load_sae(save_sae(sae, tmp_path / "as-sae-lens"))  # and on in sae-lens's format
    assert torch.equal(back.encode(expected["x"]), z)
    bad = tmp_path / "layers.2"
    shutil.copytree(d, bad)
    cfg = json.loads((bad / "cfg.json").read_text())
    (bad / "cfg.json").write_text(json.dumps({**cfg, "skip_connection": True}))
    with pytest.raises(StoreError, match="'skip_connection' is True"):
        load_sae(bad)
