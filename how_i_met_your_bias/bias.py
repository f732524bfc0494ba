"""Bias attribute of generated Biased MNIST and Multi-Color MNIST images: the background palette colour.

Both datasets draw a white digit on a background of one palette colour (one
colour per half for Multi-Color MNIST), so the bias label of an image is the
palette colour nearest to the mean RGB of its background pixels. No learned
classifier is involved.

Background rule: a pixel is background when it is nearer (Euclidean in RGB)
to some palette colour than to white. White ink, and blends along the stroke
edge that are mostly ink, fall on the white side. An image with fewer than
`MIN_BACKGROUND_FRACTION` of its pixels on the palette side, such as a
generated image that is almost all white, uses the mean of its border ring of
`BORDER_WIDTH` pixels instead. MNIST digits are centred with a 4-pixel empty
margin at 28 px, so the ring is background on real data.
"""

from __future__ import annotations

import logging

import torch

__all__ = [
    "BORDER_WIDTH",
    "MIN_BACKGROUND_FRACTION",
    "background_mean",
    "border_ring",
    "half_masks",
    "match_multicolor",
    "match_palette",
    "nearest_colour",
    "palette_to_unit_range",
]

logger = logging.getLogger(__name__)

# Pixel width of the border ring used when an image has too few background pixels.
BORDER_WIDTH = 2
# Minimum fraction of the region's pixels that must be background before the border ring replaces them.
MIN_BACKGROUND_FRACTION = 0.05
# Images may leave [-1, 1] a little (sampler overshoot, added noise). Values beyond this bound mean
# the caller passed another scale, such as [0, 255].
VALUE_BOUND = 2.0
# A palette colour nearer to white than this (Euclidean, uint8 units) cannot be distinguished from the ink.
MIN_DISTANCE_TO_WHITE = 32.0
# Images processed per chunk, which bounds the (chunk, pixels, colours) distance tensor in memory.
CHUNK_SIZE = 2048

_WHITE = torch.ones(3)


def palette_to_unit_range(palette: torch.Tensor) -> torch.Tensor:
    """Validate a (K, 3) RGB palette in 0..255 and return it as float32 in [-1, 1]."""
    palette = torch.as_tensor(palette)
    if palette.ndim != 2 or palette.shape[1] != 3 or palette.shape[0] == 0:
        raise ValueError(f"palette must have shape (K, 3) with K >= 1 RGB colours, got {tuple(palette.shape)}")
    palette = palette.to(torch.float32)
    if palette.min() < 0 or palette.max() > 255:
        raise ValueError(
            f"palette values must lie in 0..255 (uint8 RGB), got {palette.min().item():g}..{palette.max().item():g}; "
            "pass the dataset's uint8 palette, not images in [-1, 1]"
        )
    distance_to_white = torch.linalg.vector_norm(palette - 255.0, dim=1)
    closest = int(distance_to_white.argmin())
    if distance_to_white[closest] < MIN_DISTANCE_TO_WHITE:
        colour = tuple(int(value) for value in palette[closest].tolist())
        raise ValueError(
            f"palette colour {closest} {colour} is within {MIN_DISTANCE_TO_WHITE:g} of white, so it cannot be "
            "distinguished from the white digit; the matcher supports only palettes that exclude near-white colours"
        )
    return palette / 127.5 - 1.0


def _check_images(images: torch.Tensor) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor of shape (N, 3, H, W), got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(
            f"images must have shape (N, 3, H, W) with 3 RGB channels, got {tuple(images.shape)}; "
            "add a batch dimension with images.unsqueeze(0) for a single image"
        )
    if not images.is_floating_point():
        raise ValueError(
            f"images must be floating point in [-1, 1], got dtype {images.dtype}; convert uint8 images with images.float() / 127.5 - 1"
        )
    if images.numel() == 0:
        return images
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or infinite values; check the sampler output before matching colours")
    low, high = images.min().item(), images.max().item()
    if low < -VALUE_BOUND or high > VALUE_BOUND:
        raise ValueError(
            f"images must lie in [-1, 1], got values in [{low:g}, {high:g}]; "
            "convert images in [0, 255] with x / 127.5 - 1, or in [0, 1] with 2 * x - 1"
        )
    return images


def _check_region(region: torch.Tensor | None, height: int, width: int) -> torch.Tensor:
    if region is None:
        return torch.ones(height, width, dtype=torch.bool)
    region = torch.as_tensor(region)
    if region.dtype != torch.bool or region.shape != (height, width):
        raise ValueError(
            f"region must be a boolean mask of shape ({height}, {width}) matching the images, "
            f"got dtype {region.dtype} and shape {tuple(region.shape)}"
        )
    if not region.any():
        raise ValueError("region selects no pixels; pass a mask with at least one True pixel, or None for the whole image")
    return region.cpu()


