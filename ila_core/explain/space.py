"""Bring token-grid maps back to image space across ILA's down-sampling steps.

A down-sampling ILA shrinks the patch grid with a valid k x k depth-wise conv whose shortcut starts near
all-ones (ILA_SPEC 1.2-1.3): coarse token ``(i, j)`` is about the *sum* of fine tokens ``(i..i+k-1, j..j+k-1)``.
So a coarse token is centred on fine cell ``(i + (k-1)/2, j + (k-1)/2)``, not on the cell a plain
``interpolate`` of the coarse grid to the image would suggest. We therefore carry a coarse map back one
step at a time by spreading each coarse cell's value evenly over its k x k receptive field (the
"bridge"; mass is kept), and only interpolate once the map lives on the first patch grid. ``k`` comes
from the sides alone (``k = h_fine - h_coarse + 1``), so no adapter attribute is needed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

__all__ = ["backproject", "bridge_kernel_size", "bridge_matrix", "normalise01", "to_image"]


def bridge_kernel_size(fine_side: int, coarse_side: int) -> int:
    """Kernel size of the valid conv that maps a ``fine_side`` grid to a ``coarse_side`` grid.

    Raises:
        ValueError: if the grid grows (no valid conv does that).
    """
    if coarse_side > fine_side or coarse_side < 1:
        raise ValueError(f"cannot bridge a {fine_side}x{fine_side} grid to {coarse_side}x{coarse_side}")
    return fine_side - coarse_side + 1


def bridge_matrix(
    num_prefix: int, fine_side: int, coarse_side: int, *, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Row-stochastic (P + h'^2, P + h^2) map from coarse tokens to the fine tokens they were built from.

    Prefix tokens map to themselves (the adapter passes the CLS token through its identity shortcut);
    each coarse patch token spreads evenly over its k x k receptive field on the fine grid.
    """
    k = bridge_kernel_size(fine_side, coarse_side)
    n_fine, n_coarse = num_prefix + fine_side**2, num_prefix + coarse_side**2
    m = torch.zeros(n_coarse, n_fine, dtype=dtype)
    m[:num_prefix, :num_prefix] = torch.eye(num_prefix, dtype=dtype)
    idx = torch.arange(fine_side * fine_side).reshape(fine_side, fine_side)
    for i in range(coarse_side):
        for j in range(coarse_side):
            cols = idx[i : i + k, j : j + k].reshape(-1) + num_prefix
            m[num_prefix + i * coarse_side + j, cols] = 1.0 / (k * k)
    return m


def backproject(grid_map: torch.Tensor, sides: Sequence[int]) -> torch.Tensor:
    """Carry a (B, h, h) map on the last grid of ``sides`` back to the first grid, step by step.

    Args:
        grid_map: values on the coarsest grid, side ``sides[-1]``.
        sides: grid sides from the first patch grid to the map's grid, e.g. ``[14, 12, 10]``.

    Returns:
        (B, sides[0], sides[0]) map with the same total mass per image.
    """
    if grid_map.shape[-1] != sides[-1]:
        raise ValueError(f"map side {grid_map.shape[-1]} does not match the last side {sides[-1]}")
    x = grid_map.unsqueeze(1)  # (B, 1, h', h')
    for fine, coarse in zip(reversed(sides[:-1]), reversed(sides[1:])):
        if fine == coarse:
            continue
        k = bridge_kernel_size(fine, coarse)
        weight = torch.full((1, 1, k, k), 1.0 / (k * k), dtype=x.dtype, device=x.device)
        x = F.conv_transpose2d(x, weight)  # (B, 1, h', h') -> (B, 1, h, h): adjoint of the valid conv
    return x.squeeze(1)


def normalise01(maps: torch.Tensor) -> torch.Tensor:
    """Min-max scale each (..., H, W) map to [0, 1]; a constant map becomes all zeros (nothing stands out)."""
    flat = maps.flatten(-2)
    lo = flat.min(dim=-1, keepdim=True).values
    hi = flat.max(dim=-1, keepdim=True).values
    span = hi - lo
    out = torch.where(span > 0, (flat - lo) / span.clamp_min(torch.finfo(flat.dtype).tiny), torch.zeros_like(flat))
    return out.reshape(maps.shape)


def to_image(grid_map: torch.Tensor, sides: Sequence[int], image_size: tuple[int, int]) -> torch.Tensor:
    """(B, h, h) map on the last grid of ``sides`` -> (B, H, W) map in [0, 1] in image space."""
    base = backproject(grid_map.float(), sides)  # (B, h0, h0)
    up = F.interpolate(base.unsqueeze(1), size=tuple(image_size), mode="bilinear", align_corners=False)
    return normalise01(up.squeeze(1))
