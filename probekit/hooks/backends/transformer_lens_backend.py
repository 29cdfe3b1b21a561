"""Record hook points through TransformerLens ``TransformerBridge`` (4.x, and 3.9 as sae-lens 6.x pins it), as a cross-check.

How the bridge is built, and why this way (TransformerLens 4.3.0; 3.9.0 builds it the same way):

* ``TransformerBridge.boot_transformers(name, hf_model=...)`` always resolves a tokenizer
  (``AutoTokenizer.from_pretrained(name)``: the hub) and a processor for multimodal
  models (``load_modality_processor``: the hub, and on failure ``_ensure_torchvision``,
  which runs ``pip install torchvision`` -- that would replace our pinned torch). We do
  not use it. We call ``sources._bridge_builder.build_bridge_from_module(model,
  architecture, hf_config=...)`` instead: no tokenizer, no processor, no file or network
  access at all.
* ``build_bridge_from_module`` modifies the model it is given in place (bridge components
  replace submodules; ``prepare_model`` switches attention to eager). So we give it a
  *structural copy*: ``copy.deepcopy`` with every parameter and buffer pre-seeded in the
  memo, i.e. a new module tree sharing the very same weight tensors (no weight memory
  is copied). The user's model is never touched. After building we put the copy's
  attention implementation back to the original's, so modules the bridge does not
  re-implement (vision tower, projector) compute exactly as in the plain forward.
* Weight processing (fold LN, center writing weights/unembed, fold value biases) only
  happens in ``enable_compatibility_mode()`` / ``process_weights()``; we never call them,
  so the bridge runs the raw HF weights.
* ``run_with_cache`` adds ``output_attentions=True`` unless told otherwise; we pass
  ``output_attentions=False`` so the forward is the user's forward.

Numerics: the bridge *re-implements* decoder self-attention
(``PositionEmbeddingsAttentionBridge.forward``: matmul, mask, float32 softmax, matmul, the
same ops as HF's ``eager_attention_forward``). Results are bit-identical to a plain
forward of a model loaded with ``attn_implementation="eager"`` on unpadded batches; with
left padding, pad positions differ (fully masked rows) and real positions of padded rows
agree to ~1e-8; against ``sdpa`` they agree to ~1e-8. Everything upstream of the first
decoder attention (vision tower, projector, merged embeddings = ``lm.embed``) is exact.

Point names map to TL hook names through the module path: the target module in the
bridged copy is a bridge component whose ``hook_out`` / ``hook_in`` HookPoint carries the
TL name, e.g. for LLaVA ``model.language_model.layers.3`` -> ``blocks.3.hook_out``
(alias ``blocks.3.hook_resid_post``), input -> ``blocks.3.hook_in`` (alias
``hook_resid_pre``), ``...layers.3.self_attn`` -> ``blocks.3.attn.hook_out``,
``...layers.3.mlp`` -> ``blocks.3.mlp.hook_out``, ``model.language_model.norm`` ->
``ln_final.hook_out``, ``lm_head`` -> ``unembed.hook_out``,
``model.multi_modal_projector`` -> ``vision_projector.hook_out``,
``model.vision_tower.encoder.layers.3`` -> ``vision_encoder.encoder_layers.3.hook_out``.
"""

from __future__ import annotations

import copy
import importlib
import weakref
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping

import torch

from probekit.errors import BackendError

__all__ = [
    "record",
    "record_many",
    "supported",
    "supported_architectures",
    "tl_hook_names",
    "build_bridge",
    "clear_cache",
    "no_auto_install",
]

