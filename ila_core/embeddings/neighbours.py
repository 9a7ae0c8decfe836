"""Nearest confirmed images and how unlike them a query is, from the stored frozen embeddings.

The index holds every confirmed (hard-labelled) image's ``[CLS ‖ mean patch]`` row with each half scaled to
unit length, so a dot product is the mean of the two cosine similarities. Search is one matrix-vector product
over all confirmed images: exact, and fast enough up to about a million rows of 768 fp32 values (~3 GB, tens of
milliseconds per query on two cores); beyond that, or for many queries a second, an approximate index (e.g.
HNSW or IVF-PQ) would start to pay.

"Unlike the confirmed images" is calibrated on the store's own data: each confirmed image's similarity to its
nearest *other* confirmed image (leave-one-out) gives the range real leaves of these cultivars fall in; a query
whose best similarity is below a low quantile of that range is flagged, and its score says how far below.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Neighbour", "Unlikeness", "ConfirmedIndex", "normalise_rows"]

_QUANTILE = 0.02  # confirmed images this unlike their nearest neighbour are rare: below it, warn
_MIN_FOR_CALIBRATION = 8
_CALIBRATION_SAMPLE = 2048  # confirmed images whose nearest other confirmed image calibrates the threshold
NEAR_DUPLICATE = 0.98  # mean cosine of both halves: re-encodings and crops of one photo, not two leaves


def normalise_rows(rows: torch.Tensor, dim: int) -> torch.Tensor:
    """float32 rows with the CLS half and the mean-patch half each of unit length, scaled so the whole has norm 1."""
    rows = rows.float()
    cls = torch.nn.functional.normalize(rows[:, :dim], dim=1)
    mean = torch.nn.functional.normalize(rows[:, dim:], dim=1)
    return torch.cat([cls, mean], dim=1) / math.sqrt(2.0)


@dataclass(frozen=True)
class Neighbour:
    """A confirmed image close to the query."""

    image_id: int
    label: str
    similarity: float  # mean cosine similarity of the CLS and mean-patch embeddings
    rel_path: str


@dataclass(frozen=True)
class Unlikeness:
    """How unlike the confirmed images a query is."""

    similarity: float  # to the nearest confirmed image
    threshold: float | None  # below this the query is unlike the store's confirmed images (None: too few to say)
    typical: float | None  # median leave-one-out nearest similarity of confirmed images
    nearest: Neighbour | None = None  # that confirmed image

    @property
    def near_duplicate(self) -> Neighbour | None:
        """The confirmed image this one is almost certainly a copy of (re-saved, resized), if any."""
        return self.nearest if self.nearest is not None and self.similarity >= NEAR_DUPLICATE else None

    @property
    def unusual(self) -> bool:
        return self.threshold is not None and self.similarity < self.threshold

    @property
    def score(self) -> float:
        """0 for a typical image, rising towards 1 the further below the confirmed images' range it falls."""
        if self.typical is None or self.threshold is None:
            return 0.0
        span = max(self.typical - self.threshold, 1e-6)
        return float(min(max((self.typical - self.similarity) / span - 1.0, 0.0) / 2.0, 1.0)) if self.unusual else 0.0

    def describe(self) -> str:
        """Words for the Classify screen."""
        if self.threshold is None:
            return (f"similarity to the nearest confirmed image {self.similarity:.2f} "
                    "(too few confirmed images to judge)")
        if self.unusual:
            return (f"Unlike the confirmed images: the nearest is only {self.similarity:.2f} similar (confirmed leaves "
                    f"are usually {self.typical:.2f} alike, 98% above {self.threshold:.2f}). This may not be a leaf "
                    "of a known cultivar; treat the prediction with care.")  # fmt: skip
        return f"similar to confirmed images ({self.similarity:.2f}; confirmed leaves usually {self.typical:.2f})"


