"""Why a model may be weak, in words: a tiny holdout, a cultivar with one training image or none held out."""

from __future__ import annotations

from pathlib import Path

from ila_core.training.dataset import Sample, TrainingSet
from ila_core.training.weakness import data_warnings
from ila_core.ui.jobs_view import job_card_html


def _set(train: list[int], holdout: list[int]) -> TrainingSet:
    def samples(labels: list[int]) -> list[Sample]:
        return [Sample(Path(f"{i}.png"), label, f"{i:064x}") for i, label in enumerate(labels)]

    return TrainingSet(["Birch", "Fenn", "Oak"], samples(train), samples(holdout))


def test_a_tiny_holdout_and_a_single_image_cultivar_are_named():
    """6 holdout images and one Oak training image: both are said, with the points one image is worth."""
    text = " | ".join(data_warnings(_set([0] * 10 + [1] * 10 + [2], [0, 0, 0, 1, 1, 1])))
    assert "holdout is tiny (6 images for 3 cultivars)" in text and "17 points" in text
    assert "only one training image of Oak" in text and "no holdout image of Oak" in text


def test_a_sound_snapshot_has_no_warnings():
    """Enough images everywhere: nothing to say."""
    assert data_warnings(_set([0, 1, 2] * 10, [0, 1, 2] * 8)) == ()


def test_the_job_card_says_why_a_model_may_be_weak():
    """The warnings recorded in the job's progress appear on the finished card as notes, not twice."""
    warning = "the holdout is tiny (6 images for 3 cultivars): one image moves top-1 by 17 points"
    job = {"id": 3, "status": "succeeded", "message": f"ila version 4: holdout top-1 0.833, served; {warning}",
           "progress": {"warnings": [warning]}}  # fmt: skip
    card = job_card_html(job)
    assert "Why this model may be weak" in card and card.count("holdout is tiny") == 1
