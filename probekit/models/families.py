"""Per-family knowledge: where the layers are and how a prompt with an image is written.

Each family is a small object with ``layout(hf, processor) -> Layout`` and
``build_inputs(model, images, prompts, chat)``. Module paths are given as candidate lists so
that checkpoints saved by older and newer transformers versions (``language_model.model.layers``
vs ``model.language_model.layers``) both resolve.
"""

from __future__ import annotations

import warnings
from typing import Any, Sequence

from torch import nn

from ..errors import InputError, UnsupportedModelError
from .adapter import Layout, find_first, get_module, require

__all__ = ["FAMILIES", "family_for", "GenericFamily"]


def _config_image_token_id(hf: nn.Module) -> int | None:
    cfg = hf.config
    for attr in ("image_token_id", "image_token_index"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    return None


def _is_module(root: nn.Module, path: str | None) -> str | None:
    if path is None:
        return None
    return path if isinstance(get_module(root, path), nn.Module) else None


class Family:
    """Defaults shared by the families; subclasses fill the candidate paths."""

    name = "generic"
    model_types: tuple[str, ...] = ()
    vision_layers: Sequence[str] = ()
    projector: Sequence[str] = ()
    lm_layers: Sequence[str] = ()
    final_norm: Sequence[str] = ()
    unembed: Sequence[str] = ("lm_head", "language_model.lm_head")
    attn_attr: str | None = "self_attn"
    mlp_attr: str | None = "mlp"
    nested_images = False  # processor wants [[img], [img], ...]
    placeholder = "<image>\n{prompt}"  # used when there is no chat template

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = Layout(
            family=self.name,
            lm_layers=require(hf, self.name, "language-model layers", self.lm_layers),
            unembed=require(hf, self.name, "unembedding (lm_head)", self.unembed),
            vision_layers=find_first(hf, self.vision_layers),
            projector=find_first(hf, self.projector),
            final_norm=_is_module(hf, find_first(hf, self.final_norm)),
            attn_attr=self.attn_attr,
            mlp_attr=self.mlp_attr,
            image_token_id=_config_image_token_id(hf),
        )
        self.extra(hf, lay)
        return lay

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        """Family-specific additions (cross-attention modules)."""

    # -------------------------------------------------------------- inputs
    def format_prompt(self, processor: Any, prompt: str, chat: bool | None) -> str:
        template = getattr(processor, "chat_template", None)
        if template and chat is not False:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
            return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        if chat:
            raise InputError(
                "chat=True but the processor has no chat template",
                fix="pass chat=None (use the template when there is one) or chat=False",
            )
        return self.placeholder.format(prompt=prompt, image=getattr(processor, "image_token", "<image>"))

    def build_inputs(self, model: Any, images: list, prompts: list[str], chat: bool | None) -> dict:
        texts = [self.format_prompt(model.processor, p, chat) for p in prompts]
        imgs = [[im] for im in images] if self.nested_images else images
        return dict(model.processor(images=imgs, text=texts, return_tensors="pt", padding=True))


class Llava(Family):
    name = "llava"
    model_types = ("llava", "llava_next", "llava_onevision", "llava_next_video", "vipllava")  # NeXT/OneVision: the same module tree, image tiles
    vision_layers = (
        "model.vision_tower.encoder.layers",
        "model.vision_tower.vision_model.encoder.layers",
        "vision_tower.vision_model.encoder.layers",
    )
    projector = ("model.multi_modal_projector", "multi_modal_projector")
    lm_layers = ("model.language_model.layers", "language_model.model.layers")
    final_norm = ("model.language_model.norm", "language_model.model.norm")


class PaliGemma(Llava):
    name = "paligemma"
    model_types = ("paligemma",)
    # The processor expands the image token and inserts BOS after it.
    placeholder = "{image}{prompt}"


class Qwen2VL(Family):
    name = "qwen2_vl"
    model_types = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_vl_moe")
    vision_layers = ("model.visual.blocks", "visual.blocks")
    projector = ("model.visual.merger", "visual.merger")
    lm_layers = ("model.language_model.layers", "model.layers")
    final_norm = ("model.language_model.norm", "model.norm")
    placeholder = "<|vision_start|><|image_pad|><|vision_end|>{prompt}"

    def vision_counts(self, model: Any, inputs: dict, point: str, first_dim: int) -> list[int] | None:
        # The vision tower runs on all patches of the batch flattened into one sequence.
        thw = inputs.get("image_grid_thw")
        if thw is None:
            return None
        per_image = [int(t * h * w) for t, h, w in thw.tolist()]
        if sum(per_image) != first_dim:
            merge = int(getattr(model.hf.config.vision_config, "spatial_merge_size", 2)) ** 2
            per_image = [c // merge for c in per_image]
        return per_image if sum(per_image) == first_dim else None


class Glm4V(Qwen2VL):
    """GLM-4V: Qwen2-VL's layout (flattened patches, a merger) with its own image marks."""

    name = "glm4v"
    model_types = ("glm4v", "glm4v_moe", "glm46v")
    placeholder = "<|begin_of_image|>{image}<|end_of_image|>{prompt}"


class Gemma3(Llava):
    name = "gemma3"
    model_types = ("gemma3",)
    nested_images = True  # Gemma3Processor counts images per sample: [[img], [img]] for a batch of two
    placeholder = "{image}{prompt}"  # the processor's image_token is <start_of_image>; it adds the soft tokens


class Mistral3(Llava):
    """Mistral 3 (Pixtral vision tower): every image's patches run as one sequence [1, N, d]."""

    name = "mistral3"
    model_types = ("mistral3",)
    vision_layers = ("model.vision_tower.transformer.layers",)
    placeholder = "[IMG]{prompt}"

    def vision_counts(self, model: Any, inputs: dict, point: str, first_dim: int) -> list[int] | None:
        sizes = inputs.get("image_sizes")
        if sizes is None:
            return None
        patch = int(model.hf.config.vision_config.patch_size)
        per_image = [(int(h) // patch) * (int(w) // patch) for h, w in sizes.tolist()]
        if sum(per_image) != first_dim:  # the projector's output: spatial_merge_size^2 patches merged per token
            merge = int(getattr(model.hf.config, "spatial_merge_size", 1)) ** 2
            per_image = [c // merge for c in per_image]
        return per_image if sum(per_image) == first_dim else None


class LightOnOcr(Mistral3):
    """LightOnOCR: a Pixtral tower and patch merger in front of a Qwen3 language model."""

    name = "lighton_ocr"
    model_types = ("lighton_ocr",)
    vision_layers = ("model.vision_encoder.transformer.layers",)
    projector = ("model.vision_projection",)


class Llama4(Family):
    name = "llama4"
    model_types = ("llama4",)
    vision_layers = ("vision_model.model.layers", "model.vision_model.model.layers")
    projector = ("multi_modal_projector", "model.multi_modal_projector")
    lm_layers = ("language_model.model.layers", "model.language_model.layers")
    final_norm = ("language_model.model.norm", "model.language_model.norm")
    unembed = ("language_model.lm_head", "lm_head")
    mlp_attr = "feed_forward"
    placeholder = "<|image|>{prompt}"

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        # transformers 5.24: Llama4ForConditionalGeneration.forward reads `image_outputs` off the
        # output of its Llama4ForCausalLM, a MoeCausalLMOutputWithPast that has no such field, so
        # every forward with return_dict fails after the language model ran. The hook adds the
        # missing (empty) field; it changes no number, and a fixed transformers never sees it used.
        lm = get_module(hf, "language_model") if hasattr(hf, "language_model") else None
        if lm is not None and not getattr(lm, "_probekit_image_outputs_fix", False):
            lm.register_forward_hook(_add_image_outputs)
            lm._probekit_image_outputs_fix = True


def _add_image_outputs(module: nn.Module, args: Any, output: Any) -> Any:
    if hasattr(output, "logits") and not hasattr(output, "image_outputs"):
        object.__setattr__(output, "image_outputs", None)
    return output


class Idefics3(Family):
    name = "idefics3"
    model_types = ("idefics3", "smolvlm")
    vision_layers = ("model.vision_model.encoder.layers",)
    projector = ("model.connector",)
    lm_layers = ("model.text_model.layers",)
    final_norm = ("model.text_model.norm",)
    nested_images = True
    placeholder = "<image>{prompt}"


class Mllama(Family):
    name = "mllama"
    model_types = ("mllama",)
    vision_layers = ("model.vision_model.transformer.layers", "vision_model.transformer.layers")
    projector = ("model.multi_modal_projector", "multi_modal_projector")
    lm_layers = ("model.language_model.layers", "language_model.model.layers")
    final_norm = ("model.language_model.norm", "language_model.model.norm")
    nested_images = True
    placeholder = "<|image|>{prompt}"

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = super().layout(hf, processor)
        glob = find_first(hf, ("model.vision_model.global_transformer.layers", "vision_model.global_transformer.layers"))
        if lay.vision_layers and glob:
            lay.vision_layers = [lay.vision_layers, glob]
        return lay

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        layers = get_module(hf, lay.lm_layers)
        for i, block in enumerate(layers):
            if hasattr(block, "cross_attn"):
                lay.xattn[i] = f"{lay.lm_layers}.{i}.cross_attn"


class Blip2(Family):
    name = "blip2"
    model_types = ("blip-2", "blip_2")
    vision_layers = ("vision_model.encoder.layers",)
    projector = ("language_projection",)
    lm_layers = ("language_model.model.decoder.layers", "language_model.model.layers")
    final_norm = ("language_model.model.decoder.final_layer_norm", "language_model.model.norm")
    unembed = ("language_model.lm_head", "lm_head")
    placeholder = "{prompt}"  # the processor inserts the query-token placeholders

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = super().layout(hf, processor)
        block = get_module(hf, lay.lm_layers)[0]
        if not hasattr(block, "mlp") and hasattr(block, "fc2"):
            lay.mlp_attr = "fc2"  # OPT has no mlp module; fc2 writes the MLP output
        return lay

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        # The Q-Former's cross-attention reads the vision tower; it is not on the LM sequence.
        lay.xattn_prefix, lay.xattn_side = "qformer", "vision"
        path = find_first(hf, ("qformer.encoder.layer",))
        if path:
            for i, layer in enumerate(get_module(hf, path)):
                if getattr(layer, "has_cross_attention", False) or hasattr(layer, "crossattention"):
                    lay.xattn[i] = f"{path}.{i}.crossattention"


class InstructBlip(Blip2):
    """InstructBLIP: BLIP-2's layout; the Q-Former also reads the instruction (its own tokenizer)."""

    name = "instructblip"
    model_types = ("instructblip",)


class GenericFamily(Family):
    """Fallback for architectures probekit has no module for: finds the layer lists by shape."""

    name = "generic"
    placeholder = "{image}\n{prompt}"

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
            final_norm=_is_module(hf, norm),
            attn_attr=next((a for a in ("self_attn", "attn", "attention", "self_attention") if hasattr(block, a)), None),
            mlp_attr=next((a for a in ("mlp", "feed_forward", "ffn") if hasattr(block, a)), None),
            image_token_id=_config_image_token_id(hf),
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


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Llava(), PaliGemma(), Gemma3(), Qwen2VL(), Glm4V(), Idefics3(), Mllama(), Blip2(), InstructBlip(), Mistral3(), LightOnOcr(), Llama4(),
    GenericFamily())}


def family_for(hf: nn.Module, family: str | None = None) -> Family:
    """The family object for a model: by name if given, else by ``config.model_type``."""
    if family is not None:
        if family not in FAMILIES:
            raise InputError(f"unknown family {family!r}", fix=f"use one of {sorted(FAMILIES)} or None to detect it")
        return FAMILIES[family]
    model_type = str(getattr(getattr(hf, "config", None), "model_type", ""))
    for fam in FAMILIES.values():
        if model_type in fam.model_types:
            return fam
    return FAMILIES["generic"]

