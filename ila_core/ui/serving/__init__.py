"""The app's side of serving: predictions, explanations and exemplar retrieval around one ``Predictor``.

:class:`~ila_core.serving.predictor.Predictor` owns the served model and swaps versions by replacing one
reference. Explanations edit a model temporarily (hooks, a swapped last block), so they run on a separate
instance of the served version, rebuilt from its checkpoint and sharing the frozen tensors, one at a time
behind a lock. Exemplars ("nearest confirmed images of each candidate") come from the predictor's frozen
backbone embeddings, which do not change between adapter versions, so they are cached by image hash.

Modules: ``results`` (what the UI gets back), ``runtime`` (:class:`ModelRuntime`: serving state and
predictions), ``explanations`` and ``exemplars`` (the runtime's explanation and exemplar methods, as mixins
that share its state).
"""

from __future__ import annotations

from .results import METHODS, Exemplar, Explained
from .runtime import ModelRuntime

__all__ = ["METHODS", "Exemplar", "Explained", "ModelRuntime"]
