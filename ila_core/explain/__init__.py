"""Explanations for ViTs with Inter-Layer Adapters: attention rollout, Grad-CAM, contrast maps, overlays."""

from .contrast import LogitDifference, contrast_cam
from .explanation import EXPLAINERS, Explanation, Method, explain, explain_contrast, explain_gradcam, explain_rollout
from .gradcam import CamResult, ClassScore, GridProbe, grad_cam, grid_probe
from .mask import attribution_outside_mask, leaf_mask, otsu_threshold
from .modes import eval_mode
from .overlay import heatmap_to_rgb, overlay, overlay_in_window
from .recorder import AttentionRecorder, non_patch_tokens
from .rollout import RolloutResult, RolloutStage, attention_rollout, rollout_stages

__all__ = [
    "EXPLAINERS",
    "AttentionRecorder",
    "CamResult",
    "ClassScore",
    "Explanation",
    "GridProbe",
    "LogitDifference",
    "Method",
    "RolloutResult",
    "RolloutStage",
    "attention_rollout",
    "attribution_outside_mask",
    "contrast_cam",
    "eval_mode",
    "explain",
    "explain_contrast",
    "explain_gradcam",
    "explain_rollout",
    "grad_cam",
    "grid_probe",
    "heatmap_to_rgb",
    "leaf_mask",
    "non_patch_tokens",
    "otsu_threshold",
    "overlay",
    "overlay_in_window",
    "rollout_stages",
]
