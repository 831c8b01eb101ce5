"""Anomaly detection metrics of the MVTec LOCO / MVTec AD protocols (numpy, no I/O).

Image level (`image_auroc`, `roc_curve`, `image_aurocs`): rank AUROC with ties counted
half. `image_auroc` (the headline) is the mean of good-vs-logical and good-vs-structural
over the pairs that can be formed; with only structural anomalies (MVTec AD) it equals
good vs all. `image_auroc_all` is good vs (logical + structural).

Pixel level, maps at the image's original size, ground truth = `Region`s:
- `pixel_auroc`: every pixel of every image; positives = the union of the regions.
  `pixel_auroc_logical` / `pixel_auroc_structural`: the same over good + that kind only.
- `aupro` (MVTec AD): PRO per 8-connected component of the union mask, FPR over all
  defect-free pixels, area under PRO-vs-FPR up to `max_fpr`, divided by `max_fpr`.
- `auc_spro` (MVTec LOCO): per region, sPRO(t) = min(TP area(t) / saturation area, 1),
  averaged over all regions; FPR(t) pooled over all pixels outside every region of all
  images of the set (good and anomalous); trapezoid area from FPR 0 to the limit, the
  curve linearly interpolated at exactly the limit, divided by the limit. The LOCO
  number is the mean over the sets good+logical and good+structural.

A pixel is positive at threshold t when its value >= t; values are compared as float32.

How the curves are computed (one scheme for all three pixel metrics). sPRO is a sum of
per-pixel weights: rank a region's values in descending order; the k-th contributes
min(k/s, 1) - min((k-1)/s, 1) (s = saturation area), so sPRO(t) = sum of the weights of
the region's pixels >= t; PRO is the case s = component area and pixel AUROC has
weight 1. Every curve is thus (negative mass >= t, positive weight >= t), a weighted
ROC curve, evaluated at thresholds in the order-preserving uint32 key space of float32:
- exact mode (while at most `max_exact_pixels` values are stored): every distinct value
  is a threshold; the trapezoid between consecutive distinct values counts ties half,
  exactly as the official definition does.
- binned mode (beyond that, or `max_exact_pixels=0`): values are binned as value - c,
  c = the median pixel value seen at the switch (so the bins are fine where the
  maps' values lie, whatever their offset), into a histogram over the top `hist_bits`
  bits of the key (default 22: 2^22 bins, a relative step of 2^-13 ~ 1.2e-4 of
  |value - c|; exact ties stay exact). Thresholds are the bin edges, where FPR and sPRO
  are still exact points of the true curve (the shift is monotone); only the chords
  between adjacent edges approximate it, so the error is at most (largest defect-free
  mass of one bin below the limit) / limit. Measured against the exact path on smooth
  maps of several offsets and spreads: < 1e-6 (tests pin < 1e-3).
Maps are ingested image by image (`PixelAccumulator`, `LocoEvaluator`): in binned mode
memory is bounded by the histograms (32 MiB each, at most 9) and a 2^24-value buffer
per histogram, not by the test set; in exact mode by `max_exact_pixels`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # importing logicad.data at run time would pull in torch
    from logicad.data.ground_truth import Region

KINDS = ("good", "logical", "structural")
ANOMALOUS_KINDS = ("logical", "structural")
SPRO_LIMITS = (0.05, 0.3)
AUPRO_LIMIT = 0.3
DEFAULT_MAX_EXACT_PIXELS = 2_000_000
DEFAULT_HIST_BITS = 22
_FLUSH_VALUES = 1 << 24  # binned mode: buffered values per bincount
_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)


# ----------------------------------------------------------------------------- image level


def _checked_scores(scores: Iterable[float]) -> np.ndarray:
    values = np.asarray(list(scores) if not isinstance(scores, np.ndarray) else scores, dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("image scores contain NaN")
    return values.reshape(-1)


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, tied values get the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def image_auroc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Mann-Whitney AUROC (ties count half); None unless both classes are present."""
    values, positive = _checked_scores(scores), np.asarray(labels).astype(bool).reshape(-1)
    if values.shape != positive.shape:
        raise ValueError(f"{values.size} scores but {positive.size} labels")
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = _average_ranks(values)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """ROC points (fpr, tpr) from (0, 0) to (1, 1), one per distinct score."""
    values, positive = _checked_scores(scores), np.asarray(labels).astype(bool).reshape(-1)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if values.shape != positive.shape or n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve needs as many labels as scores and both classes present")
    order = np.argsort(-values, kind="stable")
    values, positive = values[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(values)), values.size - 1]
    tps = np.cumsum(positive)[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / n_neg], np.r_[0.0, tps / n_pos]


