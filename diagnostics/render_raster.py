"""Exact front-to-back alpha compositing of projected gaussians, vectorised with numpy.

A fragment is a (pixel, gaussian) pair where the gaussian's alpha reaches 1/255; that region is an
ellipse, so fragments are enumerated row by row (one span of pixels per ellipse row), with no wasted
window cells and no Python loop over gaussians. Gaussians are taken front to back in chunks; a chunk's
fragments are packed into one int64 key each (pixel | depth rank | quantised -log(1 - alpha)), so a plain
``np.sort`` orders them by pixel and, within a pixel, front to back. The transmittance in front of each
fragment is a segmented exclusive cumulative sum of log(1 - alpha), plus what earlier chunks left. As in
3DGS, a pixel stops at the first fragment that would take its transmittance to 1e-4 or below; later
fragments on it are dropped before they are sorted.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from diagnostics.render_project import ALPHA_MIN, Footprints

ALPHA_MAX = 0.999
TRANSMITTANCE_MIN = 1e-4
_LOG_TRANSMITTANCE_MIN = float(np.log(TRANSMITTANCE_MIN))
# -log(1 - alpha) quantised to 20 bits over [0, -log(1 - ALPHA_MAX)]: steps of 7e-6, far below 8-bit output.
_OPACITY_BITS = 20
_OPACITY_MASK = (1 << _OPACITY_BITS) - 1
_OPACITY_STEPS = _OPACITY_MASK / -np.log1p(-ALPHA_MAX)
# Fragments per chunk (about 120 bytes each at peak): small chunks stay in cache and let pixels finished
# by one chunk prune the next. Gaussians per chunk are bounded by the bits of the depth rank.
CHUNK_FRAGMENTS = 1 << 19
_CHUNK_GAUSSIANS = 1 << 20
# About a minute of work on one core: beyond it a view is refused rather than left running for hours
# (huge gaussians filling the screen many times over; a 400K-gaussian asset at 518 px needs ~15 million).
MAX_FRAGMENTS_PER_VIEW = 250_000_000


class RenderTooLarge(ValueError):
    """A view would need more fragments than MAX_FRAGMENTS_PER_VIEW; the message says how many."""


class _Canvas:
    """Running sums for one image: premultiplied colour, log transmittance, and pixels already finished."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        count = width * height
        self.color = np.zeros((3, count), dtype=np.float64)
        self.log_t = np.zeros(count, dtype=np.float64)
        self.done = np.zeros(count, dtype=bool)
        self.any_done = False

    def image(self, background: np.ndarray) -> np.ndarray:
        rgb = self.color.T + np.exp(self.log_t)[:, None] * background[None, :]
        return rgb.reshape(self.height, self.width, 3)


def _fragment_estimate(fp: Footprints, log_limit: np.ndarray) -> np.ndarray:
    """Fragments per gaussian, roughly: ellipse area 2 pi L / sqrt(det(conic)) plus its perimeter."""
    det = fp.conic_a * fp.conic_c - fp.conic_b * fp.conic_b
    area = 2.0 * np.pi * log_limit / np.sqrt(det)
    # A clipped footprint never covers more than its box.
    box = (2.0 * fp.extent_x + 1.0) * (2.0 * fp.extent_y + 1.0)
    return np.minimum(area + 2.0 * (fp.extent_x + fp.extent_y) + 1.0, box)


def _chunks(estimate: np.ndarray) -> Iterator[tuple[int, int]]:
    """Consecutive [start, stop) ranges of gaussians holding about CHUNK_FRAGMENTS fragments each."""
    total = np.cumsum(estimate)
    start = 0
    while start < len(estimate):
        before = total[start - 1] if start else 0.0
        stop = int(np.searchsorted(total, before + CHUNK_FRAGMENTS, side="right"))
        stop = min(max(stop, start + 1), start + _CHUNK_GAUSSIANS)
        yield start, stop
        start = stop


def _exclusive_offsets(counts: np.ndarray) -> np.ndarray:
    offsets = np.cumsum(counts)
    offsets -= counts
    return offsets


