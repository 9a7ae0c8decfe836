"""Explanations for ViTs with Inter-Layer Adapters: attention rollout, Grad-CAM, contrast maps, overlays."""

from .contrast import LogitDifference, contrast_cam
from .explanation import EXPLAINERS, Explanation, Method, explain, explain_contrast, explain_gradcam, explain_rollout
from .gradcam import CamResult, ClassScore, GridProbe, grad_cam, grid_probe
from .mask import attribution_outside_mask, leaf_mask, otsu_threshold
from .overlay import heatmap_to_rgb, overlay
from .recorder import AttentionRecorder, non_patch_tokens
from .rollout import RolloutResult, RolloutStage, attention_rollout, rollout_stages

__all__ = [
    "LogitDifference",
    "contrast_cam",
    "EXPLAINERS",
    "Explanation",
    "Method",
    "explain",
    "explain_contrast",
    "explain_gradcam",
    "explain_rollout",
    "CamResult",
    "ClassScore",
    "GridProbe",
    "grad_cam",
    "grid_probe",
    "attribution_outside_mask",
    "leaf_mask",
    "otsu_threshold",
    "heatmap_to_rgb",
    "overlay",
    "AttentionRecorder",
    "non_patch_tokens",
    "RolloutResult",
    "RolloutStage",
    "attention_rollout",
    "rollout_stages",
]