def __getattr__(name: str) -> Any:
    # POINT_HOOKS, a fixed point -> bridge-hook table, was never read (tl_hook_names derives the
    # names from the bridge itself); kept importable for one release.
    if name == "POINT_HOOKS":
        import warnings

        warnings.warn("transformer_lens_backend.POINT_HOOKS is deprecated and unused; use tl_hook_names(bridge, targets)",
                      DeprecationWarning, stacklevel=2)
        return {"lm.embed": "blocks.0.hook_in", "lm.{i}.resid": "blocks.{i}.hook_out",
                "lm.{i}.attn": "blocks.{i}.attn.hook_out", "lm.{i}.mlp": "blocks.{i}.mlp.hook_out",
                "lm.norm": "ln_final.hook_out", "logits": "unembed.hook_out",
                "projector": "vision_projector.hook_out", "vision.{i}.resid": "vision_encoder.encoder_layers.{i}.hook_out"}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_HELPERS = "transformer_lens.model_bridge.sources.transformers.helpers"
_SOURCE = "transformer_lens.model_bridge.sources.transformers.source"


def _import(name: str):
    try:
        return importlib.import_module(name)
    except Exception as exc:
        raise BackendError(
            f"the transformer-lens backend cannot import {name} ({type(exc).__name__}: {exc})",
            fix="install transformer-lens 3.9 or 4.x (4.3.0 and 3.9.0 tested), or use backend='torch'",
        ) from exc


def _refuse_torchvision_install() -> bool:
    """Stand-in for TransformerLens' ``_ensure_torchvision``: never installs anything."""
    try:
        import torchvision  # noqa: F401
    except Exception:
        return False  # what the original returns when its install fails
    return True


def _skip_processor(*args: Any, **kwargs: Any) -> None:
    """Stand-in for ``load_modality_processor``: no processor, no hub lookup."""
    return None


_refuse_torchvision_install._probekit_guard = True  # type: ignore[attr-defined]
_skip_processor._probekit_guard = True  # type: ignore[attr-defined]


def _optional(name: str):
    """A TransformerLens module that only some releases have (None when this one lacks it)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return None
    except Exception as exc:
        raise BackendError(
            f"the transformer-lens backend cannot import {name} ({type(exc).__name__}: {exc})",
            fix="install transformer-lens 3.9 or 4.x (4.3.0 and 3.9.0 tested), or use backend='torch'",
        ) from exc


@contextmanager
def no_auto_install() -> Iterator[None]:
    """Disable TransformerLens' auto-install and processor-download paths; restore on exit.

    TransformerLens 4.x (4.3.0, the only ``subprocess``/pip call in the package):
    ``sources/transformers/helpers.py::_ensure_torchvision`` (runs
    ``uv pip install torchvision`` or ``python -m pip install torchvision`` when
    torchvision does not import) -> returns False instead. Also
    ``load_modality_processor`` in ``helpers`` and in ``source`` (imported by name there)
    -> no-op, since it calls ``AutoProcessor.from_pretrained`` (hub) and then the
    installer.

    TransformerLens 3.x (3.9.0, what sae-lens 6.x pins): ``sources/transformers`` is one module
    whose only install path sits inside ``boot`` (``TransformerBridge.boot_transformers``), which
    this backend never calls (it builds the bridge with ``build_bridge_from_module``); there is
    nothing to patch, and the test of this backend checks that no subprocess starts.
    """
    helpers = _optional(_HELPERS)
    source = _optional(_SOURCE)
    saved = []
    for mod, name, new in ((helpers, "_ensure_torchvision", _refuse_torchvision_install),
                           (helpers, "load_modality_processor", _skip_processor),
                           (source, "load_modality_processor", _skip_processor)):
        if mod is not None and hasattr(mod, name):
            saved.append((mod, name, getattr(mod, name), new))
    for mod, name, _, new in saved:
        setattr(mod, name, new)
    try:
        yield
    finally:
        for mod, name, old, _ in saved:
            setattr(mod, name, old)


def supported_architectures() -> frozenset[str]:
    """HF class names TransformerLens 4.x has an architecture adapter for."""
    with no_auto_install():
        factory = _import("transformer_lens.factories.architecture_adapter_factory")
    return frozenset(factory.SUPPORTED_ARCHITECTURES)


def _architecture(hf_model: torch.nn.Module) -> str | None:
    known = supported_architectures()
    name = type(hf_model).__name__
    if name in known:
        return name
    for arch in getattr(getattr(hf_model, "config", None), "architectures", None) or []:
        if arch in known:
            return arch
    return None


def supported(hf_model: torch.nn.Module) -> bool:
    """True when TransformerBridge has an adapter for this model's class."""
    try:
        return _architecture(hf_model) is not None
    except BackendError:
        return False