def border_ring(height: int, width: int, border_width: int = BORDER_WIDTH) -> torch.Tensor:
    """Return the boolean (H, W) mask of the outer `border_width` rows and columns."""
    ring = torch.ones(height, width, dtype=torch.bool)
    ring[border_width : height - border_width, border_width : width - border_width] = False
    return ring


def half_masks(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return boolean (H, W) masks of the left half (columns < W // 2, as in Multi-Color MNIST) and the right half."""
    columns = torch.arange(width)
    left = (columns < width // 2).expand(height, width).clone()
    return left, ~left


def background_mean(
    images: torch.Tensor,
    palette: torch.Tensor,
    region: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute the mean RGB of each image's background pixels inside `region`.

    `images` is (N, 3, H, W) in [-1, 1], `palette` (K, 3) uint8 RGB, and
    `region` an optional boolean (H, W) mask (None: the whole image). Returns
    the means as (N, 3) float32 in [-1, 1] and a boolean (N,) mask of the
    images that fell back to the border ring (see the module docstring).
    """
    images = _check_images(images)
    colours = palette_to_unit_range(palette)
    count, _, height, width = images.shape
    region = _check_region(region, height, width)
    ring = border_ring(height, width) & region
    if not ring.any():
        ring = region  # The region lies inside the ring's hole, so its own pixels are the best fallback.
    min_pixels = max(1, int(MIN_BACKGROUND_FRACTION * int(region.sum())))

    means = torch.empty(count, 3)
    fallback = torch.zeros(count, dtype=torch.bool)
    for start in range(0, count, CHUNK_SIZE):
        chunk = images[start : start + CHUNK_SIZE].detach().to("cpu", torch.float32)
        pixels = chunk.permute(0, 2, 3, 1)[:, region]  # (n, P, 3)
        ring_pixels = chunk.permute(0, 2, 3, 1)[:, ring]  # (n, R, 3)

        distance_to_white = torch.linalg.vector_norm(pixels - _WHITE, dim=-1)  # (n, P)
        distance_to_palette = torch.cdist(pixels, colours.expand(len(pixels), -1, -1)).amin(dim=-1)  # (n, P)
        is_background = (distance_to_palette < distance_to_white).to(torch.float32)

        background_count = is_background.sum(dim=1)  # (n,)
        background_sum = torch.einsum("np,npc->nc", is_background, pixels)
        chunk_fallback = background_count < min_pixels
        chunk_means = torch.where(
            chunk_fallback.unsqueeze(1),
            ring_pixels.mean(dim=1),
            background_sum / background_count.clamp(min=1.0).unsqueeze(1),
        )
        means[start : start + len(chunk)] = chunk_means
        fallback[start : start + len(chunk)] = chunk_fallback
    return means, fallback


def nearest_colour(colours: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Return the index (N,) of the palette colour nearest (Euclidean) to each (N, 3) colour in [-1, 1]."""
    palette_unit = palette_to_unit_range(palette)
    return torch.cdist(colours.to(torch.float32), palette_unit).argmin(dim=1)


def match_palette(images: torch.Tensor, palette: torch.Tensor, region: torch.Tensor | None = None) -> torch.Tensor:
    """Return the bias label (N,) of each image: the palette colour nearest to its mean background colour.

    `images` is (N, 3, H, W) in [-1, 1], `palette` (K, 3) uint8 RGB with one
    row per bias label, and `region` an optional boolean (H, W) mask that
    restricts the background to part of the image. Raises ValueError on a
    wrong shape, a non-float dtype or values far outside [-1, 1].
    """
    means, fallback = background_mean(images, palette, region)
    if fallback.any():
        logger.warning(
            "%d of %d images had fewer than %.0f%% background pixels in the region, so their colour was read "
            "from the %d-pixel border ring",
            int(fallback.sum()),
            len(fallback),
            100 * MIN_BACKGROUND_FRACTION,
            BORDER_WIDTH,
        )
    return nearest_colour(means, palette)


def match_multicolor(images: torch.Tensor, left_palette: torch.Tensor, right_palette: torch.Tensor) -> torch.Tensor:
    """Return the bias labels (N, 2) of Multi-Color MNIST images: column 0 the left half, column 1 the right.

    The left half is the columns < W // 2, as in the dataset, and each half is
    matched against its own palette with `match_palette`.
    """
    images = _check_images(images)
    left, right = half_masks(images.shape[2], images.shape[3])
    left_labels = match_palette(images, left_palette, region=left)
    right_labels = match_palette(images, right_palette, region=right)
    return torch.stack([left_labels, right_labels], dim=1)
