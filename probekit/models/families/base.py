"""`Family`: every fact about one VLM family that the rest of probekit may need.

A family answers, for its models: where each hook point lives (:meth:`Family.layout`,
:meth:`Family.hook_targets`), how wide each point is, which token positions hold the image
(:meth:`Family.image_mask`) on which token sequence (:meth:`Family.sequences`: one for a
decoder-only model, the encoder's and the decoder's for an encoder-decoder), how a raw
activation is brought to the shapes the position selectors and interventions expect
(:meth:`Family.lm_activation`, :meth:`Family.vision_activation`), which modules write into
the residual stream (:meth:`Family.residual_writers`) and how a prompt with an image is
written (:meth:`Family.build_inputs`). Module paths are candidate lists so that checkpoints
saved by older and newer transformers versions (``language_model.model.layers`` vs
``model.language_model.layers``) both resolve. A subclass overrides only what differs.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ...errors import InputError
from ..layout import HookTarget, Layout, find_first, get_module, require
from ..logit_output import LogitOutput, logit_output
from ..writers import ATTN_OUT, MLP_OUT, PROJECTOR_OUT, residual_writers

__all__ = ["Family", "config_image_token_id", "grid_counts", "module_or_none"]


def config_image_token_id(hf: nn.Module) -> int | None:
    """The image placeholder's token id from the config (``image_token_id`` / ``image_token_index``)."""
    cfg = hf.config
    for attr in ("image_token_id", "image_token_index"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int):
            return v
    return None


