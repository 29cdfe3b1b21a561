"""Which VLM architectures probekit supports, as checked by the coverage matrix.

:data:`COVERED` lists every ``config.model_type`` that ``tests/test_coverage_matrix.py`` runs
end to end on a tiny build (:mod:`probekit.tiny.zoo`); :data:`UNSUPPORTED` the ones
known not to work, with the reason. Every other image-text-to-text architecture of the
installed transformers is *untested*: it may work through the generic adapter, nobody has
checked. :func:`markdown_table` writes the table of ``docs/real-models.md`` from these lists.

An architecture newer than the lowest supported transformers is named in :data:`SINCE`; under
an older release it is not installed, and :func:`covered` and :func:`rows` leave it out.

Example:
    >>> from probekit.models import coverage
    >>> coverage.COVERED["gemma3"]
    'gemma3'
    >>> any(r.model_type == "llava" and r.status == "works" for r in coverage.rows())
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["COVERED", "UNSUPPORTED", "NOT_APPLICABLE", "OUTSIDE_MAPPING", "SINCE", "Row", "rows", "markdown_table",
           "write_docs", "installed_architectures", "covered", "newer_than_installed", "checked_rows",
           "text_layers", "encoder_layers", "text_width", "vision_layers"]

def _covered_from_registry() -> dict[str, str]:
    from .families import FAMILIES

    out = {mt: f.name for f in FAMILIES.values() for mt in f.model_types}
    out.update({mt: "generic" for mt in getattr(FAMILIES["generic"], "checked_model_types", ())})
    return out


COVERED: dict[str, str] = _covered_from_registry()
"""model_type -> the probekit family that maps it (``generic`` = found by shape, no family module): derived from
the family registry (each family's ``model_types``, and ``GenericFamily.checked_model_types``)."""

UNSUPPORTED: dict[str, str] = {
    "shieldgemma2": "its processor writes its own prompts, one row per image and safety policy "
    "(images x policies rows), so a batch no longer lines up with the given images and prompts (its model class, "
    "Gemma3ForConditionalGeneration, is covered as gemma3)",
    "phi4_multimodal": "Phi4MultimodalForCausalLM is no image-text-to-text class in transformers (5.9 to 5.25) and its "
    "image processor needs torchvision (no build matching torch 2.13.0+cpu loads here)",
    "pi05": "PI05ForConditionalGeneration is a robot action model (pi0.5): besides input_ids, pixel_values and "
    "pixel_attention_mask (one slot per camera) its forward takes noise, a diffusion timestep and actions, drawing "
    "the noise and timestep at random when not given (two identical calls differ), and returns as `logits` the "
    "flow-matching velocity of an action chunk (batch x chunk_size x max_action_dim), with `hidden_states` of the "
    "action expert's chunk only (the PaliGemma prefix runs bidirectionally into the cache); it has no output "
    "embedding, so there is no token distribution for a logit lens, and its image processor (PI0ImageProcessor) "
    "needs torchvision",
}
"""model_type -> why probekit does not support it (yet)."""

NOT_APPLICABLE: dict[str, dict[str, str]] = {
    "florence2": {
        "lm.norm": "BART's blocks are post-LayerNorm and the last decoder block's output goes straight to lm_head, "
        "so there is no final norm: every lm.{i}.resid, the last one included, is checked against the decoder's "
        "hidden states and the logit lens is lm_head alone",
        "image positions on lm.*": "the decoder sequence holds no image tokens (the image reaches it only through "
        "the cross-attention lm.{i}.xattn); image positions are checked on the encoder sequence (encoder.*), and "
        "asking for them on lm.* points raises PositionError",
    },
}
"""model_type -> {check: why it does not apply}: the matrix asserts the stated alternative instead of skipping."""

_OUTSIDE_CLASS = {"phi4_multimodal": "Phi4MultimodalForCausalLM"}
OUTSIDE_MAPPING: frozenset[str] = frozenset(_OUTSIDE_CLASS)
"""Architectures named above that are not in transformers' image-text-to-text mapping."""

SINCE: dict[str, str] = {
    "llava_onevision1_5": "5.25.0",
    "ovis2_5": "5.25.0",
    "pi05": "5.25.0",
}
"""model_type -> the first transformers release that has it, for those newer than setup.cfg's lowest (5.9.0)."""


@dataclass(frozen=True)
class Row:
    model_type: str
    hf_class: str
    status: str  # "works" | "unsupported" | "untested"
    family: str
    note: str


def installed_architectures() -> dict[str, str]:
    """model_type -> model class name of every image-text-to-text architecture in the installed transformers."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return dict(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def newer_than_installed(model_type: str) -> bool:
    """Whether ``model_type`` first came with a transformers release newer than the installed one (:data:`SINCE`)."""
    if model_type not in SINCE:
        return False
    from packaging.version import Version

    return Version(_tf_version()) < Version(SINCE[model_type])


def covered() -> dict[str, str]:
    """The entries of :data:`COVERED` that the installed transformers has (what the matrix runs)."""
    return {arch: fam for arch, fam in COVERED.items() if not newer_than_installed(arch)}


def rows() -> list[Row]:
    """One row per installed (or explicitly unsupported) architecture, sorted by model_type."""
    installed = installed_architectures()
    out = []
    for arch in sorted(set(installed) | {a for a in UNSUPPORTED if not newer_than_installed(a)}):
        cls = installed.get(arch, _OUTSIDE_CLASS.get(arch, ""))
        if arch in COVERED:
            out.append(Row(arch, cls, "works", COVERED[arch], ""))
        elif arch in UNSUPPORTED:
            out.append(Row(arch, cls, "unsupported", "", UNSUPPORTED[arch]))
        else:
            out.append(Row(arch, cls, "untested", "", ""))
    return out


def markdown_table() -> str:
    """The coverage section of ``docs/real-models.md``: a header naming the transformers release it was
    generated with and the counts, :func:`checked_rows` (works and unsupported in full), and the
    untested architectures of that release."""
    rs = rows()
    counts = {s: sum(r.status == s for r in rs) for s in ("works", "unsupported", "untested")}
    head = (f"Checked on tiny random-weight builds of each architecture (table generated with transformers "
            f"{_tf_version()}): **{counts['works']} work**, {counts['unsupported']} unsupported, "
            f"{counts['untested']} untested. \"Works\" means every check of `tests/test_coverage_matrix.py` passes: "
            "wrap and checkpoint round trip, every block mapped, `lm.*.resid` (and an encoder-decoder's `encoder.*.resid`) "
            "equal to the model's own hidden states, image positions equal to the tokens the image features replace, "
            "vision points split per image, logit lens on the last block and the `logits` point equal to the model's "
            "logits, the store layout planned without a forward equal to the store, and the store saved and loaded "
            "bit for bit.")
    untested = [r.model_type for r in rs if r.status == "untested"]
    tail = ("Untested (they may work through the generic adapter; nobody has checked; the list is the one of the "
            "release named above): " + ", ".join(f"`{m}`" for m in untested) + ".")
    return f"{head}\n\n{checked_rows()}\n{tail}\n"


def checked_rows() -> str:
    """The part of the table that does not depend on the installed release: every covered architecture with its
    class and family, the checks that do not apply, and the unsupported ones with their reasons."""
    installed = installed_architectures()
    lines = ["| model_type | class | family |", "|---|---|---|"]
    lines += [f"| `{arch}` | `{installed.get(arch, '?')}` | {COVERED[arch]} |" for arch in sorted(COVERED)]
    lines += ["", "Checks that do not apply (the matrix asserts what holds instead):", ""]
    lines += [f"- `{arch}`, {check}: {why}." for arch, checks in sorted(NOT_APPLICABLE.items())
              for check, why in checks.items()]
    lines += ["", "Unsupported:", ""]
    lines += [f"- `{arch}` (`{installed.get(arch, _OUTSIDE_CLASS.get(arch, '?'))}`): {UNSUPPORTED[arch]}."
              for arch in sorted(UNSUPPORTED)]
    return "\n".join(lines) + "\n"


def _tf_version() -> str:
    import transformers

    return transformers.__version__


def text_layers(config: Any) -> int:
    """Number of language-model blocks a config declares (an encoder-decoder's: its decoder's)."""
    text = config.get_text_config()
    if getattr(text, "is_encoder_decoder", False):
        return int(text.decoder_layers)
    return int(text.num_hidden_layers)


def encoder_layers(config: Any) -> int:
    """Number of text-encoder blocks of an encoder-decoder config (Florence-2's BART), 0 for a decoder-only one."""
    text = config.get_text_config()
    return int(text.encoder_layers) if getattr(text, "is_encoder_decoder", False) else 0


def text_width(config: Any) -> int:
    """Residual width of the language model a config declares."""
    return int(config.get_text_config().hidden_size)


def vision_layers(config: Any) -> int:
    """Number of vision-tower blocks a config declares (Mllama: local plus global blocks; DaViT: over its stages)."""
    v = config.vision_config
    if getattr(v, "depths", None) is not None:
        return int(sum(v.depths))
    n = getattr(v, "num_hidden_layers", None)
    if n is None:
        n = getattr(v, "depth")
    return int(n) + int(getattr(v, "num_global_layers", 0) or 0)


START, END = "<!-- coverage:start -->", "<!-- coverage:end -->"


def write_docs(path: str) -> bool:
    """Rewrite the coverage block of ``path`` (between the coverage markers); True if it changed.

    Run ``python -m probekit.models.coverage docs/real-models.md`` after changing the lists above.
    """
    from pathlib import Path

    f = Path(path)
    text = f.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    new = f"{head}{START}\n{markdown_table()}{END}{tail}"
    if new != text:
        from ..files import atomic_write

        atomic_write(f, new, "coverage page")
    return new != text


if __name__ == "__main__":
    import sys

    print("updated" if write_docs(sys.argv[1] if len(sys.argv) > 1 else "docs/real-models.md") else "up to date")
