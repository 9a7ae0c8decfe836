"""LP-FT's first stage: the classifier head starts at a closed-form fit on the initial network's features.

Kumar et al. (ICLR 2022, "Fine-Tuning can Distort Pretrained Features and Underperform Out-of-Distribution")
show that fine-tuning from a random head lets the early, large gradients of a bad head distort the features;
starting from the linear probe's head avoids that. Here the "probe" is fitted in closed form
(:func:`~ila_core.training.probe.fit_probe`) on the pre-logit features of the network as it starts training
(adapters at their initial state), over every training image under both fixed views (the two views of one
image always share a cross-validation fold).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .frozen_prefix import SuffixModel
from .probe import ProbeFit, fit_probe

__all__ = ["pre_logits", "init_head_closed_form"]

_logger = logging.getLogger(__name__)


def pre_logits(net: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """What the classifier head reads, for images (a timm ViT) or cached prefix tokens (a SuffixModel)."""
    if isinstance(net, SuffixModel):
        return net(inputs, pre_logits=True)
    return net.forward_head(net.forward_features(inputs), pre_logits=True)


@torch.no_grad()
def init_head_closed_form(
    net: nn.Module,
    head: nn.Linear,
    views: Sequence[Dataset],
    num_classes: int,
    *,
    device: torch.device,
    batch_size: int = 64,
    seed: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> ProbeFit | None:
    """Fit ``head`` in closed form on ``net``'s pre-logit features of every sample in ``views`` (eval mode).

    Args:
        views: datasets over the same samples in the same order (e.g. the centre and mirror views).

    Returns:
        The fit (its out-of-fold accuracy is the run's starting point), or None when stopped.
    """
    was_training = net.training
    net.eval()
    feats, labels, groups = [], [], []
    try:
        for ds in views:
            offset = 0
            for inputs, targets in DataLoader(ds, batch_size=batch_size, shuffle=False):
                if should_stop is not None and should_stop():
                    return None
                feats.append(pre_logits(net, inputs.to(device)).float().cpu())
                labels.append(torch.as_tensor(targets))
                groups.append(torch.arange(offset, offset + len(targets)))
                offset += len(targets)
    finally:
        net.train(was_training)
    fit = fit_probe(torch.cat(feats), torch.cat(labels), num_classes, groups=torch.cat(groups), seed=seed)
    head.weight.copy_(fit.weight.to(head.weight))
    head.bias.copy_(fit.bias.to(head.bias))
    _logger.info("head initialised in closed form: alpha %.3g, out-of-fold top-1 %.3f", fit.alpha, fit.cv_top1)
    return fit