def grid_counts(model: Any, inputs: Any, first_dim: int) -> list[int] | None:
    """Rows per image of a vision tower that runs the batch's patches flattened into one sequence.

    Read off the processor's ``image_grid_thw`` (Qwen2-VL and the towers built like it): one row
    per patch (the blocks), one per ``spatial_merge_size``² patches (the merger's output), or one
    per patch plus a class token per frame (LLaVA-OneVision-1.5's RICE blocks), whichever adds up
    to ``first_dim``; None when there is no grid or none does.
    """
    thw = inputs.get("image_grid_thw")
    if thw is None:
        return None
    frames = [(int(t), int(t * h * w)) for t, h, w in thw.tolist()]
    merge = int(getattr(getattr(model.hf.config, "vision_config", None), "spatial_merge_size", 2)) ** 2
    for per_image in ([n for _, n in frames], [n // merge for _, n in frames], [n + t for t, n in frames]):
        if sum(per_image) == first_dim:
            return per_image
    return None


def module_or_none(root: nn.Module, path: str | None) -> str | None:
    """``path`` if it names a module (not a parameter or a function), else None."""
    if path is None:
        return None
    return path if isinstance(get_module(root, path), nn.Module) else None


class Family:
    """Defaults shared by the families; subclasses fill the candidate paths and override what differs."""

    name = "generic"
    model_types: tuple[str, ...] = ()  # the config.model_type values this family maps (the coverage matrix runs each)
    aliases: tuple[str, ...] = ()  # other spellings of those model types that detection accepts too
    vision_layers: Sequence[str] = ()
    projector: Sequence[str] = ()
    lm_layers: Sequence[str] = ()
    final_norm: Sequence[str] = ()
    unembed: Sequence[str] = ("lm_head", "language_model.lm_head")
    attn_attr: str | None = "self_attn"
    mlp_attr: str | None = "mlp"
    nested_images = False  # processor wants [[img], [img], ...]
    placeholder = "<image>\n{prompt}"  # used when there is no chat template
    # orthogonalize: names of the linear layers that write each output into the residual stream
    attn_out: Sequence[str] = ATTN_OUT
    mlp_out: Sequence[str] = MLP_OUT
    projector_out: Sequence[str] = PROJECTOR_OUT
    projector_writes_stream = True  # the projector's output is merged into the LM sequence at the image tokens
    # the token sequences points lie on (HookTarget.side), as error messages name them
    sequence_names: dict[str, str] = {"lm": "the language model's token sequence"}
    image_free_sequences: frozenset[str] = frozenset()  # sequences that never hold image tokens

    # -------------------------------------------------------------- where things live

    def claims(self, model_type: str) -> bool:
        """Whether ``config.model_type`` is this family's (one of its model types or their aliases)."""
        return model_type in self.model_types or model_type in self.aliases

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = Layout(
            family=self.name,
            lm_layers=require(hf, self.name, "language-model layers", self.lm_layers),
            unembed=require(hf, self.name, "unembedding (lm_head)", self.unembed),
            vision_layers=find_first(hf, self.vision_layers),
            projector=find_first(hf, self.projector),
            final_norm=module_or_none(hf, find_first(hf, self.final_norm)),
            attn_attr=self.attn_attr,
            mlp_attr=self.mlp_attr,
            image_token_id=config_image_token_id(hf),
        )
        self.extra(hf, lay)
        return lay

    def extra(self, hf: nn.Module, lay: Layout) -> None:
        """Family-specific additions (cross-attention modules)."""

    def vision_width(self, hf: nn.Module) -> int | None:
        """Width of the vision tower's hidden states (None when the config does not say)."""
        return getattr(getattr(hf.config, "vision_config", None), "hidden_size", None)

    def xattn_width(self, hf: nn.Module) -> int | None:
        """Width of a vision-side cross-attention's output (a Q-Former's), None when unknown."""
        return None

    def hook_targets(self, hf: nn.Module, lay: Layout) -> dict[str, HookTarget]:
        """Every hook point of the model, in forward order, with its module and width."""
        d_model = int(get_module(hf, lay.unembed).weight.shape[1])
        vision_width = self.vision_width(hf)
        t: dict[str, HookTarget] = {}
        lists = [lay.vision_layers] if isinstance(lay.vision_layers, str) else (lay.vision_layers or [])
        blocks = [f"{path}.{j}" for path in lists for j in range(len(get_module(hf, path)))]
        for i, block in enumerate(blocks):  # numbered on through several lists (Mllama: local, then global)
            t[f"vision.{i}.resid"] = HookTarget(block, side="vision", width=vision_width)
        if lay.projector:
            t["projector"] = HookTarget(lay.projector, side="vision", width=d_model)
        if lay.xattn_side == "vision":
            for i, path in sorted(lay.xattn.items()):
                t[f"{lay.xattn_prefix}.{i}.xattn"] = HookTarget(path, side="vision", width=self.xattn_width(hf))
        # lm.embed is the input of block 0: token embeddings with the image features already
        # merged in, which is what HF reports as hidden_states[0].
        t["lm.embed"] = HookTarget(f"{lay.lm_layers}.0", mode="input", width=d_model)
        for i, blk in enumerate(get_module(hf, lay.lm_layers)):
            block = f"{lay.lm_layers}.{i}"
            t[f"lm.{i}.resid"] = HookTarget(block, width=d_model)
            if lay.attn_attr and hasattr(blk, lay.attn_attr):
                t[f"lm.{i}.attn"] = HookTarget(f"{block}.{lay.attn_attr}", width=d_model)
            if lay.xattn_side == "lm" and i in lay.xattn:
                t[f"lm.{i}.xattn"] = HookTarget(lay.xattn[i], width=d_model)
            if lay.mlp_attr and hasattr(blk, lay.mlp_attr):
                t[f"lm.{i}.mlp"] = HookTarget(f"{block}.{lay.mlp_attr}", width=d_model)
        if lay.final_norm:
            t["lm.norm"] = HookTarget(lay.final_norm, width=d_model)
        out = self.logit_output(hf, lay)
        t["logits"] = HookTarget(lay.unembed, width=int(get_module(hf, lay.unembed).weight.shape[0]),
                                 post=None if out.identity else out)
        return t

    def logit_output(self, hf: nn.Module, lay: Layout) -> LogitOutput:
        """What the forward does to lm_head's output before returning it (see :mod:`..logit_output`)."""
        return logit_output(hf, lay.unembed)

    def residual_writers(self, model: Any) -> list[tuple[str, str]]:
        """``(dotted path, kind)`` of every module writing into the LM's residual stream (see :mod:`..writers`)."""
        return residual_writers(model, self)

    # -------------------------------------------------------------- activations
    def image_mask(self, model: Any, inputs: Any) -> torch.Tensor:
        """Bool ``[b, s]``: which token positions hold image tokens."""
        ids = inputs["input_ids"]
        if model.layout.image_token_id is None:
            return torch.zeros_like(ids, dtype=torch.bool)
        return ids == model.layout.image_token_id

    def sequences(self, model: Any, inputs: Any) -> dict[str, tuple[dict, torch.Tensor]]:
        """``{side: ({"input_ids", "attention_mask"}, image mask)}`` of a batch (see :meth:`probekit.Model.sequences`)."""
        if inputs.get("input_ids") is None:
            return {}
        return {"lm": ({"input_ids": inputs["input_ids"], "attention_mask": inputs.get("attention_mask")},
                       self.image_mask(model, inputs))}

    def lm_activation(self, point: str, h: torch.Tensor, batch: int) -> torch.Tensor:
        """An LM-side activation as ``[b, s, d]``.

        Some modules run on the batch's rows flattened to ``[b*s, d]`` (OPT's ``fc2``, Llama 4's
        MoE feed-forward); those are folded back.
        """
        if h.dim() == 2 and batch > 0 and h.shape[0] % batch == 0:
            return h.view(batch, -1, h.shape[-1])
        return h

    def vision_counts(self, model: Any, inputs: Any, point: str, first_dim: int) -> list[int] | None:
        """Rows of a flattened vision tensor per image, for families whose tower flattens the batch."""
        return None

    def vision_activation(self, model: Any, inputs: Any, point: str, h: torch.Tensor,
                          batch: int) -> tuple[torch.Tensor, list[int] | None]:
        """A vision-side activation as :func:`probekit.hooks.positions.select_vision` takes it.

        Returns ``h`` as ``[B', p, d]`` (B' a multiple of the batch), ``[N, d]`` or ``[1, N, d]``,
        with how many of the N rows belong to each image when the tower flattens them (else None).
        """
        if h.dim() > 3 and h.shape[0] == batch:
            # extra axes per sample: Mllama's [b, images, tiles, patches, d], a pixel-shuffled grid [b, h, w, d]
            return h.reshape(batch, -1, h.shape[-1]), None
        flat = h.dim() == 2 or (h.dim() == 3 and h.shape[0] == 1)  # [N, d] or one sequence of all patches
        counts = self.vision_counts(model, inputs, point, h.shape[-2] if h.dim() == 3 else h.shape[0]) if flat else None
        return h, counts

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
        return self.placeholder.format(prompt=prompt, image=self.image_marker(processor))

    def image_marker(self, processor: Any) -> str:
        """The text that marks where the image goes in a prompt written without a chat template."""
        return getattr(processor, "image_token", "<image>")

    def build_inputs(self, model: Any, images: list, prompts: list[str], chat: bool | None) -> dict:
        texts = {p: self.format_prompt(model.processor, p, chat) for p in dict.fromkeys(prompts)}  # each prompt once
        return self.call_processor(model.processor, images, [texts[p] for p in prompts])

    def call_processor(self, processor: Any, images: list, texts: list[str]) -> dict:
        """The stock processor on images and their formatted prompts (the reference every fast path is checked against)."""
        imgs = [[im] for im in images] if self.nested_images else images
        return dict(processor(images=imgs, text=texts, return_tensors="pt", padding=True))
