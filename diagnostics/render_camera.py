"""Orbit cameras placed the way 404's validators place them.

Axes follow OpenCV (camera x right, y down, z forward), world +Y is up. The camera sits on a sphere of
``radius`` around the origin and looks at it. Azimuth 0 puts the camera on the world +Z axis, azimuth 90 on
+X. Elevation follows the validator's sign: camera height is ``-radius * sin(elevation)``, so the default
elevation of -15 degrees puts the camera *above* the model, looking down at it by 15 degrees.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CAMERA_RADIUS = 2.5
FOV_DEG = 49.1
ELEVATION_DEG = -15.0
_WORLD_UP = np.array([0.0, 1.0, 0.0])


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: world-to-camera rotation and translation, square pixels, centred principal point."""

    rotation: np.ndarray  # (3, 3) world -> camera
    translation: np.ndarray  # (3,)
    focal: float
    width: int
    height: int

    @property
    def cx(self) -> float:
        return self.width / 2.0

    @property
    def cy(self) -> float:
        return self.height / 2.0

    @property
    def tan_half_fov(self) -> float:
        return self.width / (2.0 * self.focal)

    def to_camera(self, points: np.ndarray) -> np.ndarray:
        """Camera coordinates, (3, N), of world points given as (3, N) rows x, y, z."""
        # Written out rather than a matmul: a (N, 3) @ (3, 3) product goes through BLAS threads that
        # cost more than the arithmetic on a busy machine.
        rot, shift = self.rotation, self.translation
        return np.stack(
            [
                rot[i, 0] * points[0] + rot[i, 1] * points[1] + rot[i, 2] * points[2] + shift[i]
                for i in range(3)
            ]
        )

    def project_points(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel coordinates (u, v) and depth of world points given as (3, N); pixel i spans [i, i + 1)."""
        cam = self.to_camera(np.asarray(points, dtype=np.float64))
        depth = cam[2]
        with np.errstate(divide="ignore", invalid="ignore"):
            u = self.focal * cam[0] / depth + self.cx
            v = self.focal * cam[1] / depth + self.cy
        return u, v, depth


def orbit_camera(
    azimuth_deg: float,
    elevation_deg: float = ELEVATION_DEG,
    *,
    radius: float = CAMERA_RADIUS,
    fov_deg: float = FOV_DEG,
    size: int = 518,
) -> Camera:
    """A square ``size`` x ``size`` camera on the validator's orbit, looking at the origin."""
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    position = radius * np.array([math.cos(el) * math.sin(az), -math.sin(el), math.cos(el) * math.cos(az)])
    forward = -position / np.linalg.norm(position)
    right = np.cross(forward, _WORLD_UP)
    if np.linalg.norm(right) < 1e-9:
        # Straight above or below: any horizontal axis works; keep +X to the right as at azimuth 0.
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])
    focal = size / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    return Camera(rotation=rotation, translation=-rotation @ position, focal=focal, width=size, height=size)
