"""Florence-2: a DaViT vision tower, a projector, and a BART encoder-decoder language model.

The image and the prompt go in on one sequence, the *encoder's*: the processor writes
``<image> x N, <s>, prompt, </s>`` and the projector's N image features replace the ``<image>``
tokens' embeddings (N = the last stage's patches + 1 pooled token). The text comes out of a
second sequence, the *decoder's*, which sees the image only through its cross-attention to the
encoder's last hidden states. So Florence-2 has two token sequences, and its points say which
one they lie on (:attr:`probekit.models.adapter.HookTarget.side`):

- ``vision.{i}.resid``: output of DaViT block i (a spatial-window then a channel-attention
  block), numbered on through the stages; stage s's blocks are ``embed_dim[s]`` wide. The
  tower keeps its activations as ``[b, C, H, W]``; they are read as ``[b, H*W, C]``.
- ``projector``: the N image features the encoder reads (``[b, N, d]``).
- ``encoder.embed``, ``encoder.{i}.resid|attn|mlp``: the encoder sequence (image tokens and
  prompt). Positions apply here: ``"image"`` are the N image tokens, ``"last"`` the prompt's
  closing ``</s>``. ``encoder.{i}.resid`` equals the model's ``encoder_hidden_states[i + 1]``.
- ``lm.embed``, ``lm.{i}.resid|attn|xattn|mlp``, ``logits``: the decoder sequence;
  ``lm.{i}.xattn`` is block i's cross-attention to the encoder, the only way the image reaches
  it. ``lm.{i}.resid`` equals ``decoder_hidden_states[i + 1]``; ``"last"`` is the last decoder
  token, the one whose logits predict the next token. There is no ``lm.norm``: BART's blocks
  are post-LayerNorm and the last block's output goes straight to ``lm_head``, so the logit
  lens is ``lm_head`` alone. The decoder sequence holds no image tokens: image positions
  raise :class:`~probekit.errors.PositionError` there.

What the decoder is fed: :meth:`Florence2.build_inputs` (so ``probekit.collect``) gives it the
decoder start token alone (``decoder_start_token_id``, BART's ``</s>``), which is what the
model's own forward and the first step of ``generate`` feed it; ``lm.*`` at ``"last"`` then
read the state that predicts the first generated token. To follow the decoder along a target
text (teacher forcing), pass ``decoder_input_ids`` (starting with the start token) and
``decoder_attention_mask`` to the forward yourself: a :class:`~probekit.hooks.Recorder`
records the whole decoder sequence, and ``ablate`` / ``steer`` choose their positions on it.

Steering: ``ablate`` / ``steer`` work on both sequences. ``orthogonalize`` does not: in
post-LayerNorm blocks the stream is normalised after every write, so no weight edit removes
a direction from it (:class:`~probekit.errors.UnsupportedModelError`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import nn

from ...errors import UnsupportedModelError
from ..layout import HookTarget, Layout, get_module, require
from .base import Family

__all__ = ["Florence2"]


class Florence2(Family):
    name = "florence2"
    model_types = ("florence2",)
    vision_layers = ("model.vision_tower.blocks",)  # one ModuleList of blocks per stage
    projector = ("model.multi_modal_projector",)
    lm_layers = ("model.language_model.decoder.layers",)
    encoder_layers = ("model.language_model.encoder.layers",)
    final_norm = ()  # BART: post-LayerNorm blocks, no final norm
    unembed = ("lm_head",)
    mlp_attr = "fc2"  # BART blocks have no MLP module: fc1 -> activation -> fc2, fc2 writes the output
    placeholder = "{prompt}"  # the processor writes <image> x N, <s>, prompt, </s> itself
    sequence_names = {"encoder": "Florence-2's encoder sequence (image tokens and prompt)",
                      "lm": "Florence-2's decoder sequence (the decoder start token, then any decoder tokens)"}
    image_free_sequences = frozenset({"lm"})

    def layout(self, hf: nn.Module, processor: Any) -> Layout:
        lay = super().layout(hf, processor)
        stages = lay.vision_layers
        if isinstance(stages, str):  # number the blocks on through the stages
            lay.vision_layers = [f"{stages}.{s}" for s in range(len(get_module(hf, stages)))]
        lay.encoder_layers = require(hf, self.name, "encoder layers", self.encoder_layers)
        for i in range(len(get_module(hf, lay.lm_layers))):
            lay.xattn[i] = f"{lay.lm_layers}.{i}.encoder_attn"
        return lay

    def hook_targets(self, hf: nn.Module, lay: Layout) -> dict[str, HookTarget]:
        base = super().hook_targets(hf, lay)
        dims = list(hf.config.vision_config.embed_dim)
        # the width of each vision block, in the order the base numbers them: stage by stage
        widths = iter([dims[s] for s, path in enumerate(lay.vision_layers or []) for _ in get_module(hf, path)])
        d_model = int(get_module(hf, lay.unembed).weight.shape[1])
        t: dict[str, HookTarget] = {}
        for name, tgt in base.items():  # in forward order: vision, projector, encoder, decoder
            if tgt.side == "vision" and tgt.path != lay.projector:
                tgt = replace(tgt, width=next(widths))
            if name == "lm.embed":
                t.update(self._encoder_targets(hf, lay, d_model))
            t[name] = tgt
        return t

    def _encoder_targets(self, hf: nn.Module, lay: Layout, d_model: int) -> dict[str, HookTarget]:
        path = lay.encoder_layers
        t = {"encoder.embed": HookTarget(f"{path}.0", mode="input", side="encoder", width=d_model)}
        for i, blk in enumerate(get_module(hf, path)):
            block = f"{path}.{i}"
            t[f"encoder.{i}.resid"] = HookTarget(block, side="encoder", width=d_model)
            t[f"encoder.{i}.attn"] = HookTarget(f"{block}.{self.attn_attr}", side="encoder", width=d_model)
            t[f"encoder.{i}.mlp"] = HookTarget(f"{block}.{self.mlp_attr}", side="encoder", width=d_model)
        return t

    def vision_activation(self, model: Any, inputs: Any, point: str, h: torch.Tensor,
                          batch: int) -> tuple[torch.Tensor, list[int] | None]:
        if h.dim() == 4:  # a DaViT block keeps [b, C, H, W] (the projector's output is [b, N, d])
            return h.flatten(2).transpose(1, 2), None
        return super().vision_activation(model, inputs, point, h, batch)

    def residual_writers(self, model: Any) -> list[tuple[str, str]]:
        raise UnsupportedModelError(
            "orthogonalize: Florence-2's BART blocks (encoder.*.resid and lm.*.resid) are post-LayerNorm: each block "
            "normalises the stream after adding its attention and MLP outputs, so no weight edit removes a direction "
            "from the stream",
            fix="use probekit.ablate at the encoder.*.resid / lm.*.resid points instead")

    # ---------------------------------------------------------------- sequences and inputs
    def _start_ids(self, model: Any, batch: int, device: torch.device) -> torch.Tensor:
        start = model.hf.config.text_config.decoder_start_token_id
        return torch.full((batch, 1), int(start), dtype=torch.long, device=device)

    def sequences(self, model: Any, inputs: Any) -> dict[str, tuple[dict, torch.Tensor]]:
        out: dict[str, tuple[dict, torch.Tensor]] = {}
        ids = inputs.get("input_ids")
        if ids is not None:
            out["encoder"] = ({"input_ids": ids, "attention_mask": inputs.get("attention_mask")},
                              self.image_mask(model, inputs))
        dec = inputs.get("decoder_input_ids")
        if dec is None and inputs.get("decoder_inputs_embeds") is None and ids is not None:
            dec = self._start_ids(model, ids.shape[0], ids.device)  # what the forward feeds the decoder then
        if dec is not None:
            out["lm"] = ({"input_ids": dec, "attention_mask": inputs.get("decoder_attention_mask")},
                         torch.zeros_like(dec, dtype=torch.bool))
        return out

    def build_inputs(self, model: Any, images: list, prompts: list[str], chat: bool | None) -> dict:
        inputs = super().build_inputs(model, images, prompts, chat)
        ids = inputs["input_ids"]
        inputs["decoder_input_ids"] = self._start_ids(model, ids.shape[0], ids.device)
        inputs["decoder_attention_mask"] = torch.ones_like(inputs["decoder_input_ids"])
        return inputs
