"""The mid-size LLaVA-shaped model of issue 28, built from configs (no hub): ~189M parameters.

CLIP-like vision tower hidden 512 x 6 layers (patch 14, 224 px: 256 image tokens), Llama text model
hidden 1024 x 8 layers, MLP 2816, vocabulary 32,000 (the tiny tokenizer's, with the embedding and
unembedding resized to 32,000 rows as ``tests/test_real_size.py`` does). Big enough that the forward,
not Python, dominates a scan. ``image_size=`` makes a cheaper variant (fewer image tokens).
"""

from __future__ import annotations

import warnings
from pathlib import Path

MIDSIZE = {
    "hidden_size": 1024, "num_layers": 8, "intermediate_size": 2816, "num_heads": 16,
    "image_size": 224, "patch_size": 14,
    "vision_hidden_size": 512, "vision_layers": 6, "vision_intermediate_size": 2048, "vision_heads": 8,
}
VOCAB = 32000


def build_midsize(path: str | Path, seed: int = 0, vocab: int = VOCAB, **sizes: int) -> Path:
    """Write the mid-size checkpoint to ``path`` (reused when it is already there) and return it."""
    import torch
    import transformers

    from probekit import tiny

    path = Path(path)
    if (path / "config.json").exists():
        return path
    tiny.build("llava", path, seed=seed, **{**MIDSIZE, **sizes})
    hf = transformers.LlavaForConditionalGeneration.from_pretrained(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf.resize_token_embeddings(vocab, mean_resizing=False)
    with torch.no_grad():  # rows past the tokenizer's vocabulary get values (resize leaves them at init)
        gen = torch.Generator().manual_seed(seed)
        for w in (hf.get_input_embeddings().weight, hf.get_output_embeddings().weight):
            extra = w.shape[0] - 2048
            if extra > 0:
                w[-extra:] = torch.randn(extra, w.shape[1], generator=gen) * 0.02
    hf.save_pretrained(path)
    return path


def n_params(model) -> int:
    return sum(p.numel() for p in model.hf.parameters())
