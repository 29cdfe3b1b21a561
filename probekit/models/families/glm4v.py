"""GLM-4V: Qwen2-VL's layout (flattened patches, a merger) with its own image marks."""

from __future__ import annotations

from .qwen2_vl import Qwen2VL

__all__ = ["Glm4V"]


class Glm4V(Qwen2VL):
    """GLM-4V: Qwen2-VL's layout (flattened patches, a merger) with its own image marks."""

    name = "glm4v"
    model_types = ("glm4v", "glm4v_moe", "glm46v")
    placeholder = "<|begin_of_image|>{image}<|end_of_image|>{prompt}"
