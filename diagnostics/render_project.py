"""EWA projection of 3D gaussians to screen-space ellipses (the gsplat "classic" forward pass).

Sigma = R S S^T R^T is carried to the camera by W and to the screen by the perspective Jacobian J,
then widened by a 0.3 px low-pass filter. Each ellipse gets opacity-aware half-widths: the extent of
the region where its alpha reaches 1/255 (never more than 3.33 sigma). Gaussians behind the near
plane, off screen or too faint to reach 1/255 anywhere are culled; the rest come back front to back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diagnostics.render_camera import Camera
from diagnostics.render_prepare import PreparedSplat

NEAR_PLANE = 0.01
FAR_PLANE = 100.0
LOW_PASS_PX2 = 0.3
ALPHA_MIN = 1.0 / 255.0
MAX_EXTEND_SIGMA = 3.33
# Off-axis gaussians are projected with the Jacobian of a point clamped to 1.3x the field of view,
# as 3DGS does, so huge ellipses from points far outside the frame do not blow up.
_JACOBIAN_FOV_MARGIN = 1.3
# Footprints are clipped to this half-width: it bounds memory and time per gaussian; only
# floaters a quarter of the image wide are affected at the default size.
MAX_RADIUS_PX = 128


@dataclass(frozen=True)
class Footprints:
    """Visible gaussians on screen, front to back: centre, conic (inverse 2D covariance), half-widths."""

    mean_x: np.ndarray  # pixel coordinates; pixel i spans [i, i + 1)
    mean_y: np.ndarray
    conic_a: np.ndarray  # sigma = 0.5 * (a dx^2 + c dy^2) + b dx dy
    conic_b: np.ndarray
    conic_c: np.ndarray
    opacities: np.ndarray  # float32
    extent_x: np.ndarray  # half-width in pixels of the region where alpha >= 1/255
    extent_y: np.ndarray
    colors: np.ndarray  # (n, 3) float32

    def __len__(self) -> int:
        return len(self.mean_x)


def _quadratic(cov: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """u^T Sigma v per gaussian; ``cov`` holds (6, n) upper-triangle entries, ``u`` and ``v`` are (3, n)."""
    xx, xy, xz, yy, yz, zz = cov
    return (
        u[0] * (v[0] * xx + v[1] * xy + v[2] * xz)
        + u[1] * (v[0] * xy + v[1] * yy + v[2] * yz)
        + u[2] * (v[0] * xz + v[1] * yz + v[2] * zz)
    )


def _screen_covariance(
    cov: np.ndarray, cam: np.ndarray, camera: Camera
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries (a, b, c) of the 2D covariance J W Sigma W^T J^T, with the low-pass filter added."""
    lim = _JACOBIAN_FOV_MARGIN * camera.tan_half_fov
    inv_z = 1.0 / cam[2]
    tx = np.clip(cam[0] * inv_z, -lim, lim)
    ty = np.clip(cam[1] * inv_z, -lim, lim)
    scale = camera.focal * inv_z
    rot = camera.rotation
    # Rows of J W: the world directions whose projections give screen x and y.
    row_x = scale * (rot[0][:, None] - tx * rot[2][:, None])
    row_y = scale * (rot[1][:, None] - ty * rot[2][:, None])
    a = _quadratic(cov, row_x, row_x) + LOW_PASS_PX2
    b = _quadratic(cov, row_x, row_y)
    c = _quadratic(cov, row_y, row_y) + LOW_PASS_PX2
    return a, b, c


def _front_to_back(index: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """``index`` sorted by float32 depth, ties in file order: gsplat's radix sort on depth bits."""
    # Positive float32 bit patterns sort like the numbers, so depth bits and index pack into one int64
    # key that a plain (SIMD) sort orders; much faster than a stable argsort.
    bits = depth[index].astype(np.float32).view(np.int32).astype(np.int64)
    keys = (bits << 32) | index
    keys.sort()
    return keys & 0xFFFFFFFF


def project(prepared: PreparedSplat, camera: Camera) -> Footprints:
    """Project, cull and depth-sort a prepared splat for one camera."""
    cam = camera.to_camera(prepared.means)
    visible = (cam[2] > NEAR_PLANE) & (cam[2] < FAR_PLANE) & (prepared.opacities >= ALPHA_MIN)
    index = np.flatnonzero(visible)
    cam = cam[:, index]
    opacity = prepared.opacities[index]
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        a, b, c = _screen_covariance(prepared.covariances[:, index], cam, camera)
        det = a * c - b * b
        mean_x = camera.focal * cam[0] / cam[2] + camera.cx
        mean_y = camera.focal * cam[1] / cam[2] + camera.cy
        extend = np.minimum(MAX_EXTEND_SIGMA, np.sqrt(2.0 * np.log(opacity.astype(np.float64) / ALPHA_MIN)))
        rx = extend * np.sqrt(a)
        ry = extend * np.sqrt(c)
        keep = (det > 0) & np.isfinite(det) & np.isfinite(rx) & np.isfinite(ry)
        keep &= (mean_x + rx > 0) & (mean_x - rx < camera.width)
        keep &= (mean_y + ry > 0) & (mean_y - ry < camera.height)
    sel = _front_to_back(np.flatnonzero(keep), cam[2])
    inv_det = 1.0 / det[sel]
    return Footprints(
        mean_x=mean_x[sel],
        mean_y=mean_y[sel],
        conic_a=c[sel] * inv_det,
        conic_b=-b[sel] * inv_det,
        conic_c=a[sel] * inv_det,
        opacities=opacity[sel],
        extent_x=np.minimum(rx[sel], MAX_RADIUS_PX),
        extent_y=np.minimum(ry[sel], MAX_RADIUS_PX),
        colors=prepared.colors[index[sel]],
    )
