"""SAEs on disk in sae-lens's format: ``cfg.json`` + ``sae_weights.safetensors``, checked field by field.

A directory written by sae-lens (``SAE.save_model``, 6.x; the pre-6 ``cfg.json`` keys too) or by
probekit (:func:`save_sae`) loads here; one written here loads in sae-lens. A TopK SAE saved by
eai-sparsify (``SparseCoder.save_to_disk``: ``cfg.json`` + ``sae.safetensors`` with ``encoder.weight``
``[d_sae, d_in]``, ``encoder.bias``, ``W_dec``, ``b_dec``) loads too, as the same TopK SAE (sparsify
encodes ``topk(relu((x - b_dec) W_enc + b_enc))``, sae-lens's TopK with the ReLU first, the same latents);
its directory name (``layers.12``) is translated like a hook name. Everything is checked
before an :class:`~probekit.sae.SAE` is built, and any problem is a
:class:`~probekit.errors.StoreError` naming the file and the field (never a raw traceback):
the JSON is strict (a duplicated key, NaN refused), every field has the type and range it must
have, the tensors are exactly ``W_enc [d_in, d_sae]``, ``b_enc [d_sae]``, ``W_dec [d_sae, d_in]``,
``b_dec [d_in]`` (and ``threshold [d_sae]`` for JumpReLU), floating and finite. probekit adds a
checksum of the config and the tensors to the safetensors header (``probekit_checksum``; sae-lens
ignores it), so a probekit-written SAE whose ``cfg.json`` or weights changed afterwards is refused;
a directory without one (sae-lens's own) gets every other check. Writes are atomic
(:func:`probekit.files.atomic_dir`).

Where the SAE reads: ``point=`` when given, else ``metadata.probekit_point``, else the sae-lens /
TransformerLens ``hook_name`` translated when it names the residual stream or a block output
(``blocks.12.hook_resid_post`` -> ``lm.12.resid``, ``blocks.3.hook_mlp_out`` -> ``lm.3.mlp``,
``blocks.3.hook_attn_out`` -> ``lm.3.attn``; for a VLM check that its LM blocks are numbered as the
SAE's were), else None (then pass ``point=``).
"""

from __future__ import annotations

import json
import os

from pathlib import Path
from typing import Any

import torch

from ..errors import InputError, StoreError, plain
from ..files import atomic_dir, check_checksum, check_tensor, checksum, field, loads_json, read_safetensors
from ..files.reading import read_bytes
from ..hooks.points import point_from_hook

__all__ = ["ARCHITECTURES", "CFG", "WEIGHTS", "read_config", "read_sae", "write_sae"]

# The architectures the format describes (the SAE value builds these): the list lives with the format so that
# this module needs no SAE class (the class reads and writes through here; nothing imports back).
ARCHITECTURES = ("standard", "topk", "jumprelu")

CFG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
_KEY = "probekit_checksum"
_FIX = "re-save the SAE (probekit.sae.save_sae or sae-lens SAE.save_model), or train it again"
_NORMALISE = ("none",)
def _pre6(cfg: dict) -> dict:
    """A pre-6.0 sae-lens config in 6.x's keys (``hook_point`` -> ``hook_name``, ``activation_fn_str``,
    ``activation_fn_kwargs.k`` -> a TopK architecture), as sae-lens's ``handle_pre_6_0_config`` does."""
    out = dict(cfg)
    if "hook_point" in out:
        out.setdefault("hook_name", out.pop("hook_point"))
    act = out.pop("activation_fn_str", out.get("activation_fn", "relu"))
    kwargs = out.get("activation_fn_kwargs") or {}
    if act == "topk" and isinstance(kwargs, dict) and "k" in kwargs:
        out.setdefault("architecture", "topk")
        out.setdefault("k", kwargs["k"])
    elif act not in ("relu", None):
        out.setdefault("architecture", f"activation {act}")
    out.setdefault("architecture", "standard")
    if isinstance(out.get("normalize_activations"), bool):
        out["normalize_activations"] = "expected_average_only_in" if out["normalize_activations"] else "none"
    meta = out.get("metadata") if isinstance(out.get("metadata"), dict) else {}
    out["metadata"] = {**{k: out[k] for k in ("hook_name", "model_name") if k in out}, **meta}
    return out


def _version6(cfg: dict) -> bool:
    meta = cfg.get("metadata")
    v = cfg.get("sae_lens_version") or (meta.get("sae_lens_version") if isinstance(meta, dict) else None)
    if not isinstance(v, str):
        return "metadata" in cfg
    major = v.split(".")[0]
    return major.isdigit() and int(major) >= 6


