"""`load(path_or_id)` and `wrap(hf_model, processor)`: the way into probekit."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from ..errors import InputError, UnsupportedModelError
from .adapter import Model
from ..files import check_manifest
from .families import check_family, family_for
from .processors import load_processor

__all__ = ["load", "wrap"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    if dtype not in _DTYPES:
        raise InputError(f"dtype {dtype!r} is not known", fix=f"use a torch.dtype or one of {sorted(_DTYPES)} or 'auto'")
    return _DTYPES[dtype]


def check_device(device: str | torch.device | None) -> None:
    """Raise InputError now for a device string torch cannot parse or this machine does not have."""
    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise InputError(f"device {device!r} is not a torch device ({exc})", fix="use e.g. 'cpu', 'cuda' or 'cuda:0'") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0 or (dev.index is not None and dev.index >= count):
            raise InputError(f"device {device!r} is not available (this machine has {count} CUDA device(s))",
                             fix="use device='cpu', or a CUDA index below the device count")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r} is not available", fix="use device='cpu'")


def rank_device(device: str | torch.device | None) -> str | torch.device | None:
    """Plain ``"cuda"`` under torchrun means this process's GPU, ``cuda:LOCAL_RANK``, not GPU 0 for every rank."""
    local = os.environ.get("LOCAL_RANK")
    if device == "cuda" and local is not None and local.isdigit():
        return f"cuda:{int(local)}"
    return device


@contextlib.contextmanager
def _quiet_bars() -> Iterator[None]:
    """transformers' "Loading weights" bar, off in logs (see probekit._progress), restored after."""
    from transformers.utils import logging as hf_logging

    from .._progress import interactive

    was = hf_logging.is_progress_bar_enabled()
    if was and not interactive():
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _offline() -> bool:
    import huggingface_hub.constants as hub

    flag = os.environ.get("HF_HUB_OFFLINE", os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return hub.HF_HUB_OFFLINE or flag.strip().lower() in ("1", "true", "yes", "on")


def _check_offline_hub_id(repo_id: str) -> None:
    """Offline, a hub id that is not in the local cache fails now (not after retries inside transformers)."""
    if not _offline():
        return
    import huggingface_hub.constants as hub
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except ValueError:  # not even a valid repo id
        cached = None
    if not isinstance(cached, str):
        raise InputError(
            f"{repo_id!r} is a hub id, offline mode is on (HF_HUB_OFFLINE=1) and it is not in the local "
            f"Hugging Face cache ({hub.HF_HUB_CACHE})",
            fix=f"download it while online (hf download {repo_id}), pass a local checkpoint directory, "
                "or unset HF_HUB_OFFLINE")


def wrap(hf_model: nn.Module, processor: Any, family: str | None = None) -> Model:
    """Wrap an already-loaded Hugging Face VLM and its processor.

    Args:
        hf_model: e.g. a ``LlavaForConditionalGeneration``.
        processor: its ``AutoProcessor`` (builds inputs from images and prompts).
        family: force a family (``"llava"``, ``"qwen2_vl"``, ``"idefics3"``, ``"mllama"``, ``"blip2"``,
            ``"paligemma"``, ``"generic"``); detected from ``config.model_type`` when None.

    Example:
        >>> import probekit, tempfile, transformers
        >>> path = probekit.tiny.build("llava", tempfile.mkdtemp() + "/m")
        >>> hf = transformers.AutoModelForImageTextToText.from_pretrained(path)
        >>> proc = transformers.AutoProcessor.from_pretrained(path)
        >>> probekit.wrap(hf, proc).family
        'llava'
    """
    if isinstance(hf_model, Model):
        return hf_model
    if not isinstance(hf_model, nn.Module):
        raise UnsupportedModelError(
            f"wrap() needs a torch nn.Module (a Hugging Face model), got {type(hf_model).__name__}",
            fix="load the model with transformers first, or call probekit.load(path)",
        )
    if processor is None:
        raise InputError("wrap() needs the model's processor", fix="pass transformers.AutoProcessor.from_pretrained(<same path>)")
    fam = family_for(hf_model, family)
    layout = fam.layout(hf_model, processor)
    hf_model.eval()
    return Model(hf_model, processor, layout, fam)


def _model_class(config: Any) -> Any:
    import transformers

    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    return transformers.AutoModelForImageTextToText


def load(
    path_or_id: str | os.PathLike,
    *,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = None,
    family: str | None = None,
    device_map: str | dict | None = None,
    **from_pretrained_kwargs: Any,
) -> Model:
    """Load a VLM checkpoint (a local directory or a hub id) and its processor.

    The same code path serves ``llava-hf/llava-1.5-7b-hf`` and the tiny offline checkpoints of
    :mod:`probekit.tiny`.

    Args:
        path_or_id: local directory or hub id.
        device: where to put the model (ignored when ``device_map`` is given).
        dtype: ``torch.bfloat16``, ``"bf16"``, ``"auto"`` (the checkpoint's) or None (float32).
        family: force a family (see :func:`wrap`).
        device_map: passed to ``from_pretrained`` (e.g. ``"auto"`` to spread a 7B model over GPUs).

    Example:
        >>> import probekit, tempfile
        >>> model = probekit.load(probekit.tiny.build("llava", tempfile.mkdtemp() + "/m"))
        >>> model.family, model.n_layers
        ('llava', 2)
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise InputError(f"load() takes a path or hub id, got {type(path_or_id).__name__}",
                         fix="for an already-loaded model use probekit.wrap(model, processor)")
    dt = _dtype(dtype)
    device = rank_device(device)
    if device_map is None:
        check_device(device)
    import transformers  # after the cheap checks: importing it takes seconds

    src = str(path_or_id)
    local = Path(src).expanduser()
    looks_local = src.startswith((".", "/", "~")) or local.exists() or src.count("/") > 1
    if looks_local and not (local / "config.json").is_file():
        raise InputError(f"{src!r} is not a checkpoint directory (no config.json there)",
                         fix="pass the directory written by save_pretrained / probekit.tiny.build, or a hub id")
    if looks_local:
        src = str(local)
        # a checkpoint probekit wrote (an organism, a study cache) is checked against its manifest first
        check_manifest(local, "checkpoint", cls=InputError,
                       fix="build or copy the checkpoint again (a file in it changed after probekit wrote it)")
    else:
        _check_offline_hub_id(src)
    try:
        config = transformers.AutoConfig.from_pretrained(src)
    except (OSError, ValueError) as exc:
        raise InputError(f"could not read the config of {src!r}: {exc}",
                         fix="check the path or hub id; offline, only local directories and cached ids work") from exc
    check_family(str(getattr(config, "model_type", "")), family)  # before the weights are read
    kwargs = dict(from_pretrained_kwargs)
    if dt is not None:
        kwargs["dtype"] = dt
    if device_map is not None:
        kwargs["device_map"] = device_map
    from safetensors import SafetensorError

    try:
        with _quiet_bars():
            hf = _model_class(config).from_pretrained(src, **kwargs)
        processor = load_processor(src)
    except SafetensorError as exc:  # a truncated or overwritten weights file
        raise InputError(f"the weights of {src!r} are damaged: {exc}",
                         fix="copy or download the checkpoint again (the .safetensors files are incomplete)") from exc
    except (OSError, ValueError, KeyError, ImportError) as exc:
        raise UnsupportedModelError(f"transformers could not load {src!r}: {exc}",
                                    fix="check that the checkpoint is an image-text model supported by transformers") from exc
    if device_map is None and device is not None:
        hf = hf.to(device)
    return wrap(hf, processor, family=family)
