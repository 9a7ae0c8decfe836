"""Image transforms of the paper's "weak augmentation" recipe, with mean/std from timm's data config.

train: square resize to ``int(ratio * S)`` (bicubic), random ``S`` crop, horizontal flip, normalise.
test: the same square resize, centre ``S`` crop, normalise (ILA_SPEC 3). The feature cache uses the test
transform of the image and of its mirror as its two fixed views.
"""

from __future__ import annotations

from dataclasses import dataclass

import timm.data
from PIL import Image, ImageOps
from torch import nn
from torchvision import transforms as T

__all__ = ["Preprocess", "preprocess_for", "train_transform", "eval_transform", "view_transform", "VIEWS"]

VIEWS = ("centre", "mirror")  # the feature cache's fixed views: view id = index


@dataclass(frozen=True)
class Preprocess:
    """Sizes and normalisation for one model."""

    image_size: int
    resize: int  # square side before cropping
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def signature(self) -> str:
        """Text that changes whenever the preprocessed pixels would (part of feature-cache keys)."""
        return f"S{self.image_size}R{self.resize}m{self.mean}s{self.std}bicubic"


def preprocess_for(model: nn.Module, image_size: int, resize_ratio: float = 1.34) -> Preprocess:
    """Normalisation from ``timm.data.resolve_model_data_config(model)``, sizes from the recipe."""
    cfg = timm.data.resolve_model_data_config(model)
    return Preprocess(
        image_size=image_size,
        resize=int(resize_ratio * image_size),
        mean=tuple(float(v) for v in cfg["mean"]),
        std=tuple(float(v) for v in cfg["std"]),
    )


def _resize(p: Preprocess) -> T.Resize:
    return T.Resize((p.resize, p.resize), interpolation=T.InterpolationMode.BICUBIC)


def train_transform(p: Preprocess, *, hflip: bool = True) -> T.Compose:
    """Square resize, random crop, optional horizontal flip, tensor, normalise."""
    steps = [_resize(p), T.RandomCrop(p.image_size)]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor(), T.Normalize(p.mean, p.std)])


def eval_transform(p: Preprocess) -> T.Compose:
    """Square resize, centre crop, tensor, normalise."""
    return T.Compose([_resize(p), T.CenterCrop(p.image_size), T.ToTensor(), T.Normalize(p.mean, p.std)])


def view_transform(p: Preprocess, view: int) -> T.Compose:
    """The test transform of the image (view 0) or of its mirror image (view 1)."""
    if view not in range(len(VIEWS)):
        raise ValueError(f"view must be one of 0..{len(VIEWS) - 1}, got {view}")
    base = eval_transform(p)
    if view == 0:
        return base
    return T.Compose([T.Lambda(_mirror), *base.transforms])


def _mirror(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)
