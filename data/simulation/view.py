"""The `anomaly_simulation` training-set view: each item is a normal image and an anomaly
simulated from it (SLSG's "4 normal + 4 simulated per batch" is batch_size 4 of this view).

Options (plain values, the SLSG config keys of the same names; defaults are SLSG's generic
settings from METHODS.md):

    p_logical                    chance of a logical-style anomaly (else structural)
    logical_min_exp/max_exp      Perlin lattice scales 2^min..2^max of logical masks
    logical_threshold            their binarisation threshold
    logical_beta_max             logical opacity beta ~ U(0, logical_beta_max)
    logical_sources              source kinds drawn uniformly: other, shuffle, flip
    logical_rotation             max rotation (degrees) of another normal image
    structural_min_exp/max_exp   Perlin scales of structural masks
    structural_threshold         their threshold
    structural_beta_fixed(_p)    structural beta = fixed with probability _p ...
    structural_beta_max          ... else U(0, structural_beta_max)
    structural_ops               photometric ops applied to a structural source
    p_structural_self            chance the structural source is the image's permuted patches
    texture_dir                  texture folder ("" = scikit-image's bundled textures)
    perlin_rotation              max rotation (degrees) of the Perlin noise
    min_mask_area                minimum mask area in pixels at 256 px (scaled with the area)
    foreground                   none | threshold (masks.FOREGROUNDS)
    jitter_brightness/saturation colour jitter of every training image (normal and simulated)
    sim_draws                    simulations per image: the view has N x sim_draws items

Item k is image k mod N, draw k // N, simulated from its own generator seeded by
(seed, image index, draw): the same for every epoch, worker count and iteration order.
Keys: those of `make_item` for the (jittered) normal image, plus `simulated` (3 x S x S
normalised float), `simulated_mask` (S x S float 0/1), `simulated_logical` (1 logical-style,
0 structural) and `draw`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..dataset import make_item
from ..errors import DatasetError
from ..views import register_view
from .blend import blend, logical_beta, structural_beta
from .masks import FOREGROUNDS, foreground, perlin_anomaly_mask, scaled_min_area
from .sources import LOGICAL_SOURCES, load_textures, logical_source, structural_source

Rng = np.random.Generator


@dataclass(frozen=True)
class SimulationOptions:
    p_logical: float = 0.58
    logical_min_exp: int = 0
    logical_max_exp: int = 2
    logical_threshold: float = 0.4
    logical_beta_max: float = 0.25
    logical_sources: tuple[str, ...] = LOGICAL_SOURCES
    logical_rotation: float = 90.0
    structural_min_exp: int = 0
    structural_max_exp: int = 3
    structural_threshold: float = 0.5
    structural_beta_fixed: float = 0.75
    structural_beta_fixed_p: float = 0.25
    structural_beta_max: float = 0.9
    structural_ops: int = 3
    p_structural_self: float = 0.3
    texture_dir: str = ""
    perlin_rotation: float = 90.0
    min_mask_area: int = 49
    foreground: str = "threshold"
    jitter_brightness: float = 0.1
    jitter_saturation: float = 0.1
    sim_draws: int = 100

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "SimulationOptions":
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise DatasetError(f"unknown anomaly_simulation option(s) {unknown}; valid options: {', '.join(valid)}")
        values = dict(options)
        if isinstance(values.get("logical_sources"), str):
            values["logical_sources"] = tuple(s.strip() for s in values["logical_sources"].split(",") if s.strip())
        if "logical_sources" in values:
            values["logical_sources"] = tuple(values["logical_sources"])
        made = cls(**values)
        made.validate()
        return made

    def validate(self) -> None:
        checks = [("p_logical", 0 <= self.p_logical <= 1, "in [0, 1]"),
                  ("p_structural_self", 0 <= self.p_structural_self <= 1, "in [0, 1]"),
                  ("structural_beta_fixed_p", 0 <= self.structural_beta_fixed_p <= 1, "in [0, 1]")]
        for key in ("logical_beta_max", "structural_beta_fixed", "structural_beta_max"):
            checks.append((key, 0 <= getattr(self, key) <= 1, "in [0, 1]"))
        for key in ("logical_threshold", "structural_threshold"):
            checks.append((key, -1 < getattr(self, key) < 1, "in (-1, 1) (Perlin noise spans [-1, 1])"))
        for kind in ("logical", "structural"):
            low, high = getattr(self, f"{kind}_min_exp"), getattr(self, f"{kind}_max_exp")
            checks.append((f"{kind}_min_exp", 0 <= low <= high <= 8, f"0 <= {kind}_min_exp <= {kind}_max_exp <= 8"))
        checks += [("structural_ops", 0 <= self.structural_ops, ">= 0"),
                   ("min_mask_area", self.min_mask_area >= 1, ">= 1"),
                   ("sim_draws", self.sim_draws >= 1, ">= 1"),
                   ("foreground", self.foreground in FOREGROUNDS, f"one of {sorted(FOREGROUNDS)}"),
                   ("logical_sources", bool(self.logical_sources) and set(self.logical_sources) <= set(LOGICAL_SOURCES),
                    f"a non-empty subset of {list(LOGICAL_SOURCES)}")]
        for key in ("perlin_rotation", "logical_rotation", "jitter_brightness", "jitter_saturation"):
            checks.append((key, getattr(self, key) >= 0, ">= 0"))
        for key, ok, what in checks:
            if not ok:
                raise DatasetError(f"anomaly_simulation option {key!r} must be {what}, got {getattr(self, key)!r}")


def color_jitter(image: np.ndarray, rng: Rng, brightness: float, saturation: float) -> np.ndarray:
    """Brightness x U(1 - b, 1 + b), then saturation x U(1 - s, 1 + s) (blend with grey)."""
    out = image.astype(np.float32)
    if brightness > 0:
        out *= rng.uniform(1 - brightness, 1 + brightness)
    if saturation > 0:
        grey = (out @ np.float32([0.299, 0.587, 0.114]))[..., None]
        out = grey + (out - grey) * rng.uniform(1 - saturation, 1 + saturation)
    return np.clip(out, 0, 255).astype(np.uint8)


def simulate(image: np.ndarray, others: Sequence[np.ndarray], textures: Sequence[np.ndarray], rng: Rng,
             o: SimulationOptions, fg: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, bool]:
    """(I_A uint8 H x W x 3, mask bool H x W, logical?) for one uint8 RGB image; `fg` its
    foreground (default: computed under `o.foreground`)."""
    hw = image.shape[:2]
    min_area = scaled_min_area(o.min_mask_area, max(hw))
    fg = foreground(image, o.foreground) if fg is None else fg
    logical = bool(rng.random() < o.p_logical)
    if logical:
        mask = perlin_anomaly_mask(hw, rng, o.logical_threshold, o.logical_min_exp, o.logical_max_exp,
                                   o.perlin_rotation, min_area, fg)
        source = logical_source(image, others, rng, o.logical_sources, o.logical_rotation)
        beta = logical_beta(rng, o.logical_beta_max)
    else:
        mask = perlin_anomaly_mask(hw, rng, o.structural_threshold, o.structural_min_exp, o.structural_max_exp,
                                   o.perlin_rotation, min_area, fg)
        source = structural_source(image, textures, rng, o.p_structural_self, o.structural_ops)
        beta = structural_beta(rng, o.structural_beta_fixed, o.structural_beta_fixed_p, o.structural_beta_max)
    return blend(image, source, mask, beta), mask, logical


class AnomalySimulationView(Dataset):
    """Normal + simulated pairs over an AnomalyDataset's decoded images (see module doc)."""

    def __init__(self, dataset, options: SimulationOptions, seed: int = 0) -> None:
        if len(dataset) == 0:
            raise DatasetError("anomaly_simulation needs at least one training image")
        self.dataset = dataset
        self.options = options
        self.seed = int(seed)
        size = max(dataset.images[0].shape[:2])
        self.textures = load_textures(options.texture_dir, size)
        self._foregrounds: dict[int, np.ndarray] = {}  # per image, of the image before jitter

    def foreground(self, i: int) -> np.ndarray:
        if i not in self._foregrounds:
            self._foregrounds[i] = foreground(self.dataset.images[i], self.options.foreground)
        return self._foregrounds[i]

    def __len__(self) -> int:
        return len(self.dataset) * self.options.sim_draws

    def __getitem__(self, index: int) -> dict:
        n = len(self.dataset)
        i, draw = int(index) % n, int(index) // n
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, i, draw]))
        o, images = self.options, self.dataset.images
        image = color_jitter(images[i], rng, o.jitter_brightness, o.jitter_saturation)
        others = [im for j, im in enumerate(images) if j != i]
        simulated, mask, logical = simulate(image, others, self.textures, rng, o, self.foreground(i))
        ds = self.dataset
        item = make_item(ds.transform, image, np.zeros(image.shape[:2], np.uint8), ds.samples[i], ds.orig_sizes[i], i)
        item["simulated"] = ds.transform(image=simulated)["image"]
        item["simulated_mask"] = torch.from_numpy(mask.astype(np.float32))
        item["simulated_logical"] = int(logical)
        item["draw"] = draw
        return item


@register_view("anomaly_simulation", synthesises=("texture",))  # Perlin-masked texture blends
def anomaly_simulation_view(dataset, options: Mapping[str, Any], seed: int) -> AnomalySimulationView:
    """Registered builder: `Stage.data = {"view": "anomaly_simulation", **options}`."""
    return AnomalySimulationView(dataset, SimulationOptions.from_mapping(options), seed)


__all__ = ["AnomalySimulationView", "SimulationOptions", "anomaly_simulation_view", "color_jitter", "simulate"]
