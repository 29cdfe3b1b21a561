"""Tests for probekit.tiny: offline tiny VLM checkpoints that load the hub way."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from probekit import tiny  # noqa: E402
from probekit.errors import InputError  # noqa: E402

FAMILIES = tiny.FAMILIES
CHAT_FAMILIES = ("llava", "qwen2_vl", "idefics3", "mllama")
EXPECTED_CLASSES = {
    "llava": ("LlavaForConditionalGeneration", "LlavaProcessor"),
    "qwen2_vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLProcessor"),
    "idefics3": ("Idefics3ForConditionalGeneration", "Idefics3Processor"),
    "mllama": ("MllamaForConditionalGeneration", "MllamaProcessor"),
    "blip2": ("Blip2ForConditionalGeneration", "Blip2Processor"),
    "paligemma": ("PaliGemmaForConditionalGeneration", "PaliGemmaProcessor"),
}


def _torchvision() -> bool:
    from transformers.utils import is_torchvision_available

    return bool(is_torchvision_available())


def _batch(family, processor, questions=("What?", "What colour is the big red square on the left?"), size=32):
    images = tiny.fixture_images(len(questions), size)
    if family == "mllama":
        # MllamaProcessor reads a flat image list as one sample with several images.
        images = [[im] for im in images]
    texts = [tiny.prompt(family, q) for q in questions]
    return processor(images=images, text=texts, return_tensors="pt", padding=True)


def _image_token_id(config) -> int:
    return config.image_token_id if hasattr(config, "image_token_id") else config.image_token_index


def _expected_image_tokens(family, model, processor, inputs) -> list[int]:
    """Image tokens per sample implied by the config (one image per sample)."""
    cfg = model.config
    if family == "llava":
        per = (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2
    elif family == "blip2":
        per = cfg.num_query_tokens
    elif family == "paligemma":
        per = cfg.text_config.num_image_tokens
    elif family == "qwen2_vl":
        merge = cfg.vision_config.spatial_merge_size
        return [int(thw.prod()) // merge**2 for thw in inputs["image_grid_thw"]]
    elif family == "idefics3":
        grid = cfg.vision_config.image_size // cfg.vision_config.patch_size
        per = grid * grid // cfg.scale_factor**2
        assert per == processor.image_seq_len
    elif family == "mllama":
        per = 1
    return [per] * inputs["input_ids"].shape[0]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {family: tiny.build(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="module")
def loaded(checkpoints):
    return {family: tiny.load(path) for family, path in checkpoints.items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_checkpoint_files(family, checkpoints):
    path = checkpoints[family]
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "processor_config.json"} <= names
    assert ("chat_template.jinja" in names) == (family in CHAT_FAMILIES)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [EXPECTED_CLASSES[family][0]]
    # Same processor class name as a real checkpoint, whatever class wrote it.
    processor_config = json.loads((path / "processor_config.json").read_text())
    assert processor_config["processor_class"] == EXPECTED_CLASSES[family][1]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary directory left behind"


@pytest.mark.parametrize("family", FAMILIES)
def test_loads_with_auto_classes(family, checkpoints):
    path = checkpoints[family]
    model = transformers.AutoModelForImageTextToText.from_pretrained(path)
    assert type(model).__name__ == EXPECTED_CLASSES[family][0]
    if family == "qwen2_vl" and not _torchvision():
        # transformers 5.23: Qwen2VLProcessor's video processor needs torchvision, so
        # AutoProcessor fails for every Qwen2-VL checkpoint; load_processor falls back.
        with pytest.raises(ImportError):
            transformers.AutoProcessor.from_pretrained(path)
        processor = tiny.load_processor(path)
        assert isinstance(processor, transformers.Qwen2VLProcessor)
    else:
        processor = transformers.AutoProcessor.from_pretrained(path)
        assert type(processor).__name__ == EXPECTED_CLASSES[family][1]


@pytest.mark.parametrize("family", FAMILIES)
def test_build_and_load_time(family, tmp_path):
    tiny.build(family, tmp_path / "warm")  # first use imports the family's transformers modules
    start = time.perf_counter()
    path = tiny.build(family, tmp_path / "timed")
    tiny.load(path)
    assert time.perf_counter() - start < 5.0


@pytest.mark.parametrize("family", FAMILIES)
def test_vocab_and_image_token_consistent(family, loaded):
    model, processor = loaded[family]
    tok = processor.tokenizer
    assert model.config.text_config.vocab_size == len(tok)
    image_token = {"qwen2_vl": "<|image_pad|>", "mllama": "<|image|>"}.get(family, "<image>")
    assert _image_token_id(model.config) == tok.convert_tokens_to_ids(image_token)
    # Byte-level BPE: any string round-trips, nothing maps to unk.
    text = "Ünïcode ✓ 123 username=bob_42!"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_padded_batch(family, loaded):
    model, processor = loaded[family]
    inputs = _batch(family, processor)
    mask = inputs["attention_mask"]
    assert mask.shape[0] == 2 and not bool(mask.all()), "prompts of different lengths must be padded"
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
    vocab = model.config.text_config.vocab_size
    assert out.logits.shape == (2, inputs["input_ids"].shape[1], vocab)
    assert torch.isfinite(out.logits).all()
    hidden = out.language_model_outputs.hidden_states if family == "blip2" else out.hidden_states
    assert len(hidden) == model.config.text_config.num_hidden_layers + 1

    counts = (inputs["input_ids"] == _image_token_id(model.config)).sum(dim=1).tolist()
    assert counts == _expected_image_tokens(family, model, processor, inputs)


def test_image_token_counts_match_defaults(loaded):
    """Per-image token counts of the default sizes (documents what the configs imply)."""
    expected = {"llava": 16, "qwen2_vl": 4, "idefics3": 4, "mllama": 1, "blip2": 4, "paligemma": 16}
    for family, n in expected.items():
        model, processor = loaded[family]
        inputs = _batch(family, processor)
        counts = (inputs["input_ids"] == _image_token_id(model.config)).sum(dim=1).tolist()
        assert counts == [n, n], family


@pytest.mark.parametrize("family", FAMILIES)
def test_image_changes_output(family, loaded):
    # Guards against zero-initialised gates (Mllama) silently disconnecting the image.
    model, processor = loaded[family]
    text = [tiny.prompt(family, "What is it?")]
    a, b = tiny.fixture_images(1, 32, seed=1), tiny.fixture_images(1, 32, seed=2)
    if family == "mllama":
        a, b = [a], [b]
    with torch.no_grad():
        la = model(**processor(images=a, text=text, return_tensors="pt")).logits[:, -1]
        lb = model(**processor(images=b, text=text, return_tensors="pt")).logits[:, -1]
    assert not torch.allclose(la, lb)


@pytest.mark.parametrize("family", CHAT_FAMILIES)
def test_chat_template(family, loaded):
    model, processor = loaded[family]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour is it?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert "What colour is it?" in text
    images = tiny.fixture_images(1, 32)
    inputs = processor(images=[images] if family == "mllama" else images, text=[text], return_tensors="pt")
    with torch.no_grad():
        out = model(**inputs)
    assert out.logits.shape[:2] == inputs["input_ids"].shape
    bos = processor.tokenizer.bos_token_id
    if bos is not None:  # the template and the tokenizer must not both add a BOS
        assert int((inputs["input_ids"] == bos).sum()) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_left_padding(family, tmp_path):
    model, processor = tiny.load(tiny.build(family, tmp_path / family, padding_side="left"))
    assert processor.tokenizer.padding_side == "left"
    inputs = _batch(family, processor)
    mask = inputs["attention_mask"]
    # Blip2Processor pads the text, then prepends the query-token placeholders: [img..., pad..., text].
    first = model.config.num_query_tokens if family == "blip2" else 0
    assert bool(mask[:, -1].all()) and not bool(mask[:, first].all())
    with torch.no_grad():
        assert torch.isfinite(model(**inputs).logits).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_deterministic_weights(family, tmp_path):
    a = tiny.build(family, tmp_path / "a", seed=7)
    b = tiny.build(family, tmp_path / "b", seed=7)
    c = tiny.build(family, tmp_path / "c", seed=8)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    wa, wc = load_file(a / "model.safetensors"), load_file(c / "model.safetensors")
    assert wa.keys() == wc.keys()
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)
    assert (a / "tokenizer.json").read_bytes() == (c / "tokenizer.json").read_bytes()


def test_build_leaves_global_rng_alone(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    tiny.build("llava", tmp_path / "x", seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_sizes_override(tmp_path):
    path = tiny.build(
        "llava", tmp_path / "m", hidden_size=32, num_layers=3, num_heads=2, vision_layers=1, image_size=48, patch_size=12
    )
    model, processor = tiny.load(path)
    assert model.config.text_config.hidden_size == 32
    assert len(model.model.language_model.layers) == 3
    assert len(model.model.vision_tower.encoder.layers) == 1
    inputs = _batch("llava", processor, size=48)
    assert (inputs["input_ids"] == model.config.image_token_index).sum(dim=1).tolist() == [16, 16]
    sizes = json.loads((path / "probekit_tiny.json").read_text())["sizes"]
    assert sizes["num_layers"] == 3 and sizes["intermediate_size"] == 64  # derived: 2 * hidden


def test_family_specific_sizes(tmp_path):
    model, processor = tiny.load(tiny.build("blip2", tmp_path / "b", num_query_tokens=6, qformer_layers=1))
    assert model.config.num_query_tokens == 6 and len(model.qformer.encoder.layer) == 1
    inputs = _batch("blip2", processor)
    assert (inputs["input_ids"] == model.config.image_token_index).sum(dim=1).tolist() == [6, 6]

    model, _ = tiny.load(tiny.build("mllama", tmp_path / "m", num_layers=8))
    kinds = [type(layer).__name__ for layer in model.model.language_model.layers]
    assert kinds.count("MllamaCrossAttentionDecoderLayer") == 2
    assert model.config.text_config.cross_attention_layers == [1, 5]


def test_llava_benchmark_size(tmp_path):
    model, processor = tiny.load(tiny.build("llava", tmp_path / "l22", **tiny.LLAVA_22M))
    n_params = sum(p.numel() for p in model.parameters())
    assert 20e6 < n_params < 24e6
    assert model.config.text_config.hidden_size == 256 and model.config.text_config.num_hidden_layers == 4
    inputs = _batch("llava", processor, size=64)
    assert (inputs["input_ids"] == model.config.image_token_index).sum(dim=1).tolist() == [64, 64]
    with torch.no_grad():
        assert model(**inputs).logits.shape[-1] == len(processor.tokenizer)


def test_unknown_family(tmp_path):
    with pytest.raises(InputError) as err:
        tiny.build("gpt2", tmp_path / "x")
    assert err.value.fix and "llava" in err.value.fix
    assert not (tmp_path / "x").exists()


def test_unknown_size_key(tmp_path):
    with pytest.raises(InputError, match="hidden_dim") as err:
        tiny.build("llava", tmp_path / "x", hidden_dim=8)
    assert "hidden_size" in err.value.fix
    with pytest.raises(InputError, match="blip2"):
        tiny.build("llava", tmp_path / "x", num_query_tokens=8)
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "sizes",
    [
        {"image_size": 30},  # not a multiple of patch_size
        {"hidden_size": 0},
        {"num_layers": 2.5},
        {"hidden_size": 60, "num_heads": 8},
        {"vision_heads": 5},
        {"num_kv_heads": 3},
    ],
)
def test_invalid_sizes(sizes, tmp_path):
    with pytest.raises(InputError):
        tiny.build("llava", tmp_path / "x", **sizes)
    assert list(tmp_path.iterdir()) == []


def test_invalid_family_specific_sizes(tmp_path):
    with pytest.raises(InputError, match="even"):
        tiny.build("qwen2_vl", tmp_path / "q", image_size=24)  # 3x3 patches cannot be 2x2-merged
    with pytest.raises(InputError):
        tiny.build("mllama", tmp_path / "m", num_layers=1)


def test_existing_directory(tmp_path):
    path = tiny.build("llava", tmp_path / "m")
    with pytest.raises(InputError, match="not empty"):
        tiny.build("llava", path)
    before = (path / "model.safetensors").read_bytes()
    tiny.build("llava", path, seed=1, overwrite=True)
    assert (path / "model.safetensors").read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert tiny.build("blip2", empty) == empty  # an empty directory is fine without overwrite


def test_failure_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(sizes, padding_side):
        raise RuntimeError("boom")

    monkeypatch.setitem(tiny._FAMILIES, "llava", dataclasses.replace(tiny._FAMILIES["llava"], build=broken))
    with pytest.raises(RuntimeError, match="boom"):
        tiny.build("llava", tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_one_registry_of_families():
    """FAMILIES, the prompts, the size defaults and the zoo's family entries all come from builders._FAMILIES."""
    from probekit.tiny import builders, zoo

    assert tiny.FAMILIES == tuple(builders._FAMILIES)
    for name, family in builders._FAMILIES.items():
        assert family.model_type in zoo.ARCHITECTURES, name
        assert "What?" in tiny.prompt(name, "What?")
        assert family.sizes.items() <= tiny.default_sizes(name).items()
    assert not set(tiny.FAMILIES) - {"blip2"} - set(zoo.ARCHITECTURES)  # BLIP-2's model type is "blip-2"


def test_returns_path(tmp_path):
    path = tiny.build("paligemma", str(tmp_path / "p"))
    assert isinstance(path, pathlib.Path) and path == tmp_path / "p"


def test_default_sizes():
    for family in FAMILIES:
        sizes = tiny.default_sizes(family)
        assert tiny.SIZE_KEYS <= set(sizes)
        assert all(isinstance(v, int) for v in sizes.values())
    assert tiny.default_sizes("mllama")["num_layers"] == 4
    with pytest.raises(InputError):
        tiny.default_sizes("nope")


def test_fixture_images():
    a, b = tiny.fixture_images(2, 16, seed=3)
    assert a.mode == "RGB" and a.size == (16, 16)
    assert list(a.getdata()) != list(b.getdata())
    again = tiny.fixture_images(2, 16, seed=3)
    assert [list(im.getdata()) for im in again] == [list(a.getdata()), list(b.getdata())]
    assert tiny.fixture_images(1, (20, 10))[0].size == (20, 10)
    assert list(tiny.fixture_images(1, 16, seed=4)[0].getdata()) != list(a.getdata())
    with pytest.raises(InputError):
        tiny.fixture_images(-1, 16)
