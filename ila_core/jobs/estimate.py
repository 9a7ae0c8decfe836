"""How long the next retrain will take on this machine, from the pace an earlier job measured here.

Every trained version records its pace (:func:`ila_core.jobs.runner` writes ``extra.pace``): seconds per
optimiser step, seconds per image view put into the frozen-prefix feature cache, how many images it trained
on and what the cache could hold. The next job on the same backbone and image size costs about

- the cache fill: the image views not cached yet (images added since that job, every cached view of a
  training image, one of a holdout image; the extra views when the job asks for more crop views), at the
  measured seconds per view;
- the steps: the planned steps at the measured seconds per step (scaled by batch size), plus, when the
  training set outgrows the cache (:func:`ila_core.training.feature_cache.plan_residency`), the frozen blocks
  for the part of each batch the cache does not hold; the time budget (``minutes``) caps this part only;
- the rest of the run (the closed-form head over the training views, two holdout evaluations), scaled from
  the pace job's own by the number of images.

It is an estimate: a shared machine runs slower when another job takes a core. Without an earlier job on the
same backbone there is no pace to go by, and the estimate says so instead of guessing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..training.config import TrainConfig
from ..training.feature_cache import plan_residency
from ..training.transforms import train_views

__all__ = ["LONG_S", "Estimate", "Pace", "estimate_job", "latest_pace"]

LONG_S = 15 * 60  # past this, the estimate points at a GPU or torchrun
_BACKWARD = 3.0  # a training step's forward + backward, per image, relative to one forward


@dataclass(frozen=True)
class Pace:
    """What a finished job measured on this machine."""

    version_id: int
    job_id: int | None
    step_s: float  # seconds per optimiser step
    batch_size: int
    view_s: float | None  # seconds per image view computed into the feature cache (None: it computed none)
    train_images: int
    holdout_images: int
    views: int  # cached views per training image (2 with the mirror view, plus any crop views)
    entry_bytes: int | None
    capacity_bytes: int | None
    other_s: float | None = None  # the run's time outside the cache fill and the steps (head fit, evaluations)

    @classmethod
    def from_version(cls, version: dict[str, Any]) -> Pace | None:
        """The pace recorded in a version's manifest, or None (a probe, or a version from before paces)."""
        manifest = version.get("manifest") or {}
        pace = (manifest.get("extra") or {}).get("pace") or {}
        config = manifest.get("train_config") or {}
        steps, seconds = int(pace.get("steps") or 0), float(pace.get("train_seconds") or 0.0)
        if steps <= 0 or seconds <= 0:
            return None
        views, filled = int(pace.get("fill_views") or 0), float(pace.get("fill_seconds") or 0.0)
        return cls(
            version_id=int(version["id"]), job_id=(manifest.get("extra") or {}).get("job_id"), step_s=seconds / steps,
            batch_size=int(config.get("batch_size") or 1),
            view_s=filled / views if views > 0 and filled > 0 else None,
            train_images=int(pace.get("train_images") or 0), holdout_images=int(pace.get("holdout_images") or 0),
            views=len(train_views(config.get("hflip", True), int(config.get("crop_views") or 0))),
            entry_bytes=pace.get("entry_bytes"),
            capacity_bytes=pace.get("capacity_bytes"),
            other_s=max(0.0, float(pace["fit_seconds"]) - seconds - filled) if pace.get("fit_seconds") else None,
        )  # fmt: skip


def latest_pace(versions: list[dict[str, Any]], *, backbone: str, image_size: int) -> Pace | None:
    """The pace of the newest trained version on this backbone and image size (``versions`` newest first)."""
    for version in versions:
        entry = (version.get("manifest") or {}).get("backbone") or {}
        if entry.get("name") != backbone or int(entry.get("image_size") or 0) != int(image_size):
            continue
        pace = Pace.from_version(version)
        if pace is not None:
            return pace
    return None