def read_config(directory: str | os.PathLike) -> dict:
    """``cfg.json`` of an SAE directory, strictly parsed and in sae-lens 6.x's keys (not yet checked)."""
    d = Path(directory)
    p = d / CFG
    if not d.is_dir():
        raise StoreError(f"no SAE directory at {d}", fix="pass the folder holding cfg.json and sae_weights.safetensors")
    raw = read_bytes(p, StoreError, _FIX, missing=f"{d} has no {CFG}: not a sae-lens SAE directory",
                     unreadable=f"cannot read {p}")
    cfg = loads_json(raw, f"SAE config {p}", fix=_FIX)
    if not isinstance(cfg, dict):
        raise StoreError(f"SAE config {p} is a JSON {type(cfg).__name__}, not an object", fix=_FIX)
    return cfg if _version6(cfg) else _pre6(cfg)


def _int(cfg: dict, key: str, where: str, low: int = 1) -> int:
    v = field(cfg, key, int, where, _FIX)
    if v < low:
        raise StoreError(f"{where}: field {key!r} is {v}, must be >= {low}", fix=_FIX)
    return v


def _checked(cfg: dict, where: str) -> dict:
    """The fields an SAE is built from, each checked (StoreError naming the field otherwise)."""
    arch = field(cfg, "architecture", str, where, _FIX, default="standard")
    if arch not in ARCHITECTURES:
        raise StoreError(f"{where}: field 'architecture' is {arch!r}, which probekit cannot run",
                         fix=f"probekit reads the architectures {ARCHITECTURES}")
    d_in, d_sae = _int(cfg, "d_in", where), _int(cfg, "d_sae", where)
    out = {"architecture": arch, "d_in": d_in, "d_sae": d_sae,
           "apply_b_dec_to_input": field(cfg, "apply_b_dec_to_input", bool, where, _FIX, default=True)}
    norm = field(cfg, "normalize_activations", (str, type(None)), where, _FIX, default="none") or "none"
    if norm not in _NORMALISE:
        raise StoreError(f"{where}: field 'normalize_activations' is {norm!r}; probekit runs SAEs that read raw "
                         "activations only", fix="fold the normalisation into the weights first (sae-lens: load it with "
                         "from_pretrained, which folds it, and save_model again)")
    reshape = field(cfg, "reshape_activations", (str, type(None)), where, _FIX, default="none") or "none"
    if reshape != "none":
        raise StoreError(f"{where}: field 'reshape_activations' is {reshape!r}; probekit reads flat activations "
                         "(hook_z SAEs over attention heads are not supported)", fix="use an SAE on a residual, attn or mlp output")
    if arch == "topk":
        k = _int(cfg, "k", where)
        if k > d_sae:
            raise StoreError(f"{where}: field 'k' is {k}, larger than d_sae={d_sae}", fix=_FIX)
        out["k"] = k
        out["rescale_acts_by_decoder_norm"] = field(cfg, "rescale_acts_by_decoder_norm", bool, where, _FIX,
                                                    default=False)
    meta = field(cfg, "metadata", (dict, type(None)), where, _FIX, default=None) or {}
    out["hook_name"] = field(meta, "hook_name", (str, type(None)), f"{where} metadata", _FIX, default=None)
    out["point"] = field(meta, "probekit_point", (str, type(None)), f"{where} metadata", _FIX, default=None)
    out["position"] = field(meta, "probekit_position", (str, type(None)), f"{where} metadata", _FIX, default=None)
    out["meta"] = field(meta, "probekit_meta", dict, f"{where} metadata", _FIX, default={})
    return out


def _shapes(c: dict) -> dict[str, tuple]:
    s = {"W_enc": (c["d_in"], c["d_sae"]), "b_enc": (c["d_sae"],), "W_dec": (c["d_sae"], c["d_in"]),
         "b_dec": (c["d_in"],)}
    if c["architecture"] == "jumprelu":
        s["threshold"] = (c["d_sae"],)
    return s


