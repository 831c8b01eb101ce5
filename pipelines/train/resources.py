"""How many GPUs a Ray Train worker (or a Tune trial) asks for.

`decide_gpus` is pure: it gets what the cluster has now (GPUs per alive node) and what
its autoscaler can add (node types with their GPUs per node and maximum node count)
and returns the request plus the one line to print, or raises `ResourceRequestError`
for a request no node of the cluster can ever meet. `cluster_gpu_view` reads those
facts from a running Ray: alive nodes, and the autoscaler's node types from the
cluster config the autoscaler reports to the GCS (Ray 2.x), else the
`~/ray_bootstrap_config.yaml` that `ray up` leaves on the head node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")


class ResourceRequestError(ValueError):
    """A GPU request that the cluster can never meet; the message says what to change."""


@dataclass(frozen=True)
class NodeType:
    """An autoscaler node type: GPUs on one such node, and how many such nodes it may start."""

    name: str
    gpus: float
    max_nodes: int  # -1: unbounded


@dataclass
class ClusterGpus:
    """GPUs of the alive nodes now, and the node types the autoscaler may start."""

    node_gpus: list[float] = field(default_factory=list)
    node_types: list[NodeType] = field(default_factory=list)

    @property
    def now(self) -> float:
        return sum(self.node_gpus)

    def can_autoscale(self) -> list[NodeType]:
        return [t for t in self.node_types if t.gpus > 0 and t.max_nodes != 0]

    def largest_node(self) -> float:
        """The most GPUs one node has or could have (a worker lives on one node)."""
        return max([*self.node_gpus, *(t.gpus for t in self.can_autoscale()), 0.0])

    def most(self) -> float:
        """Upper bound of the cluster's GPUs (infinite when a GPU node type is unbounded)."""
        scalable = self.can_autoscale()
        if any(t.max_nodes < 0 for t in scalable):
            return float("inf")
        return self.now + sum(t.gpus * t.max_nodes for t in scalable)

    def describe(self) -> str:
        scalable = ", ".join(f"{t.name} ({t.gpus:g} GPU x up to {'any' if t.max_nodes < 0 else t.max_nodes})"
                             for t in self.can_autoscale())
        now = f"{self.now:g} GPU on {len(self.node_gpus)} node(s) now"
        return now + (f"; autoscaled node types: {scalable}" if scalable else "")


@dataclass(frozen=True)
class GpuDecision:
    per_unit: float  # GPUs per worker (train) or per trial (tune)
    line: str  # what to print before any work starts

    @property
    def use_gpu(self) -> bool:
        return self.per_unit > 0


def decide_gpus(requested: float | None, units: int, cluster: ClusterGpus, unit: str = "worker",
                flag: str = "--gpus-per-worker") -> GpuDecision:
    """`requested` None means auto: one GPU per unit when the cluster has GPUs or can
    autoscale nodes that have them, else CPU. An explicit request is checked against
    the largest node and the cluster's most GPUs."""
    if requested is not None and requested < 0:
        raise ResourceRequestError(f"{flag} {requested:g}: expected 0 or more GPUs per {unit}")
    if requested is None:
        if cluster.now > 0 or cluster.can_autoscale():
            per = min(1.0, cluster.largest_node())
            return GpuDecision(per, f"using {per:g} GPU per {unit} ({cluster.describe()}); "
                                    f"{flag} 0 trains on CPU")
        return GpuDecision(0.0, f"training runs on CPU: the Ray cluster has no GPU and no GPU node type to "
                                f"autoscale; ask for GPUs with {flag} N on a cluster that has them")
    if requested == 0:
        return GpuDecision(0.0, f"training runs on CPU ({flag} 0)")
    total = requested * units
    if cluster.largest_node() < requested or cluster.most() < total:
        have = cluster.describe() if (cluster.now or cluster.can_autoscale()) else "no GPU and no GPU node type"
        raise ResourceRequestError(
            f"{flag} {requested:g} asks for {total:g} GPU ({units} {unit}(s) x {requested:g}, at most "
            f"{cluster.largest_node():g} per node) but the Ray cluster has {have}; lower {flag}, use "
            f"{flag} 0 for CPU, or add a GPU node type to the cluster")
    return GpuDecision(requested, f"using {requested:g} GPU per {unit} ({cluster.describe()})")


def node_types_from_bootstrap(config: dict[str, Any]) -> list[NodeType]:
    """Node types of a cluster launcher config (`available_node_types`, `max_workers`)."""
    types = []
    for name, spec in (config.get("available_node_types") or {}).items():
        resources = spec.get("resources") or {}
        max_nodes = int(spec.get("max_workers", config.get("max_workers", 0)) or 0)
        types.append(NodeType(name, float(resources.get("GPU", 0) or 0), max_nodes))
    return types


def _gcs_node_types() -> list[NodeType]:
    """Node types from the cluster config the autoscaler reported to the GCS (empty if none)."""
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # older or newer Ray without this private API: fall back to the file
        return []
    if config is None:
        return []
    return [NodeType(group.name or f"group{i}", float(group.resources.get("GPU", 0)), int(group.max_count))
            for i, group in enumerate(config.node_group_configs)]


def _bootstrap_node_types(path: Path = BOOTSTRAP_CONFIG) -> list[NodeType]:
    path = path.expanduser()
    if not path.is_file():
        return []
    import yaml

    try:
        return node_types_from_bootstrap(yaml.safe_load(path.read_text()) or {})
    except (yaml.YAMLError, AttributeError, TypeError, ValueError):
        return []


def cluster_gpu_view() -> ClusterGpus:
    """What the connected Ray cluster has now and what its autoscaler may add."""
    import ray

    node_gpus = [float(node.get("Resources", {}).get("GPU", 0)) for node in ray.nodes() if node.get("Alive")]
    return ClusterGpus(node_gpus, _gcs_node_types() or _bootstrap_node_types())
