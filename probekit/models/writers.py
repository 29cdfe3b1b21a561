"""The modules that write into a language model's residual stream (what ``orthogonalize`` edits).

The stream is the sum of the token (and learned position) embeddings, the projector's output
merged at the image tokens, and each block's attention, cross-attention and MLP outputs.
:func:`residual_writers` finds them from a :class:`~probekit.models.families.base.Family`'s
facts: the linear-layer names it lists (``attn_out``, ``mlp_out``, ``projector_out``), whether
its projector writes into the stream at all, and its LM-side cross-attention modules.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..errors import UnsupportedModelError
from .layout import get_module

__all__ = ["residual_writers", "find_linear", "ATTN_OUT", "MLP_OUT", "PROJECTOR_OUT", "POST_NORMS"]

ATTN_OUT = ("o_proj", "out_proj", "dense", "c_proj", "wo", "proj")
MLP_OUT = ("down_proj", "fc2", "c_proj", "w2", "dense_4h_to_h", "wo", "proj")
PROJECTOR_OUT = ("linear_2", "proj", "linear", "fc2")
# a norm after the attention/MLP output (Gemma-2/3 style): the stream is no plain sum of the writes
POST_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm", "post_attention_norm", "post_ffw_norm")


def find_linear(module: nn.Module, names: Sequence[str], d: int, role: str, where: str) -> tuple[str, nn.Linear]:
    """``(relative path, layer)`` of the linear layer in ``module`` that writes ``d`` features."""
    if isinstance(module, nn.Linear):
        if module.out_features != d:
            raise UnsupportedModelError(f"{where} ({role}) writes {module.out_features} features, the stream has {d}")
        return "", module
    for n in names:
        sub = getattr(module, n, None)
        if isinstance(sub, nn.Linear) and sub.out_features == d:
            return n, sub
    linears = [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear) and m.out_features == d]
    if not linears:
        raise UnsupportedModelError(f"found no linear layer writing the {role} output into the residual stream in {where}",
                                    fix="orthogonalize supports models whose blocks end in a linear projection; use ablate instead")
    return linears[-1]


def residual_writers(model: Any, family: Any) -> list[tuple[str, str]]:
    """``(dotted path, kind)`` of every module that writes into the language model's residual stream.

    Kinds: ``"embedding"`` (rows are written: token and learned position embeddings) and
    ``"linear"`` (the output side: the projector's last linear layer, each block's attention
    and MLP output projections, LM-side cross-attention outputs). Blocks with a norm *after*
    their attention/MLP (Gemma-2/3 style), or post-LayerNorm blocks, raise
    UnsupportedModelError: there the stream is not a plain sum of these outputs.
    """
    d = model.d_model
    hf = model.hf
    lay = model.layout
    out: list[tuple[str, str]] = []
    emb = hf.get_input_embeddings()
    names = {m: n for n, m in hf.named_modules()}
    if emb is None or emb not in names:
        raise UnsupportedModelError("the model has no input embedding module", fix="use ablate instead")
    if emb.weight.shape[1] != d:
        raise UnsupportedModelError(f"token embeddings are {emb.weight.shape[1]} wide, the stream {d} (a projection in between)",
                                    fix="use ablate instead")
    out.append((names[emb], "embedding"))
    base = get_module(hf, lay.lm_layers.rsplit(".", 1)[0])
    for n, child in base.named_children():
        if isinstance(child, nn.Embedding) and child is not emb and child.weight.shape[1] == d:
            out.append((f"{names[base]}.{n}", "embedding"))  # learned positions (OPT)
    cfg = getattr(hf.config, "text_config", hf.config)
    if getattr(cfg, "do_layer_norm_before", True) is False:
        raise UnsupportedModelError("post-LayerNorm blocks: the stream is normalised after each write",
                                    fix="orthogonalize needs pre-norm blocks; use ablate instead")
    if lay.projector and family.projector_writes_stream:
        proj = get_module(hf, lay.projector)
        sub, _ = find_linear(proj, family.projector_out, d, "projector", lay.projector)
        out.append((f"{lay.projector}.{sub}".rstrip("."), "linear"))
    xattn = lay.xattn if lay.xattn_side == "lm" else {}
    for i, block in enumerate(get_module(hf, lay.lm_layers)):
        path = f"{lay.lm_layers}.{i}"
        if any(hasattr(block, a) for a in POST_NORMS):
            raise UnsupportedModelError(f"block {path} normalises its attention/MLP output before adding it to the stream",
                                        fix="orthogonalize cannot make such a stream orthogonal; use ablate instead")
        parts = [(f"{path}.{lay.attn_attr}", lay.attn_attr, family.attn_out)] if lay.attn_attr and hasattr(block, lay.attn_attr) else []
        if i in xattn:
            parts.append((xattn[i], xattn[i].rsplit(".", 1)[-1], family.attn_out))
        if lay.mlp_attr and hasattr(block, lay.mlp_attr):
            parts.append((f"{path}.{lay.mlp_attr}", lay.mlp_attr, family.mlp_out))
        for where, role, linear_names in parts:
            sub, _ = find_linear(get_module(hf, where), linear_names, d, role, where)
            out.append((f"{where}.{sub}".rstrip("."), "linear"))
    return out
