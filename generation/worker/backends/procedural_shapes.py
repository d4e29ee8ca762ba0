"""Surface samplers and word tables for the procedural backend (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Colour words a prompt may carry, as linear-ish RGB in [0, 1].
COLOUR_WORDS: dict[str, tuple[float, float, float]] = {
    "red": (0.80, 0.12, 0.10), "green": (0.20, 0.60, 0.22), "blue": (0.15, 0.30, 0.80),
    "yellow": (0.95, 0.85, 0.15), "orange": (0.95, 0.50, 0.10), "purple": (0.50, 0.20, 0.65),
    "pink": (0.95, 0.55, 0.70), "white": (0.94, 0.94, 0.92), "black": (0.08, 0.08, 0.09),
    "brown": (0.45, 0.28, 0.14), "grey": (0.5, 0.5, 0.5), "gray": (0.5, 0.5, 0.5),
    "silver": (0.75, 0.76, 0.78), "golden": (0.90, 0.72, 0.20), "gold": (0.90, 0.72, 0.20),
    "wooden": (0.55, 0.36, 0.18), "wood": (0.55, 0.36, 0.18), "leather": (0.42, 0.25, 0.12),
    "iron": (0.42, 0.43, 0.45), "metal": (0.60, 0.61, 0.63), "stone": (0.55, 0.54, 0.50),
    "terracotta": (0.78, 0.40, 0.25), "glass": (0.70, 0.85, 0.85), "porcelain": (0.95, 0.95, 0.97),
    "tin": (0.70, 0.72, 0.74), "brass": (0.78, 0.62, 0.25), "olive": (0.50, 0.50, 0.15),
    "ceramic": (0.90, 0.88, 0.84), "bamboo": (0.75, 0.65, 0.35),
}  # fmt: skip

# Objects whose own colour wins over colour words that describe their accessories ("a snowman with a red scarf").
INHERENT_COLOURS: dict[str, tuple[float, float, float]] = {
    "snowman": (0.95, 0.96, 0.98), "cactus": (0.25, 0.55, 0.25), "pumpkin": (0.92, 0.50, 0.12),
    "donut": (0.80, 0.60, 0.35), "doughnut": (0.80, 0.60, 0.35), "penguin": (0.10, 0.10, 0.12),
}  # fmt: skip

# Object words mapped to an archetype; each archetype is a small composition of primitives.
ARCHETYPE_WORDS: dict[str, str] = {
    **dict.fromkeys(["chair", "stool", "table", "bench", "desk", "sofa", "throne"], "furniture"),
    **dict.fromkeys(["teapot", "vase", "pot", "bottle", "cup", "mug", "trophy", "jar", "lantern",
                     "bucket", "kettle", "bowl", "cactus", "lamp"], "vessel"),
    **dict.fromkeys(["duck", "snowman", "bear", "cat", "dog", "bird", "owl", "penguin"], "creature"),
    **dict.fromkeys(["robot", "house", "tower", "castle", "building"], "blocks"),
    **dict.fromkeys(["donut", "doughnut", "ring", "tire", "wheel", "bagel", "bicycle"], "ring"),
    **dict.fromkeys(["mushroom", "tree", "umbrella", "toadstool"], "mushroom"),
    **dict.fromkeys(["sword", "guitar", "knife", "axe", "hammer", "spoon", "wand", "key"], "blade"),
    **dict.fromkeys(["book", "books", "chest", "box", "crate", "suitcase", "drawer"], "boxes"),
    **dict.fromkeys(["pumpkin", "apple", "ball", "orb", "planet", "boot", "shoe"], "round"),
}  # fmt: skip


@dataclass(frozen=True)
class Part:
    """One primitive of a composed object: kind, centre, half-extents and colour."""

    kind: str  # sphere | box | cylinder | torus | cone | lathe
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    colour: tuple[float, float, float]

    def area(self) -> float:
        a, b, c = self.size
        if self.kind == "box":
            return 8.0 * (a * b + b * c + a * c)
        if self.kind == "torus":
            return 4.0 * np.pi**2 * a * c
        if self.kind in ("cylinder", "lathe", "cone"):
            return 2.0 * np.pi * max(a, c) * 2.0 * b + 2.0 * np.pi * a * c
        # Knud Thomsen's approximation of an ellipsoid's surface.
        p = 1.6075
        return 4.0 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3.0) ** (1.0 / p)


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.standard_normal((n, 3))
    v /= np.linalg.norm(v, axis=1, keepdims=True) + 1e-12
    return v


def sample_surface(part: Part, n: int, rng: np.random.Generator, profile_seed: float) -> np.ndarray:
    """``n`` points on the surface of ``part``, shape (n, 3), float64."""
    a, b, c = part.size
    if part.kind == "sphere":
        pts = _unit_vectors(rng, n) * np.array([a, b, c])
    elif part.kind == "box":
        pts = rng.uniform(-1.0, 1.0, (n, 3))
        face_areas = np.array([b * c, a * c, a * b])
        axis = rng.choice(3, size=n, p=face_areas / face_areas.sum())
        pts[np.arange(n), axis] = rng.choice((-1.0, 1.0), size=n)
        pts *= np.array([a, b, c])
    elif part.kind == "torus":
        u, v = rng.uniform(0, 2 * np.pi, (2, n))
        ring = a + c * np.cos(v)
        pts = np.stack([ring * np.cos(u), c * np.sin(v), ring * np.sin(u)], axis=1)
    else:  # cylinder, cone, lathe: surfaces of revolution around y
        h = rng.uniform(-1.0, 1.0, n)
        theta = rng.uniform(0, 2 * np.pi, n)
        if part.kind == "cylinder":
            radius = np.ones(n)
        elif part.kind == "cone":
            radius = (1.0 - h) / 2.0
        else:
            # A vase-like profile whose bulge and neck come from the prompt.
            t = (h + 1.0) / 2.0
            radius = 0.55 + 0.45 * np.sin(np.pi * t * (0.8 + 0.4 * profile_seed)) - 0.25 * t**3
        pts = np.stack([radius * a * np.cos(theta), h * b, radius * c * np.sin(theta)], axis=1)
    return pts + np.array(part.center)
