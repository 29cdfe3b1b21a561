"""Mistral 3 (Pixtral vision tower): every image's patches run as one sequence ``[1, N, d]``."""

from __future__ import annotations

from typing import Any

from .llava import Llava

__all__ = ["Mistral3"]


class Mistral3(Llava):
    """Mistral 3 (Pixtral vision tower): every image's patches run as one sequence [1, N, d]."""

    name = "mistral3"
    model_types = ("mistral3",)
    vision_layers = ("model.vision_tower.transformer.layers",)
    placeholder = "[IMG]{prompt}"

    def vision_counts(self, model: Any, inputs: Any, point: str, first_dim: int) -> list[int] | None:
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return None
        patch = int(model.hf.config.vision_config.patch_size)
        per_image = [(int(h) // patch) * (int(w) // patch) for h, w in sizes.tolist()]
        if sum(per_image) != first_dim:  # the projector's output: spatial_merge_size^2 patches merged per token
            merge = int(getattr(model.hf.config, "spatial_merge_size", 1)) ** 2
            per_image = [c // merge for c in per_image]
        return per_image if sum(per_image) == first_dim else None