def read_sae(directory: str | os.PathLike, point: str | None = None, position: str | None = None,
             dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The arguments of :class:`~probekit.sae.SAE` read from an SAE directory in sae-lens's format (see the module
    docstring); every field and tensor checked. :func:`probekit.sae.load_sae` builds the SAE from them.

    ``point`` / ``position`` say where it reads in a probekit model (default: what the file records,
    or the point its TransformerLens ``hook_name`` translates to). ``dtype``: cast the weights
    (default: as stored).
    """
    d = Path(directory)
    if (d / SPARSIFY_WEIGHTS).exists() and not (d / WEIGHTS).exists():
        return _load_sparsify(d, point, position, dtype)
    raw_cfg = read_config(d)
    where = f"SAE config {d / CFG}"
    c = _checked(raw_cfg, where)
    meta, tensors = read_safetensors(d / WEIGHTS, "SAE weights", _FIX)
    wwhere = f"SAE weights {d / WEIGHTS}"
    want = _shapes(c)
    extra = sorted(set(tensors) - set(want))
    missing = sorted(set(want) - set(tensors))
    if missing or extra:
        what = "; ".join(x for x in (f"missing {missing}" if missing else "", f"unexpected {extra}" if extra else "") if x)
        raise StoreError(f"{wwhere}: the tensors do not match a {c['architecture']} SAE ({what})", fix=_FIX)
    for name, shape in want.items():
        check_tensor(tensors[name], name, wwhere, _FIX, shape=shape)
    if _KEY in meta:  # written by probekit: the content must be what was saved
        check_checksum(meta[_KEY], raw_cfg, tensors, f"SAE directory {d}", _FIX)
    if point is not None and not isinstance(point, str):
        raise InputError(f"point must be a hook-point name, got {plain(point)!r}", fix='e.g. point="lm.3.resid"')
    t = {k: (v.to(dtype) if dtype is not None else v) for k, v in tensors.items()}
    return dict(W_enc=t["W_enc"], b_enc=t["b_enc"], W_dec=t["W_dec"], b_dec=t["b_dec"], architecture=c["architecture"],
                k=c.get("k"), threshold=t.get("threshold"), apply_b_dec_to_input=c["apply_b_dec_to_input"],
                rescale_acts_by_decoder_norm=c.get("rescale_acts_by_decoder_norm", False),
                point=point or c["point"] or point_from_hook(c["hook_name"]), position=position or c["position"],
                meta={**c["meta"], **({"hook_name": c["hook_name"]} if c["hook_name"] and c["point"] is None else {})})


def _load_sparsify(d: Path, point: str | None, position: str | None, dtype: torch.dtype | None) -> dict[str, Any]:
    """An eai-sparsify SparseCoder directory as the same TopK SAE (see the module docstring), every field checked."""
    p = d / CFG
    try:
        cfg = loads_json(p.read_bytes(), f"SAE config {p}", fix=_FIX)
    except FileNotFoundError:
        raise StoreError(f"{d} has {SPARSIFY_WEIGHTS} but no {CFG}: not an eai-sparsify SAE directory", fix=_FIX) from None
    where = f"eai-sparsify SAE config {p}"
    if not isinstance(cfg, dict):
        raise StoreError(f"{where} is a JSON {type(cfg).__name__}, not an object", fix=_FIX)
    act = field(cfg, "activation", str, where, _FIX, default="topk")
    for key, bad in (("activation", act != "topk"), ("transcode", field(cfg, "transcode", bool, where, _FIX, default=False)),
                     ("skip_connection", field(cfg, "skip_connection", bool, where, _FIX, default=False))):
        if bad:
            raise StoreError(f"{where}: field {key!r} is {cfg[key]!r}; probekit reads sparsify's plain TopK SAEs",
                             fix="use a TopK SAE without a skip connection (not a transcoder, not groupmax)")
    d_in, k = _int(cfg, "d_in", where), _int(cfg, "k", where)
    d_sae = field(cfg, "num_latents", int, where, _FIX, default=0) or d_in * _int(cfg, "expansion_factor", where)
    meta, t = read_safetensors(d / SPARSIFY_WEIGHTS, "SAE weights", _FIX)
    wwhere = f"SAE weights {d / SPARSIFY_WEIGHTS}"
    want = {"encoder.weight": (d_sae, d_in), "encoder.bias": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    if set(t) != set(want):
        raise StoreError(f"{wwhere}: tensors {sorted(t)}, expected {sorted(want)}", fix=_FIX)
    for name, shape in want.items():
        check_tensor(t[name], name, wwhere, _FIX, shape=shape)
    if k > d_sae:
        raise StoreError(f"{where}: field 'k' is {k}, larger than {d_sae} latents", fix=_FIX)
    cast = (lambda v: v.to(dtype)) if dtype is not None else (lambda v: v)  # noqa: E731
    return dict(W_enc=cast(t["encoder.weight"]).T.contiguous(), b_enc=cast(t["encoder.bias"]), W_dec=cast(t["W_dec"]),
                b_dec=cast(t["b_dec"]), architecture="topk", k=k, point=point or point_from_hook(d.name),
                position=position, meta={"source": "eai-sparsify", "hookpoint": d.name})


def write_sae(cfg: dict, tensors: dict[str, torch.Tensor], directory: str | os.PathLike) -> Path:
    """Write an SAE's ``cfg`` (sae-lens 6.x's ``cfg.json``) and weights as ``directory/cfg.json`` +
    ``directory/sae_weights.safetensors`` (loadable by ``sae_lens.SAE.load_from_disk``), atomically, with
    probekit's checksum; returns the directory. :func:`probekit.sae.save_sae` calls it."""
    from safetensors.torch import save

    try:
        cfg = json.loads(json.dumps(cfg, allow_nan=False))  # exactly what a reader parses
    except (TypeError, ValueError) as exc:
        raise InputError(f"the SAE's metadata cannot be written as JSON ({exc})",
                         fix="keep sae.meta to strings, numbers, lists and dicts") from None
    tensors = {k: v.cpu() for k, v in tensors.items()}
    data = save(tensors, metadata={"format": "pt", _KEY: checksum(cfg, tensors)})
    text = json.dumps(cfg, indent=1, sort_keys=False)
    d = Path(directory).expanduser()
    with atomic_dir(d, "SAE directory", needed=len(data) + len(text)) as tmp:
        (tmp / WEIGHTS).write_bytes(data)
        (tmp / CFG).write_text(text)
    return d