def _pixel_range(mean: np.ndarray, extent: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last pixel whose centre (i + 0.5) is within ``extent`` of ``mean``, clipped to the image."""
    first = np.maximum(np.ceil(mean - extent - 0.5), 0).astype(np.int64)
    last = np.minimum(np.floor(mean + extent - 0.5), size - 1).astype(np.int64)
    return first, last


class _Finished:
    """Prefix sums of the finished-pixel mask: per row (for spans) and summed-area (for boxes)."""

    def __init__(self, canvas: _Canvas) -> None:
        done = canvas.done.reshape(canvas.height, canvas.width)
        self.rows = np.zeros((canvas.height, canvas.width + 1), dtype=np.int32)
        np.cumsum(done, axis=1, dtype=np.int32, out=self.rows[:, 1:])
        self.area = np.zeros((canvas.height + 1, canvas.width + 1), dtype=np.int32)
        np.cumsum(self.rows, axis=0, out=self.area[1:])

    def box_is_finished(self, x0: np.ndarray, x1: np.ndarray, y0: np.ndarray, y1: np.ndarray) -> np.ndarray:
        """Whether every pixel in [x0, x1] x [y0, y1] is finished (an empty box counts as finished)."""
        x1, y1 = np.maximum(x1, x0 - 1) + 1, np.maximum(y1, y0 - 1) + 1
        count = self.area[y1, x1] - self.area[y0, x1] - self.area[y1, x0] + self.area[y0, x0]
        return count >= (x1 - x0) * (y1 - y0)

    def span_is_finished(self, row: np.ndarray, x0: np.ndarray, count: np.ndarray) -> np.ndarray:
        """Whether every pixel of each row span (``count`` pixels from ``x0``) is finished."""
        x1 = np.minimum(x0 + count, self.rows.shape[1] - 1)
        return self.rows[row, x1] - self.rows[row, np.minimum(x0, x1)] >= count


def _not_hidden(fp: Footprints, members: np.ndarray, finished: _Finished) -> np.ndarray:
    """Drop gaussians whose whole box lies on finished pixels."""
    x0, x1 = _pixel_range(fp.mean_x[members], fp.extent_x[members], finished.rows.shape[1] - 1)
    y0, y1 = _pixel_range(fp.mean_y[members], fp.extent_y[members], finished.rows.shape[0])
    return members[~finished.box_is_finished(x0, x1, y0, y1)]


def _rows(fp: Footprints, members: np.ndarray, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(position in ``members``, pixel row) for every image row crossed by those gaussians."""
    first, last = _pixel_range(fp.mean_y[members], fp.extent_y[members], height)
    counts = np.maximum(last - first + 1, 0)
    owner = np.repeat(np.arange(len(members)), counts)
    row = np.arange(len(owner)) - np.repeat(_exclusive_offsets(counts) - first, counts)
    return owner, row


class _Spans:
    """One run of pixels per (gaussian, image row) where the gaussian's alpha reaches 1/255.

    Along a span, log alpha is a quadratic in the column offset k: ``p0 - k * (p1 + p2 * k)``.
    """

    def __init__(
        self, fp: Footprints, members: np.ndarray, log_limit: np.ndarray, width: int, height: int
    ) -> None:
        self.owner, self.row = _rows(fp, members, height)
        g = members[self.owner]
        a, b, c = fp.conic_a[g], fp.conic_b[g], fp.conic_c[g]
        mx = fp.mean_x[g]
        dy = self.row + 0.5 - fp.mean_y[g]
        # Solve 0.5 * (a dx^2 + c dy^2) + b dx dy = log_limit for dx.
        disc = (b * b - a * c) * dy * dy + 2.0 * a * log_limit[g]
        centre = mx - b * dy / a
        # A row that only grazes the ellipse (rounding) gets a negative half-width, hence an empty span.
        half = np.where(disc >= 0.0, np.sqrt(np.maximum(disc, 0.0)) / a, -1.0)
        reach = fp.extent_x[g]
        self.start = np.maximum(np.ceil(np.maximum(centre - half, mx - reach) - 0.5), 0).astype(np.int64)
        stop = np.minimum(np.floor(np.minimum(centre + half, mx + reach) - 0.5), width - 1)
        self.count = np.maximum(stop.astype(np.int64) - self.start + 1, 0)
        dx0 = self.start + 0.5 - mx
        self.p2 = 0.5 * a
        self.p1 = a * dx0 + b * dy
        self.p0 = np.log(fp.opacities[g]) - (dx0 * (self.p2 * dx0 + b * dy) + 0.5 * c * dy * dy)

    def drop_finished(self, finished: _Finished) -> None:
        self.count[finished.span_is_finished(self.row, self.start, self.count)] = 0

    def fragment_keys(self, width: int, pixel_shift: int) -> np.ndarray:
        """Every span pixel as a packed key: pixel | rank in the chunk | quantised -log(1 - alpha)."""
        count = self.count
        k = np.arange(int(count.sum()), dtype=np.int64) - np.repeat(_exclusive_offsets(count), count)
        keys = k + np.repeat(self.row * width + self.start, count)
        keys <<= pixel_shift - _OPACITY_BITS
        keys |= np.repeat(self.owner, count)
        keys <<= _OPACITY_BITS
        kf = k.astype(np.float32)
        del k
        log_alpha = np.repeat(self.p1.astype(np.float32), count)
        log_alpha += np.repeat(self.p2.astype(np.float32), count) * kf
        log_alpha *= kf
        del kf
        np.subtract(np.repeat(self.p0.astype(np.float32), count), log_alpha, out=log_alpha)
        alpha = np.minimum(np.exp(log_alpha, out=log_alpha), ALPHA_MAX)
        # -log(1 - alpha) >= 0, so adding 0.5 and truncating rounds it.
        keys |= (-np.log1p(-alpha) * _OPACITY_STEPS + 0.5).astype(np.int64)
        return keys


def _chunk_keys(
    fp: Footprints, members: np.ndarray, log_limit: np.ndarray, canvas: _Canvas, finished: _Finished | None
) -> tuple[np.ndarray, int, int]:
    """Packed fragment keys of gaussians ``members`` (front to back), and the shifts that unpack them."""
    rank_bits = max(1, (len(members) - 1).bit_length())
    pixel_shift = _OPACITY_BITS + rank_bits
    if (canvas.width * canvas.height).bit_length() + pixel_shift > 63:
        raise RenderTooLarge("the image is too large for 64-bit fragment keys; render at a smaller size")
    spans = _Spans(fp, members, log_limit, canvas.width, canvas.height)
    if finished is not None:
        spans.drop_finished(finished)
    keys = spans.fragment_keys(canvas.width, pixel_shift)
    if finished is not None:
        keys = keys[~canvas.done[keys >> pixel_shift]]
    return keys, pixel_shift, rank_bits


def _composite(
    keys: np.ndarray, pixel_shift: int, rank_bits: int, colors: np.ndarray, canvas: _Canvas
) -> None:
    """Blend one chunk's fragments (any order) into the canvas, front to back per pixel."""
    if len(keys) == 0:
        return
    keys.sort()
    pixel = keys >> pixel_shift
    rank = (keys >> _OPACITY_BITS) & ((1 << rank_bits) - 1)
    log_keep = (keys & _OPACITY_MASK).astype(np.float64)
    log_keep *= -1.0 / _OPACITY_STEPS
    del keys
    first = np.empty(len(pixel), dtype=bool)
    first[0] = True
    np.not_equal(pixel[1:], pixel[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    segment = np.cumsum(first) - 1
    del first
    seg_pixel = pixel[starts]
    del pixel
    # Exclusive log transmittance within the pixel, plus what earlier chunks left on it.
    log_t = np.cumsum(log_keep)
    log_t -= log_keep
    log_t += (canvas.log_t[seg_pixel] - log_t[starts])[segment]
    passes = log_t + log_keep > _LOG_TRANSMITTANCE_MIN
    # weight = T * alpha = T * (1 - exp(log_keep))
    weight = np.exp(log_t.astype(np.float32))
    del log_t
    weight *= -np.expm1(log_keep.astype(np.float32))
    weight *= passes
    count = len(starts)
    for channel in range(3):
        shade = colors[channel].take(rank)
        shade *= weight
        canvas.color[channel, seg_pixel] += np.bincount(segment, weights=shade, minlength=count)
    canvas.log_t[seg_pixel] += np.bincount(segment, weights=log_keep * passes, minlength=count)
    stopped = np.logical_or.reduceat(~passes, starts)
    if stopped.any():
        canvas.done[seg_pixel] |= stopped
        canvas.any_done = True


def rasterize(fp: Footprints, width: int, height: int, background: np.ndarray) -> np.ndarray:
    """Composite depth-sorted footprints over ``background``; an unclipped (height, width, 3) float64."""
    canvas = _Canvas(width, height)
    log_limit = np.log(fp.opacities.astype(np.float64) / ALPHA_MIN)
    colors = np.ascontiguousarray(fp.colors.T)
    estimate = _fragment_estimate(fp, log_limit)
    if estimate.sum() > MAX_FRAGMENTS_PER_VIEW:
        raise RenderTooLarge(
            f"this view needs about {estimate.sum():,.0f} fragments (limit {MAX_FRAGMENTS_PER_VIEW:,}): "
            "its gaussians cover the image many times over"
        )
    for lo, hi in _chunks(estimate):
        finished = _Finished(canvas) if canvas.any_done else None
        members = np.arange(lo, hi) if finished is None else _not_hidden(fp, np.arange(lo, hi), finished)
        keys, pixel_shift, rank_bits = _chunk_keys(fp, members, log_limit, canvas, finished)
        _composite(keys, pixel_shift, rank_bits, colors[:, members], canvas)
    return canvas.image(np.asarray(background, dtype=np.float64))
