"""Image transforms of the paper's "weak augmentation" recipe, with mean/std from timm's data config.

train: square resize to ``int(ratio * S)`` (bicubic), random ``S`` crop, horizontal flip, normalise.
test: the same square resize, centre ``S`` crop, normalise (ILA_SPEC 3). The feature cache uses the test
transform of the image and of its mirror as its two fixed views, and may add fixed random crops (view ids from 2):
the train transform's crop and flip drawn once per view id, so a cached run still sees the paper's augmentation
at the price of one prefix pass per view rather than one per step.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import timm.data
from PIL import Image, ImageOps
from torch import nn
from torchvision import transforms as T

from .config import MAX_CROP_VIEWS

__all__ = ["Preprocess", "preprocess_for", "train_transform", "eval_transform", "view_transform", "train_views",
           "VIEWS", "MAX_CROP_VIEWS"]

VIEWS = ("centre", "mirror")  # the feature cache's fixed views: view id = index; ids from len(VIEWS) are crops


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
    """The test transform of the image (view 0), of its mirror image (view 1), or fixed random crop ``view``.

    A crop view is the train transform with its crop offset and flip drawn once from ``view`` (the same for every
    image, so a cache key of image and view id names the pixels).
    """
    if view not in range(len(VIEWS) + MAX_CROP_VIEWS):
        raise ValueError(f"view must be one of 0..{len(VIEWS) + MAX_CROP_VIEWS - 1}, got {view}")
    base = eval_transform(p)
    if view == 0:
        return base
    if view == 1:
        return T.Compose([T.Lambda(_mirror), *base.transforms])
    rng = random.Random(f"crop-view-{view}")  # str seeds hash the same in every process
    room = p.resize - p.image_size
    top, left, flip = rng.randint(0, room), rng.randint(0, room), rng.random() < 0.5
    steps = [_resize(p), T.Lambda(_Crop(left, top, p.image_size))]
    if flip:
        steps.append(T.Lambda(_mirror))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(p.mean, p.std)])


def train_views(hflip: bool, crop_views: int = 0) -> tuple[int, ...]:
    """View ids a cached run trains on: centre, mirror (with ``hflip``), then ``crop_views`` fixed random crops."""
    fixed = (0, 1) if hflip else (0,)
    return fixed + tuple(range(len(VIEWS), len(VIEWS) + crop_views))


@dataclass(frozen=True)
class _Crop:
    """A fixed ``size`` square crop at (left, top) (picklable, unlike a lambda)."""

    left: int
    top: int
    size: int

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.crop((self.left, self.top, self.left + self.size, self.top + self.size))


def _mirror(image: Image.Image) -> Image.Image:
    return ImageOps.mirror(image)