class ConfirmedIndex:
    """Unit-scaled embeddings of confirmed images with their labels (build with :meth:`build`)."""

    def __init__(self, ids: Sequence[int], labels: Sequence[str], paths: Sequence[str], vectors: torch.Tensor) -> None:
        if vectors.dim() != 2 or vectors.shape[0] != len(ids) or len(ids) != len(labels) or len(ids) != len(paths):
            raise ValueError("ids, labels, paths and vectors must describe the same images")
        self.ids, self.labels, self.paths = list(ids), list(labels), list(paths)
        self.vectors = vectors.float().contiguous()
        self._id_tensor = torch.tensor(self.ids, dtype=torch.long)
        self._label_index: dict[str, list[int]] = {}
        for i, label in enumerate(self.labels):
            self._label_index.setdefault(label, []).append(i)
        self._threshold, self._typical = self._calibrate()

    @classmethod
    def build(cls, ids: Sequence[int], labels: Sequence[str], paths: Sequence[str], rows: torch.Tensor,
              dim: int) -> ConfirmedIndex:  # fmt: skip
        """From stored ``[CLS ‖ mean patch]`` rows (any float dtype) of the confirmed images."""
        return cls(ids, labels, paths, normalise_rows(rows, dim) if len(ids) else torch.zeros(0, 2 * dim))

    def __len__(self) -> int:
        return len(self.ids)

    def _calibrate(self) -> tuple[float | None, float | None]:
        n = len(self.ids)
        if n < _MIN_FOR_CALIBRATION:
            return None, None
        # The quantiles need a sample of leave-one-out similarities, not all n of them: an n x n product would
        # make every rebuild (each new label) cost seconds at tens of thousands of confirmed images.
        picked = torch.arange(n)
        if n > _CALIBRATION_SAMPLE:
            picked = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:_CALIBRATION_SAMPLE]
        sims = self.vectors[picked] @ self.vectors.T
        sims[torch.arange(len(picked)), picked] = -2.0  # not itself
        best = sims.max(dim=1).values
        return float(torch.quantile(best, _QUANTILE)), float(best.median())

    def _similarities(self, query: torch.Tensor, exclude: int | None) -> torch.Tensor:
        sims = self.vectors @ query.float().reshape(-1)
        if exclude is not None:
            sims[self._id_tensor == int(exclude)] = -2.0  # the query itself, when it is a confirmed image
        return sims

    def nearest(self, query: torch.Tensor, cultivars: Sequence[str], *, per_cultivar: int = 2,
                exclude: int | None = None) -> list[Neighbour]:  # fmt: skip
        """The ``per_cultivar`` closest confirmed images of each cultivar in ``cultivars`` (in that order)."""
        if not len(self):
            return []
        sims = self._similarities(query, exclude)
        out: list[Neighbour] = []
        for cultivar in cultivars:
            rows = self._label_index.get(cultivar, [])
            if not rows:
                continue
            part = sims[rows]
            top = part.topk(min(per_cultivar, len(rows)))
            for value, j in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                if value <= -2.0:
                    continue
                i = rows[j]
                out.append(Neighbour(self.ids[i], self.labels[i], float(value), self.paths[i]))
        return out

    def best_similarities(self, queries: torch.Tensor, ids: Sequence[int]) -> torch.Tensor:
        """Nearest-confirmed similarity of each normalised query row (each query's own image id excluded)."""
        out = torch.empty(queries.shape[0])
        if not len(self):
            return out.fill_(0.0)
        for start in range(0, queries.shape[0], 2048):  # blocks bound the (queries x confirmed) matrix
            sims = queries[start : start + 2048].float() @ self.vectors.T
            own = self._id_tensor[None, :] == torch.tensor(list(ids[start : start + 2048]))[:, None]
            out[start : start + sims.shape[0]] = sims.masked_fill(own, -2.0).max(dim=1).values
        return out

    def judge(self, similarity: float) -> Unlikeness:
        """The verdict for a nearest-confirmed similarity computed elsewhere (e.g. by :meth:`best_similarities`)."""
        return Unlikeness(float(similarity), self._threshold, self._typical)

    def unlikeness(self, query: torch.Tensor, *, exclude: int | None = None) -> Unlikeness:
        """How unlike every confirmed image ``query`` (a normalised row) is."""
        if not len(self):
            return Unlikeness(0.0, None, None)
        sims = self._similarities(query, exclude)
        i = int(sims.argmax())
        nearest = Neighbour(self.ids[i], self.labels[i], float(sims[i]), self.paths[i])
        return Unlikeness(float(sims[i]), self._threshold, self._typical, nearest)