def _structural_copy(hf_model: torch.nn.Module) -> torch.nn.Module:
    """A new module tree that shares every parameter and buffer tensor with ``hf_model``."""
    memo: dict[int, Any] = {}
    for tensor in list(hf_model.parameters()) + list(hf_model.buffers()):
        memo[id(tensor)] = tensor
    return copy.deepcopy(hf_model, memo)


def build_bridge(hf_model: torch.nn.Module):
    """A ``TransformerBridge`` over a weight-sharing copy of ``hf_model`` (offline).

    Raises BackendError when TransformerLens has no adapter for the model.
    """
    arch = _architecture(hf_model)
    if arch is None:
        raise BackendError(
            f"TransformerLens {_tl_version()} has no TransformerBridge adapter for "
            f"{type(hf_model).__name__}",
            fix="use backend='torch' or 'nnsight' for this model (see "
            "transformer_lens.factories.architecture_adapter_factory.SUPPORTED_ARCHITECTURES)",
        )
    with no_auto_install():
        builder = _import("transformer_lens.model_bridge.sources._bridge_builder")
        twin = _structural_copy(hf_model)
        attn_impl = getattr(getattr(hf_model, "config", None), "_attn_implementation", None)
        try:
            bridge = builder.build_bridge_from_module(
                twin, arch, hf_config=copy.deepcopy(hf_model.config), model_name=arch
            )
        except Exception as exc:
            raise BackendError(
                f"TransformerBridge could not wrap {type(hf_model).__name__} "
                f"({type(exc).__name__}: {exc})",
                fix="use backend='torch' or 'nnsight' for this model",
            ) from exc
        # prepare_model forced eager attention on the copy; modules the bridge does not
        # re-implement must compute as in the user's model.
        if attn_impl is not None and hasattr(twin, "set_attn_implementation"):
            try:
                twin.set_attn_implementation(attn_impl)
            except Exception:
                pass
    return bridge  # TransformerBridge copies the model's train/eval mode itself


def _tl_version() -> str:
    try:
        from importlib.metadata import version

        return version("transformer-lens")
    except Exception:
        return "?"


def _component_at(bridge, path: str):
    """The bridge component standing where ``path`` was in the HF model, or None."""
    base = _import("transformer_lens.model_bridge.generalized_components.base")
    module: torch.nn.Module = bridge.original_model
    for part in path.split(".") if path else []:
        while part not in module._modules and isinstance(module, base.GeneralizedComponent):
            inner = module._modules.get("_original_component")
            if inner is None:
                return None
            module = inner
        child = module._modules.get(part)
        if child is None:
            return None
        module = child
    return module if isinstance(module, base.GeneralizedComponent) else None


def tl_hook_names(bridge_or_model, targets: Mapping[str, tuple[str, str]]) -> dict[str, str]:
    """point -> TL hook name (``...hook_out`` for mode "output", ``...hook_in`` for "input").

    ``bridge_or_model`` is a bridge from :func:`build_bridge` or a HF model (a bridge
    is built for it). Raises BackendError for a module the bridge does not wrap.
    """
    bridge = bridge_or_model
    if not hasattr(bridge, "run_with_cache"):
        bridge = build_bridge(bridge_or_model)
    names: dict[str, str] = {}
    for point, (path, mode) in targets.items():
        if mode not in ("output", "input"):
            raise BackendError(
                f"point {point!r}: mode {mode!r} is neither 'output' nor 'input'",
                fix="use mode 'output' or 'input'",
            )
        comp = _component_at(bridge, path)
        hook = getattr(comp, "hook_out" if mode == "output" else "hook_in", None)
        if hook is None or not getattr(hook, "name", None):
            raise BackendError(
                f"point {point!r}: TransformerBridge has no hook point for module {path!r}",
                fix="record this point with backend='torch' or 'nnsight'; the bridge hooks "
                "only the modules its architecture adapter maps (blocks, attn, mlp, norms, "
                "embed, unembed, vision encoder layers, projector)",
            )
        names[point] = hook.name
    return names


