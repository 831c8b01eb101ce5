"""The generic training loop's contract, run bare (no Ray) with a local session: several
optimizers after one backward, per-stage batch size and training-set view, `start_stage`
on entry and on resume, the split `finalize` reads, deferred loss reads, non-finite losses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from logicad.data.views import VIEWS, register_view, training_view
from logicad.models.base import METHODS, Method, MethodConfig, Stage, register
from logicad.pipelines.train.checkpoints import MODEL_FILE, save_model
from logicad.pipelines.train.worker import LossTracker, NonFiniteLossError, WorkerSpec, run_loop

from local_session import LocalSession


@dataclass
class ToyConfig(MethodConfig):
    image_size: int = 32
    batch_size: int = 2
    max_steps: int = 3
    lr: float = 1e-2
    finalize_on_train: bool = False


class Tagged(Dataset):
    """A training-set view that marks every item (and doubles nothing else)."""

    def __init__(self, base: Dataset, options: dict, seed: int) -> None:
        self.base, self.tag = base, float(options.get("tag", 1.0))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict:
        return {**self.base[index], "tag": self.tag}


class Toy(Method):
    """Two stages: "pair" (generator + critic, two optimizers, one summed loss) and "view"."""

    name = "toy"
    config_cls = ToyConfig
    find_unused_parameters = True
    log: ClassVar[list[tuple[str, Any]]] = []

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__(config or ToyConfig())
        self.gen = nn.Conv2d(3, 3, 1)
        self.critic = nn.Conv2d(3, 1, 1)
        self.head = nn.Conv2d(3, 1, 1)
        self.register_buffer("finalize_count", torch.tensor(0))

    @property
    def finalize_split(self) -> str:  # type: ignore[override]
        return "train" if self.config.finalize_on_train else "validation"

    def stages(self) -> list[Stage]:
        c = self.config
        return [
            Stage("pair", 2, torch.optim.SGD(self.gen.parameters(), lr=c.lr),
                  extra_optimizers=[torch.optim.SGD(self.critic.parameters(), lr=c.lr)], batch_size=1),
            Stage("view", 2, torch.optim.SGD(self.head.parameters(), lr=c.lr), data={"view": "toy_tagged", "tag": 7}),
        ]

    def training_views(self) -> list[dict[str, Any]]:
        return [{"view": "toy_tagged", "tag": 7}]

    def start_stage(self, stage: str) -> None:
        Toy.log.append(("start", stage))

    def training_step(self, batch: dict, stage: str) -> dict[str, torch.Tensor]:
        images = batch["image"]
        Toy.log.append(("batch", stage, images.shape[0], batch.get("tag")))
        if stage == "pair":
            fake = self.gen(images)
            critic_loss = self.critic(fake.detach()).mean()
            detached = {n: p.detach() for n, p in self.critic.named_parameters()}
            gen_loss = -torch.func.functional_call(self.critic, detached, (fake,)).mean()
            return {"loss": gen_loss + critic_loss, "gen": gen_loss.detach(), "critic": critic_loss.detach()}
        return {"loss": self.head(images).pow(2).mean()}

    def finalize(self, loader, collective=None) -> None:
        self.finalize_count.fill_(sum(int(b["image"].shape[0]) for b in loader))

    @torch.no_grad()
    def anomaly_map(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(images).abs()




def _spec(data: Path, category: str, **config: Any) -> WorkerSpec:
    return WorkerSpec(method="toy", config=config, dataset="mvtec_loco", data_root=str(data), category=category,
                      evaluate=False, log_every=1)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """The toy method and view exist for this module only."""
    register(Toy)
    register_view("toy_tagged")(Tagged)
    yield
    METHODS.pop("toy")
    VIEWS.pop("toy_tagged")


@pytest.fixture(autouse=True)
def _clear_log():
    Toy.log.clear()


def test_stages_step_every_optimizer_after_one_backward(small_loco, category):
    session = LocalSession()
    torch.manual_seed(0)
    before = Toy(ToyConfig())
    run_loop(_spec(small_loco, category), session)
    after = Toy(ToyConfig())
    after.load_state_dict(session.reports[-1][1]["state_dict"])
    for name in ("gen", "critic", "head"):
        assert not torch.equal(getattr(before, name).weight, getattr(after, name).weight), name


def test_each_stage_gets_its_batch_size_view_and_one_start(small_loco, category):
    run_loop(_spec(small_loco, category), LocalSession())
    starts = [entry[1] for entry in Toy.log if entry[0] == "start"]
    assert starts == ["pair", "view"]
    pair = [e for e in Toy.log if e[:2] == ("batch", "pair")]
    view = [e for e in Toy.log if e[:2] == ("batch", "view")]
    assert {e[2] for e in pair} == {1} and all(e[3] is None for e in pair)  # stage batch size 1, plain images
    assert {e[2] for e in view} == {2} and all(e[3].tolist() == [7.0, 7.0] for e in view)


def test_a_run_resumed_inside_stage_two_starts_only_stage_two(small_loco, category, tmp_path):
    method = Toy(ToyConfig())
    stages = method.stages()
    state = {"stage": 1, "step": 1, "optimizers": [[o.state_dict() for o in s.optimizers] for s in stages],
             "schedulers": [[None for _ in s.optimizers] for s in stages]}
    save_model(tmp_path / MODEL_FILE, method, {"training": state})
    run_loop(_spec(small_loco, category), LocalSession(tmp_path))
    assert [e[1] for e in Toy.log if e[0] == "start"] == ["view"]
    assert len([e for e in Toy.log if e[:2] == ("batch", "view")]) == 1  # step 1 of 2 was done before
    assert not [e for e in Toy.log if e[:2] == ("batch", "pair")]


@pytest.mark.parametrize("on_train, split", [(True, "train"), (False, "validation")])
def test_finalize_reads_the_split_the_method_names(small_loco, category, on_train, split):
    from logicad.data import scan

    session = LocalSession()
    run_loop(_spec(small_loco, category, finalize_on_train=on_train), session)
    count = int(session.reports[-1][1]["state_dict"]["finalize_count"])
    assert count == len(scan("mvtec_loco", small_loco, category, split))


def test_loss_tracker_reads_the_latest_values_on_demand():
    tracker = LossTracker(torch.device("cpu"))
    for step, value in enumerate([3.0, 2.0, 1.5], start=1):
        tracker.add(step, {"loss": torch.tensor(value), "part": torch.tensor(value / 2)})
    assert tracker.read("toy:a") == {"loss": 1.5, "part": 0.75}


def test_a_non_finite_loss_names_its_step_and_term():
    tracker = LossTracker(torch.device("cpu"))
    tracker.add(1, {"loss": torch.tensor(1.0), "l_ae": torch.tensor(0.5)})
    tracker.add(2, {"loss": torch.tensor(float("nan")), "l_ae": torch.tensor(float("inf"))})
    tracker.add(3, {"loss": torch.tensor(1.0), "l_ae": torch.tensor(float("nan"))})
    with pytest.raises(NonFiniteLossError, match=r"toy:a: non-finite loss at step 2: term 'loss'"):
        tracker.read("toy:a")


def test_an_unknown_view_fails_naming_the_registered_ones():
    from logicad.data.errors import DatasetError

    assert training_view([1, 2], None) == [1, 2]
    with pytest.raises(DatasetError, match="unknown training-set view 'nope'.*toy_tagged"):
        training_view([1, 2], {"view": "nope"})
    assert "toy_tagged" in VIEWS


def test_a_stage_view_missing_from_training_views_fails_before_any_step(small_loco, category, monkeypatch):
    monkeypatch.setattr(Toy, "training_views", lambda self: [])
    with pytest.raises(RuntimeError, match=r"toy: training_views\(\) does not list the views its stages train on"):
        run_loop(_spec(small_loco, category), LocalSession())
    assert not [entry for entry in Toy.log if entry[0] == "batch"]
