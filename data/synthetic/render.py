"""Rendering one image: the category's scene on a textured background, its logical or structural
defects, then lighting, blur and sensor noise. Every image draws from its own generators seeded
by (seed, category index, split, index)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from .categories import CATEGORIES, CATS, check_categories
from .drawing import Defect, Rng, Scene, smooth_noise
from .spec import SPLITS, SyntheticSpec
from .structural import STRUCTURAL

TWO_DEFECTS_P = 0.15

@lru_cache(maxsize=len(CATEGORIES))
def tone_bank(category: str, size: int, seed: int) -> np.ndarray:
    """A background tone field twice the image size (soft blotches and fine grain), made once per
    category, size and seed; each image crops it at its own offset."""
    H, W = CATS[category].image_hw(size)
    rng = np.random.default_rng([seed, CATEGORIES.index(category), 99])
    low = 0.05 * smooth_noise(rng, (2 * H, 2 * W), 8)
    grain = ndimage.gaussian_filter(rng.standard_normal((2 * H, 2 * W), np.float32), max(0.7, size / 256), truncate=2.0)
    return 1 + low + 0.06 * grain


def _background(rng: Rng, scene: Scene, seed: int) -> np.ndarray:
    """The category's background colour on a random crop of its tone field."""
    H, W = scene.hw
    bank = tone_bank(scene.category, scene.size, seed)
    y, x = int(rng.integers(H + 1)), int(rng.integers(W + 1))
    color = np.asarray(CATS[scene.category].background, np.float32) * np.float32(rng.uniform(0.96, 1.04))
    return bank[y:y + H, x:x + W, None] * color


def _finish(canvas: np.ndarray, rng: Rng) -> np.ndarray:
    """Lighting (gain, offset, soft gradient), a little optical blur and sensor noise -> uint8."""
    H, W = canvas.shape[:2]
    gain, offset = rng.uniform(0.9, 1.1), rng.uniform(-0.03, 0.03)
    angle, amplitude = rng.uniform(-np.pi, np.pi), rng.uniform(0.0, 0.08)
    x, y = np.linspace(-1, 1, W, dtype=np.float32), np.linspace(-1, 1, H, dtype=np.float32)
    light = (255 * gain) * (1 + amplitude * (np.cos(angle) * x[None, :] + np.sin(angle) * y[:, None]))
    image = canvas * light[..., None]
    image = ndimage.gaussian_filter(image, (0.6, 0.6, 0), truncate=2.0)
    noise = rng.random(image.shape, np.float32) - rng.random(image.shape, np.float32)  # triangular, sd 0.41
    image += (0.012 * 255 / 0.41) * noise + (255 * offset + 0.5)
    return np.clip(image, 0, 255, out=image).astype(np.uint8)


@dataclass
class Rendered:
    """One generated image with its ground-truth regions (defect name, bool mask) and scene."""

    image: np.ndarray
    regions: list[tuple[str, np.ndarray]]
    scene: Scene


def _new_scene(category: str, size: int, rng: Rng) -> Scene:
    cat = CATS[category]
    pose = (rng.uniform(-0.02, 0.02), rng.uniform(-0.02, 0.02), np.deg2rad(rng.uniform(-2.5, 2.5)))
    items, facts = cat.layout(rng)
    return Scene(category, size, cat.image_hw(size), pose, items, facts)


#: structural defects that change the scene and re-render it go first, in this order (a bend
#: changes the item that a later break then cuts); the others keep their order
_FIRST = {"bent_item": 0, "broken_part": 1}


def _structural_names(rng: Rng, index: int, defects: tuple[Defect, ...]) -> list[str]:
    names = [d.name for d in defects]
    chosen = [names[index % len(names)]]
    if rng.random() < TWO_DEFECTS_P:
        chosen.append(str(rng.choice([n for n in names if n != chosen[0]])))
    return sorted(chosen, key=lambda n: _FIRST.get(n, len(_FIRST)))


def render_sample(category: str, spec: SyntheticSpec, split: str, index: int, with_defects: bool = True) -> Rendered:
    """Image `index` of a split key of `SPLITS`; `with_defects=False` gives its defect-free twin
    (same product, pose, lighting and noise)."""
    cat = CATS[check_categories([category])[0]]
    seq = np.random.SeedSequence([spec.seed, CATEGORIES.index(category), SPLITS[split][1], index])
    layout_rng, defect_rng, look_rng = (np.random.default_rng(s) for s in seq.spawn(3))
    scene = _new_scene(category, spec.size, layout_rng)
    scene.background = _background(look_rng, scene, spec.seed)
    regions: list[tuple[str, np.ndarray]] = []
    if with_defects and split == "logical":
        name = cat.logical_defects[index % len(cat.logical_defects)].name
        regions = [(name, m) for m in cat.logical[name](scene, defect_rng)]
    canvas = scene.render()
    if with_defects and split == "structural":
        functions = {**STRUCTURAL, **cat.extra_structural_fns}
        regions = [(name, functions[name](canvas, scene, defect_rng))
                   for name in _structural_names(defect_rng, index, cat.structural_defects)]
    return Rendered(_finish(canvas, look_rng), regions, scene)