def _run(bridge, inputs: Mapping[str, torch.Tensor], hook_names: Mapping[str, str]):
    kwargs = dict(inputs)
    if "input_ids" not in kwargs:
        raise BackendError(
            "the transformer-lens backend needs 'input_ids' in the inputs",
            fix="pass the processor output (with input_ids), or use backend='torch'",
        )
    input_ids = kwargs.pop("input_ids")
    kwargs.setdefault("output_attentions", False)
    wanted = sorted(set(hook_names.values()))
    with torch.inference_mode():
        _, cache = bridge.run_with_cache(
            input_ids, names_filter=wanted, return_cache_object=False, **kwargs
        )
    out: dict[str, torch.Tensor] = {}
    for point, name in hook_names.items():
        if cache.get(name) is None:
            raise BackendError(
                f"point {point!r}: TL hook {name!r} did not fire during the forward pass",
                fix="record this point with backend='torch' or 'nnsight'",
            )
        out[point] = cache[name]
    return out


# model -> (fingerprint, bridge): building costs ~60 ms on a tiny model, more on a real one.
_BRIDGES: "weakref.WeakKeyDictionary[torch.nn.Module, tuple[tuple, Any]]" = weakref.WeakKeyDictionary()


def _fingerprint(hf_model: torch.nn.Module) -> tuple:
    """What a cached bridge copied from the model: tensors (by identity), hooks, modes."""
    return (
        getattr(getattr(hf_model, "config", None), "_attn_implementation", None),
        tuple((n, id(m), m.training, tuple(m._forward_hooks), tuple(m._forward_pre_hooks))
              for n, m in hf_model.named_modules()),
        tuple((n, id(t)) for n, t in hf_model.named_parameters(remove_duplicate=False)),
        tuple((n, id(t)) for n, t in hf_model.named_buffers(remove_duplicate=False)),
    )


def _cached_bridge(hf_model: torch.nn.Module):
    """The bridge for ``hf_model``, rebuilt when the model's structure, tensors or hooks
    changed since it was built (weights edited in place are shared, so always current)."""
    key = _fingerprint(hf_model)
    hit = _BRIDGES.get(hf_model)
    if hit is not None and hit[0] == key:
        return hit[1]
    bridge = build_bridge(hf_model)
    _BRIDGES[hf_model] = (key, bridge)
    return bridge


def clear_cache() -> None:
    """Forget every cached bridge."""
    _BRIDGES.clear()


def record(
    hf_model: torch.nn.Module,
    inputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, tuple[str, str]],
) -> dict[str, torch.Tensor]:
    """Run ``hf_model(**inputs)`` through a TransformerBridge; return point -> tensor.

    The bridge wraps a weight-sharing copy, so ``hf_model`` itself is never modified.
    The bridge is cached per model (weakly) and rebuilt when the model's modules,
    parameter/buffer objects, hooks, train/eval mode or attention implementation change.
    """
    return record_many(hf_model, [inputs], targets)[0]


def record_many(
    hf_model: torch.nn.Module,
    batches: Iterable[Mapping[str, torch.Tensor]],
    targets: Mapping[str, tuple[str, str]],
) -> list[dict[str, torch.Tensor]]:
    """Like :func:`record` for several batches."""
    bridge = _cached_bridge(hf_model)
    hook_names = tl_hook_names(bridge, targets)
    try:
        return [_run(bridge, batch, hook_names) for batch in batches]
    finally:
        bridge.reset_hooks()
