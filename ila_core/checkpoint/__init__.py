"""Adapter checkpoints: adapter + head tensors as safetensors plus a JSON manifest, published atomically.

A checkpoint is two files side by side: ``<name>.safetensors`` (what :func:`adapter_state_dict` returns: the
trainable tensors and the adapters' BN statistics) and ``<name>.json`` (the manifest: backbone name, image
size, weight-file hash and a fingerprint of the frozen backbone tensors, the method config, class names,
metrics, creation time, the sha256 of the tensor file and the parent version).

Publishing writes each file to a temp file in the same directory, fsyncs it, ``os.replace``-s it into place
and fsyncs the directory; the manifest goes last, so a manifest always describes a complete tensor file
(RELIABILITY fact 7). A kill can leave ``*.tmp`` files behind: :func:`sweep_temp_files` removes them.

Loading never calls ``torch.load``. Validation runs in a fixed order and stops at the first problem with a
:class:`CheckpointError` naming it: tensor file missing / empty / not safetensors, manifest missing or
unparseable, sha256 mismatch (FLT-16), backbone mismatch (FLT-15), unexpected / missing keys and shapes
(FLT-15), non-finite values (FLT-14).
"""

from __future__ import annotations

from .build import backbone_fingerprint, backbone_identity, build_reproducible, reinit_trainable
from .format import FORMAT, RANDOM_INIT_SEED, CheckpointError, CheckpointInfo, manifest_path_for
from .load import (
    check_backbone,
    check_state,
    load_built,
    load_into,
    load_model,
    manifest_backbone,
    read_manifest,
    verify_files,
)
from .save import save_checkpoint, sweep_temp_files

__all__ = [
    "CheckpointError",
    "CheckpointInfo",
    "FORMAT",
    "RANDOM_INIT_SEED",
    "build_reproducible",
    "backbone_fingerprint",
    "backbone_identity",
    "manifest_path_for",
    "save_checkpoint",
    "sweep_temp_files",
    "read_manifest",
    "manifest_backbone",
    "verify_files",
    "check_backbone",
    "check_state",
    "load_into",
    "load_model",
    "load_built",
    "reinit_trainable",
]
