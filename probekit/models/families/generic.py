"""The fallback for architectures probekit has no family module for: layer lists found by shape."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from ...errors import UnsupportedModelError
from ..layout import Layout, find_first, get_module
from .base import Family, config_image_token_id, grid_counts, module_or_none

__all__ = ["GenericFamily"]


class GenericFamily(Family):
    """Fallback for architectures probekit has no module for: finds the layer lists by shape."""

    name = "generic"
    placeholder = "{image}\n{prompt}"
    # found by shape, claimed by no family: the model types the coverage matrix checks through this fallback
    checked_model_types: tuple[str, ...] = ("idefics2", "internvl", "aya_vision", "video_llava", "ovis2_5")

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lists = [(n, m) for n, m in hf.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
        lists = [(n, m) for n, m in lists if len({type(c) for c in m}) == 1]
        vision = [(n, m) for n, m in lists if any(k in n for k in ("vision", "visual", "image"))]
        text = [(n, m) for n, m in lists if (n, m) not in vision and not any(k in n for k in ("qformer",))]
        if not text:
            raise UnsupportedModelError(
                f"{type(hf).__name__}: found no list of language-model blocks (an nn.ModuleList of identical layers)",
                fix="this model may not be a decoder VLM; wrap its language model or open an issue with print(model)",
            )
        lm_path = max(text, key=lambda nm: len(nm[1]))[0]
        out_emb = hf.get_output_embeddings() if hasattr(hf, "get_output_embeddings") else None
        unembed = next((n for n, m in hf.named_modules() if out_emb is not None and m is out_emb), None)
        if unembed is None:
            raise UnsupportedModelError(
                f"{type(hf).__name__}: found no output embedding (lm_head)",
                fix="probekit needs a model that produces logits (…ForConditionalGeneration / …ForCausalLM)",
            )
        parent = lm_path.rsplit(".", 1)[0] if "." in lm_path else ""
        norm = find_first(hf, [f"{parent}.{a}" if parent else a for a in ("norm", "final_layer_norm", "ln_f", "final_layernorm")])
        proj = next(
            (n for n, _ in hf.named_modules() if n.split(".")[-1] in ("multi_modal_projector", "connector", "merger", "language_projection", "mm_projector")),
            None,
        )
        block = get_module(hf, lm_path)[0]
        lay = Layout(
            family=self.name,
            lm_layers=lm_path,
            unembed=unembed,
            vision_layers=max(vision, key=lambda nm: len(nm[1]))[0] if vision else None,
            projector=proj,
            final_norm=module_or_none(hf, norm),
            attn_attr=next((a for a in ("self_attn", "attn", "attention", "self_attention") if hasattr(block, a)), None),
            mlp_attr=next((a for a in ("mlp", "feed_forward", "ffn") if hasattr(block, a)), None),
            image_token_id=config_image_token_id(hf),
        )
        for role, val in (("vision layers", lay.vision_layers), ("projector", lay.projector), ("final norm", lay.final_norm),
                          ("attention module", lay.attn_attr), ("mlp module", lay.mlp_attr), ("image token id", lay.image_token_id)):
            if val is None:
                lay.missing.append(role)
        if lay.missing:
            warnings.warn(
                f"probekit generic adapter for {type(hf).__name__}: language-model blocks at {lm_path!r}; "
                f"could not find: {', '.join(lay.missing)} (their points are absent)",
                stacklevel=3,
            )
        return lay

    def vision_counts(self, model: Any, inputs: Any, point: str, first_dim: int) -> list[int] | None:
        # a tower on the batch's patches flattened into one sequence (Ovis2.5): split by the processor's patch grid
        return grid_counts(model, inputs, first_dim)