def _mean_or_none(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def image_aurocs(scores: Sequence[float], kinds: Sequence[str]) -> dict[str, float | None]:
    """Good vs logical, good vs structural, their mean (headline) and good vs all."""
    kinds = np.asarray(kinds)
    scores = _checked_scores(scores)
    out: dict[str, float | None] = {}
    for kind in ANOMALOUS_KINDS:
        keep = (kinds == "good") | (kinds == kind)
        out[f"image_auroc_{kind}"] = image_auroc(scores[keep], kinds[keep] == kind)
    out["image_auroc_all"] = image_auroc(scores, kinds != "good")
    out["image_auroc"] = _mean_or_none(out[f"image_auroc_{k}"] for k in ANOMALOUS_KINDS)
    return {k: out[k] for k in ("image_auroc", "image_auroc_logical", "image_auroc_structural", "image_auroc_all")}


def bootstrap_aurocs(scores: Sequence[Sequence[float]], kinds: Sequence[str], resamples: int = 500,
                     seed: int = 0) -> np.ndarray:
    """Headline image AUROC (mean of logical and structural) of each of several scorers of the same
    images, on `resamples` bootstrap draws of those images: resamples x scorers. Each draw takes as
    many images of each kind as there are, with replacement, and every scorer is scored on the
    same draw, so the spread of a column is its standard error and that of a difference of
    columns is the paired one (far smaller where two scorers agree on most images)."""
    kinds = np.asarray(kinds)
    values = np.stack([_checked_scores(s) for s in scores])
    if values.shape[1] != kinds.size:
        raise ValueError(f"{values.shape[1]} scores per scorer but {kinds.size} kinds")
    by_kind = [np.flatnonzero(kinds == kind) for kind in ("good", *ANOMALOUS_KINDS)]
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(values)))
    for r in range(resamples):
        draw = np.concatenate([rng.choice(rows, rows.size) for rows in by_kind if rows.size])
        for j, row in enumerate(values):
            out[r, j] = image_aurocs(row[draw], kinds[draw])["image_auroc"]
    return out


# ----------------------------------------------------------------------------- value keys


