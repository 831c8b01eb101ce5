"""`Fusion`: several trained models of one category scored as one model.

Every member scores the image at its own input size; its image score and map are normalised
by statistics of its outputs on validation normals (`finalize`) and combined by a rule
(`scoring`). The image score fuses the members' image scores (each member's own: a map's
maximum, a top-k mean, a Mahalanobis distance), the map fuses their maps; both are computed
together by `score`, so the fused image score is not the fused map's maximum.

The members are built from their method names and configs (`members`, JSON) and carry their
weights and statistics in this model's state dict: a saved fusion needs neither the registry
nor the members' files, and later versions of a member do not change it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import restoring_saved_weights
from ..base import Collective, ConfigError, Method, MethodConfig, build_method, method_class, register
from . import scoring


@dataclass
class FusionConfig(MethodConfig):
    """The fusion's keys: its members (fixed when it is built) and how their outputs combine."""

    #: the largest member input size: the fusion's input, resized for each smaller member
    image_size: int = 256
    batch_size: int = 8
    #: nothing is trained
    max_steps: int = 1
    #: JSON list of {"ref": where the member came from (pinned), "method": name, "config": {...}}
    members: str = "[]"
    #: score-only: each member's outputs on its normal scale ("zscore" | "quantile"); the rank
    #: rule uses the empirical CDF whatever this says
    norm: str = "zscore"
    #: score-only: "sum" (weighted mean), "max", "rank" (weighted mean of CDF values)
    rule: str = "sum"
    #: score-only: one weight per member (>= 0); () = equal weights
    weights: tuple[float, ...] = ()

    CHOICES: ClassVar[dict[str, tuple[str, ...]]] = {
        **MethodConfig.CHOICES, "norm": scoring.NORMS, "rule": scoring.RULES}
    SCORE_ONLY: ClassVar[tuple[str, ...]] = ("norm", "rule", "weights")

    def member_specs(self) -> list[dict[str, Any]]:
        try:
            specs = json.loads(self.members)
        except ValueError:
            raise ConfigError(f"config key 'members' must be a JSON list of members, got {self.members[:80]!r}") \
                from None
        if not isinstance(specs, list) or not all(isinstance(s, dict) and {"method", "config"} <= set(s)
                                                  for s in specs):
            raise ConfigError("config key 'members' must be a JSON list of {\"method\", \"config\", \"ref\"}")
        return specs

    def validate(self) -> None:
        super().validate()
        specs = self.member_specs()
        self.check([
            ("weights", len(self.weights) in (0, len(specs)), f"{len(specs)} values (one per member) or empty"),
            ("weights", all(w >= 0 for w in self.weights) and (not self.weights or sum(self.weights) > 0),
             "values >= 0, not all zero"),
        ])

    def member_weights(self) -> tuple[float, ...]:
        return tuple(self.weights) or (1.0,) * len(self.member_specs())


@register
class Fusion(Method):
    """Members -> per-member normalised image scores and maps -> one score and map."""

    name = "fusion"
    config_cls = FusionConfig
    config: FusionConfig
    trains = False

    def __init__(self, config: FusionConfig | None = None) -> None:
        super().__init__(config or FusionConfig())
        specs = self.config.member_specs()
        if not specs:
            raise ConfigError("config key 'members': a fusion needs at least one member")
        with restoring_saved_weights():  # members' weights come from their state dicts
            self.members = nn.ModuleList(
                build_method(s["method"], method_class(s["method"]).config_cls.build(s["config"])) for s in specs)
        count = len(specs)
        self.register_buffer("score_stats", torch.zeros(count, 3 + len(scoring.GRID) - 1))
        self.register_buffer("map_stats", torch.zeros(count, 3 + len(scoring.GRID) - 1))
        self.register_buffer("finalized", torch.tensor(False))

    @classmethod
    def from_members(cls, members: list[tuple[str, Method]], **keys: Any) -> "Fusion":
        """A fusion of trained `members` ((pinned ref, method) pairs), their weights copied in."""
        specs = [{"ref": ref, "method": m.name, "config": m.config.to_dict()} for ref, m in members]
        size = max(m.config.image_size for _, m in members)
        config = FusionConfig.build({"members": json.dumps(specs), "image_size": size, **keys})
        fusion = cls(config)
        for target, (_, member) in zip(fusion.members, members):
            target.load_state_dict(member.state_dict())
        return fusion.eval()

    def stages(self) -> list:
        return []  # nothing to train: `finalize` fits the normalisation

    def training_views(self) -> list[dict[str, Any]]:
        """Every member's: the fusion's objective must not score anomalies a member learnt from."""
        return [view for member in self.members for view in member.training_views()]

    # --- members ----------------------------------------------------------------------
    @torch.no_grad()
    def member_outputs(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """B x 3 x S x S -> ([B x 1 x S x S raw map per member], [B raw image score per member])."""
        size = images.shape[-2:]
        maps, scores = [], []
        for member in self.members:
            side = member.config.image_size
            x = images if tuple(size) == (side, side) else F.interpolate(
                images, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
            amap, score = member.score(x)
            if amap.shape[-2:] != size:
                amap = F.interpolate(amap.float(), size=size, mode="bilinear", align_corners=False)
            maps.append(amap.float())
            scores.append(score.float())
        return maps, scores

    def finalize(self, loader: Iterable[dict], collective: Collective = Collective()) -> None:
        """Normalisation statistics of every member's image scores and map pixels on normal images."""
        maps: list[list[torch.Tensor]] = [[] for _ in self.members]
        scores: list[list[torch.Tensor]] = [[] for _ in self.members]
        for batch in loader:
            batch_maps, batch_scores = self.member_outputs(batch["image"])
            for i, (m, s) in enumerate(zip(batch_maps, batch_scores)):
                maps[i].append(F.adaptive_avg_pool2d(m, min(64, m.shape[-1])).cpu())  # bounded memory
                scores[i].append(s.cpu())
        for i in range(len(self.members)):
            self.score_stats[i] = scoring.statistics(collective.cat(torch.cat(scores[i])))
            self.map_stats[i] = scoring.statistics(collective.cat(torch.cat(maps[i])))
        self.finalized.fill_(True)

    # --- scoring ----------------------------------------------------------------------
    @torch.no_grad()
    def score_parts(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        maps, scores = self.member_outputs(images)
        return {**{f"map_{i}": m for i, m in enumerate(maps)}, **{f"score_{i}": s for i, s in enumerate(scores)}}

    @torch.no_grad()
    def scores_from_parts(self, parts: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c, count = self.config, len(self.members)
        maps = scoring.combine([parts[f"map_{i}"] for i in range(count)], list(self.map_stats), c.norm, c.rule,
                               c.member_weights())
        return maps, self.image_scores_from_parts(parts)

    @torch.no_grad()
    def image_scores_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused image scores alone (a sweep's trial needs no map: combining maps is most of its time)."""
        c = self.config
        return scoring.combine([parts[f"score_{i}"] for i in range(len(self.members))], list(self.score_stats),
                               c.norm, c.rule, c.member_weights())

    @torch.no_grad()
    def maps_from_parts(self, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.scores_from_parts(parts)[0]

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scores_from_parts(self.score_parts(images))

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.score(images)[0]

    def describe(self) -> list[str]:
        c = self.config
        lines = [f"member {i}: {s.get('ref', '?')} ({s['method']}, {s['config'].get('image_size')} px)"
                 for i, s in enumerate(c.member_specs())]
        return [*lines, f"rule {c.rule}, norm {c.norm}, weights {list(c.member_weights())}"]