@dataclass(frozen=True)
class Estimate:
    """The next job's time, by part, in seconds."""

    train_images: int
    holdout_images: int
    steps: int  # planned
    steps_in_budget: int  # what the time budget leaves room for
    budget_s: float | None
    fill_views: int
    fill_s: float
    train_s: float  # the planned steps, before the budget
    eval_s: float  # the rest: the closed-form head and the holdout evaluations
    held: int  # training images the cache will hold
    pace: Pace

    @property
    def budget_cut(self) -> bool:
        """The time budget will stop training before the planned steps."""
        return self.steps_in_budget < self.steps

    @property
    def total_s(self) -> float:
        """Fill, the steps that fit the budget, and the evaluations."""
        train = self.train_s if self.budget_s is None else min(self.train_s, self.budget_s)
        return self.fill_s + train + self.eval_s

    def _measured_by(self) -> str:
        return f"job {self.pace.job_id}" if self.pace.job_id is not None else f"version {self.pace.version_id}'s job"

    def text(self) -> str:
        """Markdown for the Train tab."""
        parts = [f"{self.steps:,} steps ≈ {_duration(self.train_s)}"]
        if self.fill_views:
            parts.insert(0, f"caching {self.fill_views:,} new image views ≈ {_duration(self.fill_s)}")
        parts.append(f"head fit and holdout ≈ {_duration(self.eval_s)}")
        lines = [f"**Next retrain ≈ {_duration(self.total_s)}** on this machine "
                 f"({self.train_images:,} training and {self.holdout_images:,} holdout images; "
                 f"{', '.join(parts)}; at the pace {self._measured_by()} measured here)."]  # fmt: skip
        if self.budget_cut:
            lines.append(f"The {_duration(self.budget_s or 0)} time budget stops training after about "
                         f"{self.steps_in_budget:,} of {self.steps:,} steps; accuracy may suffer.")  # fmt: skip
        if self.held < self.train_images:
            lines.append(f"The feature cache holds {self.held:,} of {self.train_images:,} training images; the rest "
                         "run the frozen blocks at every step.")  # fmt: skip
        if self.total_s > LONG_S or self.budget_cut or self.held < self.train_images:
            lines.append("A GPU is the way past this: `python -m ila_core train --data-dir DATA --device cuda`, or "
                         "`torchrun --nproc_per_node N -m ila_core train --data-dir DATA` across N GPUs.")  # fmt: skip
        return " ".join(lines)


def estimate_job(train_images: int, holdout_images: int, config: TrainConfig, pace: Pace) -> Estimate:
    """The next job's time on ``train_images`` / ``holdout_images`` with ``config``, at ``pace``."""
    batch = max(1, min(config.batch_size, train_images or 1))
    per_epoch = max(1, train_images // batch) if train_images >= batch else 1
    steps = int(config.steps or config.epochs * per_epoch)
    views = len(train_views(config.hflip, config.crop_views))
    view_s = pace.view_s if pace.view_s is not None else _forward_s(pace)
    held = train_images
    if pace.entry_bytes and pace.capacity_bytes:
        plan = plan_residency(int(pace.capacity_bytes), int(pace.entry_bytes), train_images, views, holdout_images)
        held = plan.train
    # The images of the pace job are cached (same backbone and size); only the ones added since need filling.
    new_train = max(0, min(train_images, held) - pace.train_images)
    new_holdout = max(0, holdout_images - pace.holdout_images)
    # More crop views than the pace job cached: its images need the extra ones too.
    fill_views = new_train * views + max(0, views - pace.views) * min(held, pace.train_images) + new_holdout
    uncached = 1.0 - held / train_images if train_images else 0.0
    step_s = pace.step_s * batch / max(1, pace.batch_size) + uncached * batch * view_s
    train_s = steps * step_s
    budget_s = None if config.minutes is None else config.minutes * 60.0
    in_budget = steps if budget_s is None else min(steps, int(budget_s // step_s) if step_s > 0 else steps)
    if pace.other_s is not None and pace.train_images + pace.holdout_images > 0:
        eval_s = pace.other_s * (train_images + holdout_images) / (pace.train_images + pace.holdout_images)
    else:  # two holdout passes, each image once through the trained part
        eval_s = 2 * holdout_images * pace.step_s / max(1, pace.batch_size) / _BACKWARD
    return Estimate(train_images, holdout_images, steps, in_budget, budget_s, fill_views, fill_views * view_s,
                    train_s, eval_s, held, pace)  # fmt: skip


def _forward_s(pace: Pace) -> float:
    """Seconds per image view when the pace job computed none (its cache was warm): a training step per image
    over the backward factor is a forward through the trained part, a lower bound of the frozen prefix's cost."""
    return pace.step_s / max(1, pace.batch_size) / _BACKWARD


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{max(1, math.ceil(seconds))} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