def float_keys(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 keys of float32 values (-0.0 and +0.0 share one key)."""
    array = np.ascontiguousarray(values, dtype=np.float32)
    if np.isnan(array).any():
        raise ValueError("anomaly map contains NaN")
    bits = array.view(np.uint32)
    keys = bits ^ ((bits >> np.uint32(31)) * np.uint32(0x7FFFFFFF) | np.uint32(0x80000000))
    keys[keys == np.uint32(0x7FFFFFFF)] = np.uint32(0x80000000)
    return keys


def key_values(keys: np.ndarray) -> np.ndarray:
    """The float32 values of `float_keys` keys."""
    positive = (keys & np.uint32(0x80000000)) != 0
    return np.where(positive, keys ^ np.uint32(0x80000000), ~keys).astype(np.uint32).view(np.float32)


class _Sample:
    """A (weighted) sample of value keys: kept exactly, or binned into a histogram."""

    def __init__(self, weighted: bool):
        self.weighted = weighted
        self.total = 0.0  # total weight (count when unweighted)
        self.stored = 0  # values currently buffered
        self._parts: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        self.bits: int | None = None  # set in binned mode
        self._hist: np.ndarray | None = None

    def add(self, keys: np.ndarray, weights: np.ndarray | None = None) -> None:
        if keys.size == 0:
            return
        self.total += float(keys.size if weights is None else weights.sum())
        if self.bits is not None:
            keys = keys >> np.uint32(32 - self.bits)
        self._parts.append((keys, weights))
        self.stored += keys.size
        self._sorted = None
        if self.bits is not None and self.stored >= _FLUSH_VALUES:
            self.histogram()

    def to_bins(self, bits: int, offset: np.float32) -> None:
        """Switch to binned mode: a histogram over the top `bits` bits of key(value - offset)."""
        self.bits = bits
        self._parts = [(float_keys(key_values(k) - offset) >> np.uint32(32 - bits), w) for k, w in self._parts]
        self._sorted = None
        self.histogram()

    def histogram(self) -> np.ndarray | None:
        """Binned mode: the histogram with every buffered value added (None while empty)."""
        if self._parts:
            bins = np.concatenate([k for k, _ in self._parts])
            weights = np.concatenate([w for _, w in self._parts]) if self.weighted else None
            counts = np.bincount(bins, weights, minlength=1 << self.bits)
            if self._hist is None:
                self._hist = counts.astype(np.float64)
            else:
                self._hist += counts
        self._parts, self.stored = [], 0
        return self._hist

    def sorted_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Exact mode: ascending keys and the cumulative weight before each (length n + 1)."""
        if self._sorted is None:
            keys = np.concatenate([k for k, _ in self._parts]) if self._parts else np.zeros(0, np.uint32)
            if self.weighted and self._parts:
                order = np.argsort(keys, kind="stable")
                cum = np.cumsum(np.concatenate([w for _, w in self._parts])[order])
                keys = keys[order]
            else:
                keys = np.sort(keys)
                cum = np.arange(1, keys.size + 1, dtype=np.float64)
            self._sorted = (keys, np.r_[0.0, cum])
        return self._sorted

    def mass_ge(self, thresholds: np.ndarray) -> np.ndarray:
        """Weight of the values >= each threshold (keys; bin indices in binned mode)."""
        if self.bits is not None:
            hist = self.histogram()
            if hist is None:
                return np.zeros(thresholds.size)
            return np.cumsum(hist[::-1])[::-1][thresholds]
        keys, cum = self.sorted_keys()
        return cum[-1] - cum[np.searchsorted(keys, thresholds, side="left")]


# ----------------------------------------------------------------------------- curves


def _thresholds(samples: list[_Sample]) -> np.ndarray:
    """Ascending candidate thresholds: distinct keys (exact) or occupied bins (binned)."""
    if samples[0].bits is not None:
        hists = [h for h in (s.histogram() for s in samples) if h is not None]
        return np.flatnonzero(sum(hists))
    return np.unique(np.concatenate([s.sorted_keys()[0] for s in samples]))


def _curve(neg: list[_Sample], pos: list[_Sample], pos_norm: float, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """(FPR, y) ascending from (0, 0); only as far as the first point with FPR >= limit."""
    thresholds = _thresholds(neg + pos)
    fpr = sum(s.mass_ge(thresholds) for s in neg) / sum(s.total for s in neg)
    first = max(int(np.count_nonzero(fpr >= limit)) - 1, 0)  # fpr falls as thresholds rise
    thresholds, fpr = thresholds[first:], fpr[first:]
    y = sum(s.mass_ge(thresholds) for s in pos) / pos_norm
    return np.r_[0.0, fpr[::-1]], np.r_[0.0, y[::-1]]


def normalised_area(fpr: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under y(fpr) on [0, limit], interpolated at the limit, / limit.

    `fpr` must be non-decreasing, start at 0 and reach `limit`."""
    if not 0.0 < limit <= 1.0:
        raise ValueError(f"FPR limit must be in (0, 1], got {limit}")
    j = int(np.searchsorted(fpr, limit, side="left"))
    if j == 0 or j == len(fpr):
        raise ValueError(f"the curve's FPR must start below and reach the limit {limit}")
    y_limit = y[j - 1] + (y[j] - y[j - 1]) * (limit - fpr[j - 1]) / (fpr[j] - fpr[j - 1])
    xs, ys = np.r_[fpr[:j], limit], np.r_[y[:j], y_limit]
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1])) / 2.0 / limit)


def saturated_weights(keys: np.ndarray, saturation_area: float) -> tuple[np.ndarray, np.ndarray]:
    """The region values that can raise sPRO and their weights (they sum to min(n/s, 1)).

    Ranked descending, value k weighs min(k/s, 1) - min((k-1)/s, 1): 1/s for the top
    ceil(s) - 1, the remainder for rank ceil(s), 0 (dropped) below."""
    if not saturation_area > 0:
        raise ValueError(f"saturation area must be > 0, got {saturation_area}")
    n = keys.size
    m = min(n, math.ceil(saturation_area))
    top = np.partition(keys, n - m)[n - m:]  # top[0] is the m-th largest
    weights = np.full(m, 1.0 / saturation_area)
    weights[0] = min(m / saturation_area, 1.0) - (m - 1) / saturation_area
    return top, weights


# ----------------------------------------------------------------------------- accumulation


def _region_masks(regions: Sequence[Region], shape: tuple[int, ...]) -> list[np.ndarray]:
    masks = []
    for region in regions:
        mask = np.asarray(region.mask, dtype=bool)
        if mask.shape != shape:
            raise ValueError(f"anomaly map is {_size(shape)} (W x H) but region {region.defect_name!r} has a "
                             f"{_size(mask.shape)} mask; resize the map to the image's original size first")
        if not mask.any():
            raise ValueError(f"region {region.defect_name!r} has an empty mask")
        masks.append(mask)
    return masks


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(n) for n in shape[::-1])


def _component_ids(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component id (1..n) of each True pixel in row-major order, and n."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]  # same row-major order of True pixels
    labels, n = ndimage.label(box, structure=_EIGHT_CONNECTED)
    return labels[box], n


class _ImageSet:
    """Pixel samples of one group of images."""

    def __init__(self) -> None:
        self.negative = _Sample(weighted=False)  # pixels outside every region
        self.union = _Sample(weighted=False)  # pixels inside some region
        self.components = _Sample(weighted=True)  # union pixels, weight 1 / component area
        self.regions = _Sample(weighted=True)  # region pixels, saturated sPRO weights
        self.n_components = 0
        self.n_regions = 0

    def samples(self) -> list[_Sample]:
        return [self.negative, self.union, self.components, self.regions]

    def add(self, keys: np.ndarray, regions: Sequence[Region], masks: list[np.ndarray]) -> None:
        if not masks:
            self.negative.add(keys.reshape(-1))
            return
        union = np.logical_or.reduce(masks) if len(masks) > 1 else masks[0]
        self.negative.add(keys[~union])
        inside = keys[union]
        self.union.add(inside)
        ids, n = _component_ids(union)
        self.components.add(inside, 1.0 / np.bincount(ids)[ids])
        self.n_components += n
        for region, mask in zip(regions, masks):
            self.regions.add(*saturated_weights(keys[mask], float(region.saturation_area)))
            self.n_regions += 1


class PixelAccumulator:
    """Streams anomaly maps + regions of named image groups; pixel metrics over groups.

    Exact while at most `max_exact_pixels` pixel values are stored, then (and for good)
    binned over the top `hist_bits` bits of the float32 keys (module docstring)."""

    def __init__(self, max_exact_pixels: int = DEFAULT_MAX_EXACT_PIXELS, hist_bits: int = DEFAULT_HIST_BITS):
        if not 8 <= hist_bits <= 26:
            raise ValueError(f"hist_bits must be in [8, 26], got {hist_bits}")
        self.max_exact_pixels = max_exact_pixels
        self.hist_bits = hist_bits
        self.groups: dict[str, _ImageSet] = {}
        self.offset: np.float32 | None = None  # binned mode: values are binned as value - offset

    def add(self, group: str, anomaly_map: np.ndarray, regions: Sequence[Region] = ()) -> None:
        amap = np.asarray(anomaly_map)
        if amap.ndim != 2:
            raise ValueError(f"anomaly map must be 2-D (H x W), got shape {amap.shape}")
        masks = _region_masks(regions, amap.shape)
        image_set = self.groups.setdefault(group, _ImageSet())
        if self.offset is None:
            image_set.add(float_keys(amap), regions, masks)
            if self._stored() > self.max_exact_pixels:
                self._to_bins()
            return
        for sample in image_set.samples():
            if sample.bits is None:
                sample.to_bins(self.hist_bits, self.offset)
        image_set.add(float_keys(np.asarray(amap, dtype=np.float32) - self.offset), regions, masks)

    def _stored(self) -> int:
        return sum(s.stored for g in self.groups.values() for s in g.samples())

    def _to_bins(self) -> None:
        """Bin from now on, centred on the median pixel value seen so far."""
        keys = np.concatenate([s.sorted_keys()[0] for g in self.groups.values() for s in (g.negative, g.union)])
        middle = np.partition(keys, keys.size // 2)[keys.size // 2: keys.size // 2 + 1] if keys.size else keys
        self.offset = key_values(middle)[0] if keys.size else np.float32(0.0)
        for group in self.groups.values():
            for sample in group.samples():
                sample.to_bins(self.hist_bits, self.offset)

    @property
    def binned(self) -> bool:
        return self.offset is not None

    def _sets(self, groups: Iterable[str] | None) -> list[_ImageSet]:
        names = list(self.groups) if groups is None else [g for g in groups if g in self.groups]
        return [self.groups[g] for g in names]

    def pixel_auroc(self, groups: Iterable[str] | None = None) -> float | None:
        """AUROC over all pixels of the groups; None without positive or negative pixels."""
        sets = self._sets(groups)
        n_pos = sum(s.union.total for s in sets)
        if n_pos == 0 or sum(s.negative.total for s in sets) == 0:
            return None
        fpr, tpr = _curve([s.negative for s in sets], [s.union for s in sets], n_pos, 1.0)
        return normalised_area(fpr, tpr, 1.0)

    def aupro(self, max_fpr: float = AUPRO_LIMIT, groups: Iterable[str] | None = None) -> float | None:
        """MVTec AD AUPRO up to `max_fpr` (normalised); None without regions."""
        sets = self._sets(groups)
        n = sum(s.n_components for s in sets)
        if n == 0 or sum(s.negative.total for s in sets) == 0:
            return None
        fpr, pro = _curve([s.negative for s in sets], [s.components for s in sets], n, max_fpr)
        return normalised_area(fpr, pro, max_fpr)

    def auc_spro(self, max_fpr: float = SPRO_LIMITS[0], groups: Iterable[str] | None = None) -> float | None:
        """MVTec LOCO AUC-sPRO up to `max_fpr` (normalised) over the groups taken as one set."""
        sets = self._sets(groups)
        n = sum(s.n_regions for s in sets)
        if n == 0 or sum(s.negative.total for s in sets) == 0:
            return None
        fpr, spro = _curve([s.negative for s in sets], [s.regions for s in sets], n, max_fpr)
        return normalised_area(fpr, spro, max_fpr)


# ----------------------------------------------------------------------------- the LOCO protocol


def _spro_key(limit: float) -> str:
    return f"spro_{limit:g}"


class LocoEvaluator:
    """Streaming evaluation of one category: `add` each test image, then `result()`.

    `result()` gives the results-contract metrics; a metric the data cannot give is None:
    no logical images -> the logical AUROC / sPRO are None and `image_auroc` / `spro_*`
    are the structural ones; no regions at all (or an image added without a map) ->
    every pixel metric is None."""

    def __init__(self, max_exact_pixels: int = DEFAULT_MAX_EXACT_PIXELS, hist_bits: int = DEFAULT_HIST_BITS,
                 spro_limits: Sequence[float] = SPRO_LIMITS, aupro_limit: float = AUPRO_LIMIT):
        self.pixels = PixelAccumulator(max_exact_pixels, hist_bits)
        self.spro_limits = tuple(spro_limits)
        self.aupro_limit = aupro_limit
        self.scores: list[float] = []
        self.kinds: list[str] = []
        self.maps_missing = 0

    def add(self, kind: str, score: float, anomaly_map: np.ndarray | None, regions: Sequence[Region] = ()) -> None:
        """One test image: its kind, image score, map at original size (or None), regions."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind == "good" and len(regions):
            raise ValueError("a good image cannot have defect regions")
        if anomaly_map is None:
            self.maps_missing += 1
        else:
            self.pixels.add(kind, anomaly_map, regions)
        self.scores.append(float(score))
        self.kinds.append(kind)

    def spro(self, kind: str, limit: float) -> float | None:
        """AUC-sPRO of good + `kind` images up to `limit`; None without `kind` regions."""
        if self.maps_missing:
            return None
        groups = self.pixels.groups
        if kind not in groups or groups[kind].n_regions == 0:
            return None
        return self.pixels.auc_spro(limit, ("good", kind))

    def pixel_metrics(self) -> dict[str, float | None]:
        """pixel_auroc (all, and good + each kind), spro_<limit> (mean over logical / structural), aupro_<limit>."""
        whole = None if self.maps_missing else self.pixels
        out: dict[str, float | None] = {"pixel_auroc": whole.pixel_auroc() if whole else None}
        for kind in ANOMALOUS_KINDS:  # good + that kind: says which kind pulls pixel_auroc down
            present = whole is not None and kind in whole.groups
            out[f"pixel_auroc_{kind}"] = whole.pixel_auroc(("good", kind)) if present else None
        for limit in self.spro_limits:
            out[_spro_key(limit)] = _mean_or_none(self.spro(kind, limit) for kind in ANOMALOUS_KINDS)
        out[f"aupro_{self.aupro_limit:g}"] = whole.aupro(self.aupro_limit) if whole else None
        return out

    def counts(self) -> dict[str, int]:
        return {"n_test": len(self.kinds), **{f"n_{k}": self.kinds.count(k) for k in KINDS}}

    def result(self) -> dict[str, Any]:
        """The results-contract metrics this module can fill, plus the per-kind counts."""
        return {**image_aurocs(self.scores, self.kinds), **self.pixel_metrics(), **self.counts()}


def compute_metrics(scores: Sequence[float], kinds: Sequence[str], maps: Sequence[np.ndarray | None] | None = None,
                    regions: Sequence[Sequence[Region]] | None = None, **options: Any) -> dict[str, Any]:
    """All metrics of `LocoEvaluator.result()` for in-memory inputs (one entry per image)."""
    lengths = {len(scores), len(kinds)} | {len(x) for x in (maps, regions) if x is not None}
    if len(lengths) > 1:
        raise ValueError("scores, kinds, maps and regions must have one entry per image")
    evaluator = LocoEvaluator(**options)
    for i, (score, kind) in enumerate(zip(scores, kinds)):
        evaluator.add(kind, score, None if maps is None else maps[i], () if regions is None else regions[i])
    return evaluator.result()


def _one_set(maps: Sequence[np.ndarray], regions: Sequence[Sequence[Region]], **options: Any) -> PixelAccumulator:
    if len(maps) != len(regions):
        raise ValueError(f"{len(maps)} maps but {len(regions)} region lists")
    pixels = PixelAccumulator(**options)
    for amap, image_regions in zip(maps, regions):
        pixels.add("all", amap, image_regions)
    return pixels


def pixel_auroc(maps: Sequence[np.ndarray], regions: Sequence[Sequence[Region]], **options: Any) -> float | None:
    """Pixel AUROC over all pixels of the images; positives = union of each image's regions."""
    return _one_set(maps, regions, **options).pixel_auroc()


def aupro(maps: Sequence[np.ndarray], regions: Sequence[Sequence[Region]], max_fpr: float = AUPRO_LIMIT,
          **options: Any) -> float | None:
    """MVTec AD AUPRO (connected components of the union mask) up to `max_fpr`, normalised."""
    return _one_set(maps, regions, **options).aupro(max_fpr)


def auc_spro(maps: Sequence[np.ndarray], regions: Sequence[Sequence[Region]], max_fpr: float = SPRO_LIMITS[0],
             **options: Any) -> float | None:
    """MVTec LOCO AUC-sPRO of one image set (e.g. good + logical) up to `max_fpr`, normalised."""
    return _one_set(maps, regions, **options).auc_spro(max_fpr)
