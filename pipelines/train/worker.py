"""The training loop every Ray Train worker (and every Ray Tune trial) runs, for any method.

Life cycle per worker: build the method, `prepare` (statistics all-reduced), wrap in
DDP (`ray.train.torch.prepare_model`; not a method without trainable parameters), run each
stage's steps on a distributed sampler (a method may have no stage: statistics only),
report a checkpoint every K steps (with the tuning objective when asked),
`finalize` (statistics gathered), and on rank 0 score the test split. A restarted
worker group resumes from the latest reported checkpoint. The `session` decides
whether this runs under Ray Train or Ray Tune.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from logicad.data import load_split
from logicad.data.transforms import train_transform
from logicad.data.views import training_view
from logicad.models.base import Method, Stage, build_method, method_class

from .checkpoints import MODEL_FILE, read_model_file, save_model
from .compiled_step import compiled_step
from .distributed import DeviceLoader, TorchCollective, shard, world
from .progress import Progress
from .session import TrainSession, TuneSession


@dataclass
class WorkerSpec:
    """Everything a worker needs; plain values so Ray can ship it."""

    method: str
    config: dict[str, Any]
    dataset: str
    data_root: str
    category: str | None
    checkpoint_every: int = 0
    log_every: int = 10
    tracking_uri: str | None = None
    run_id: str | None = None
    evaluate: bool = True
    eval_options: dict[str, Any] = field(default_factory=dict)
    #: chaos testing: the last rank kills its own process at this step on the first attempt
    fault_at_step: int = 0
    #: tuning objective reported with every checkpoint: "synthetic" (leak-free), "test", or None
    objective: str | None = None
    objective_seed: int = 0
    #: the dataset's s3:// URI when it lives in S3: every worker syncs it into its own node's
    #: cache (`data_root` is then the driver's copy, used only where the worker's sync is skipped)
    data_uri: str | None = None
    s3_endpoint_url: str | None = None
    #: where a node keeps synced datasets (default: the driver's LOGICAD_CACHE / ~/.cache/logicad)
    cache_dir: str | None = None
    #: torch.compile mode for the training step ("" eager; see compiled_step.MODES)
    compile_step: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_loop(loop_config: dict[str, Any]) -> None:
    """`train_loop_per_worker` of the TorchTrainer."""
    run_loop(WorkerSpec(**loop_config), TrainSession())


def tune_trial(trial_config: dict[str, Any], spec: dict[str, Any]) -> None:
    """Tune function trainable: the sweep's spec (bound by `tune.with_parameters`) with the
    trial's sampled config keys (`trial_config["params"]`)."""
    spec = WorkerSpec(**spec)
    spec.config = {**spec.config, **trial_config["params"]}
    run_loop(spec, TuneSession())


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or inf; the message names the step and the term."""


def local_data_root(spec: WorkerSpec) -> str:
    """This node's copy of the dataset: an s3:// dataset is synced into the node cache (locked,
    changed-only, so workers sharing a node download it once); a local root is used as is."""
    if not spec.data_uri:
        return spec.data_root
    from ..storage import S3Settings, sync_dataset

    cache = Path(spec.cache_dir or os.environ.get("LOGICAD_CACHE", Path.home() / ".cache" / "logicad"))
    return str(sync_dataset(spec.data_uri, cache / "s3", S3Settings.from_env(spec.s3_endpoint_url)))


def run_loop(spec: WorkerSpec, session: TrainSession) -> None:
    rank, world_size = world()
    device = session.device()
    config = method_class(spec.method).config_cls.build(spec.config)
    torch.manual_seed(config.seed)  # identical initial replicas (DDP also broadcasts rank 0's)
    method = build_method(spec.method, config).to(device, memory_format=torch.channels_last)
    spec.data_root = local_data_root(spec)
    train_set = load_split(spec.dataset, spec.data_root, spec.category, "train", config.image_size, train_transform())
    val_set = load_split(spec.dataset, spec.data_root, spec.category, "validation", config.image_size)
    # the split `finalize` reads: the training images (no augmentation) or the validation split
    stats_set = train_set if method.finalize_split == "train" else val_set
    collective = TorchCollective()
    state = _restore(method, session)
    first_attempt = state is None
    if first_attempt:
        if rank == 0:
            for line in method.describe():
                print(f"[{spec.method}] {line}", flush=True)
        method.prepare(_stats_loader(train_set, config, device), collective)
        state = {"stage": 0, "step": 0}
    ddp = compiled_step(session.prepare_model(method, method.find_unused_parameters), method,
                        spec.compile_step, announce=rank == 0)
    stages = method.stages()
    if not stages and rank == 0:
        print(f"[{spec.method}] no training stage: statistics only (prepare -> finalize)", flush=True)
    _load_training_state(stages, state)
    fault = spec.fault_at_step if first_attempt and rank == world_size - 1 else 0
    logger = _step_logger(spec) if rank == 0 else None
    listed = method.training_views()
    missing = [stage.data for stage in stages if stage.data and stage.data not in listed]
    if missing:  # the objective trusts training_views() to name what a model learnt from
        raise RuntimeError(f"{spec.method}: training_views() does not list the views its stages train on: {missing}")
    # every stage's training-set view is built now, so a bad view option fails before any step
    views = [training_view(train_set, stage.data, config.seed + rank) for stage in stages]
    rates = []
    for index in range(state["stage"], len(stages)):
        start = state["step"] if index == state["stage"] else 0
        rates.append(_run_stage(spec, session, method, ddp, stages, index, start, views[index], stats_set, val_set,
                                device, logger, fault))
    method.finalize(_stats_loader(stats_set, config, device), collective)
    objective = _objective(spec, method, val_set, device)
    health = {"resumed_from": None if first_attempt else {"stage": state["stage"], "step": state["step"]},
              "replica_divergence": replica_divergence(method, collective, state=not stages),
              "train_images_per_second": (rates[-1] * (stages[-1].batch_size or config.batch_size) * world_size
                                          if rates else None),
              **objective}
    _report_final(spec, session, method, stages, device, health)


def replica_divergence(method: Method, collective, state: bool = False) -> float:
    """Largest difference between workers of any parameter's sum: 0.0 for true DDP replicas.

    state: compare every state-dict tensor (buffers included) by its sum and size instead: what
    a method without a training stage holds is statistics (a memory bank, a Gaussian), which
    every worker must have computed identically; it may have no parameter at all."""
    if not state:
        sums = torch.stack([p.detach().double().sum() for p in method.parameters()]).to(
            next(method.parameters()).device)
    else:
        tensors = list(method.state_dict().values())
        if not tensors:
            return 0.0
        device = tensors[0].device
        sums = torch.stack([torch.stack([t.detach().double().sum().to(device), torch.tensor(
            float(t.numel()), dtype=torch.float64, device=device)]) for t in tensors]).flatten()
    gathered = collective.cat(sums[None])
    return float((gathered - gathered[:1]).abs().max())


def _stats_loader(dataset, config, device) -> DeviceLoader:
    rank, world_size = world()
    loader = DataLoader(shard(dataset, rank, world_size), batch_size=max(config.batch_size, 8), shuffle=False)
    return DeviceLoader(loader, device)


def _batches(session: TrainSession, dataset, config, batch_size: int, device, epoch: int) -> Iterator[dict]:
    """Endless shuffled batches of this worker's share, reshuffled each epoch."""
    rank, world_size = world()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=config.num_workers,
                        drop_last=len(dataset) // world_size >= batch_size)
    loader = session.prepare_loader(loader, device)
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _run_stage(spec, session: TrainSession, method: Method, ddp, stages: list[Stage], index: int, start: int,
               view, stats_set, val_set, device, logger, fault: int = 0) -> float:
    """Train one stage from `start`; returns its steps per second.

    Losses stay on the device: they are read (one host sync) only every `log_every`
    steps and at checkpoints, so a GPU step is never stalled by logging. A non-finite
    loss term is recorded on the device at the step it happens and raised when read.
    """
    stage, config = stages[index], method.config
    rank, world_size = world()
    batch_size = stage.batch_size or config.batch_size
    steps_per_epoch = max(1, len(view) // (world_size * batch_size))
    batches = _batches(session, view, config, batch_size, device, epoch=start // steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "16" and device.type == "cuda")
    progress = Progress(f"{spec.method}:{stage.name}", stage.steps, start, enabled=rank == 0)
    tracker = LossTracker(device)
    method.start_stage(stage.name)
    ddp.train()
    for step in range(start, stage.steps):
        if fault and step + _offset(stages, index) == fault:
            _die()
        batch = next(batches)
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with _autocast(device, config.precision):
            losses = ddp(batch, stage=stage.name)
        for optimizer in stage.optimizers:
            optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()  # one backward: DDP all-reduces every gradient once
        for optimizer in stage.optimizers:
            scaler.step(optimizer)
        scaler.update()
        for scheduler in stage.schedulers:
            if scheduler is not None:
                scheduler.step()
        method.after_step(stage.name)
        done = step + 1
        tracker.add(done + _offset(stages, index), losses)
        checkpoint_due = spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < stage.steps
        if done % max(spec.log_every, 1) == 0 or done == stage.steps or checkpoint_due:
            values = tracker.read(f"{spec.method}:{stage.name}")
            if progress.update(done, values, every=1) and logger is not None:
                logger(done + _offset(stages, index), values, progress.rate)
        if checkpoint_due:
            if spec.objective:
                method.finalize(_stats_loader(stats_set, config, device), TorchCollective())
            values = {**values, **_objective(spec, method, val_set, device)}
            _report_checkpoint(session, method, stages, index, done, values)
    return progress.rate


class LossTracker:
    """Loss values kept on the device between reads: the latest value of each term, and
    the first step at which any term was NaN/inf (no host sync until `read`)."""

    def __init__(self, device: torch.device) -> None:
        self.latest: dict[str, torch.Tensor] = {}
        self.first_bad: dict[str, torch.Tensor] = {}
        self.device = device

    def add(self, step: int, losses: dict[str, torch.Tensor]) -> None:
        for key, value in losses.items():
            value = value.detach().float()
            self.latest[key] = value
            bad = self.first_bad.setdefault(key, torch.full((), -1, dtype=torch.long, device=value.device))
            # first non-finite step, kept by a branch-free device update
            flag = (~torch.isfinite(value)).all() & (bad < 0)
            self.first_bad[key] = torch.where(flag, torch.full_like(bad, step), bad)

    def read(self, where: str) -> dict[str, float]:
        """Latest values as floats (one sync); NonFiniteLossError if any term went non-finite."""
        if not self.latest:
            return {}
        keys = list(self.latest)
        values = torch.stack([self.latest[k] for k in keys]).tolist()
        bad = torch.stack([self.first_bad[k] for k in keys])
        if world()[1] > 1:  # every rank stops at the same read, or the others would wait forever
            bad = bad.clone()
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        bad_steps = bad.tolist()
        for key, bad in zip(keys, bad_steps):
            if bad >= 0:
                raise NonFiniteLossError(f"{where}: non-finite loss at step {bad}: term {key!r} is not finite "
                                         f"(lower lr, use precision=32, or check the data)")
        return dict(zip(keys, values))


def _die(delay: float = 5.0) -> None:
    """Chaos testing: SIGKILL this worker. The delay lets Ray's controller (which polls workers
    every 2 s) register the checkpoint reported just before, as it would in a real run."""
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def _offset(stages: list[Stage], index: int) -> int:
    return sum(s.steps for s in stages[:index])


def training_state(stages: list[Stage], index: int, step: int) -> dict[str, Any]:
    """Where training is (and how many stages there are) and every optimizer's and scheduler's
    state, per stage."""
    return {
        "stage": index,
        "step": step,
        "stages": len(stages),
        "optimizers": [[o.state_dict() for o in s.optimizers] for s in stages],
        "schedulers": [[x.state_dict() if x else None for x in s.schedulers] for s in stages],
    }


def _load_training_state(stages: list[Stage], state: dict[str, Any]) -> None:
    for stage, opts, scheds in zip(stages, state.get("optimizers", []), state.get("schedulers", [])):
        if isinstance(opts, dict):  # checkpoints written before stages had several optimizers
            opts, scheds = [opts], [scheds]
        for optimizer, saved in zip(stage.optimizers, opts):
            optimizer.load_state_dict(saved)
        for scheduler, saved in zip(stage.schedulers, scheds):
            if scheduler is not None and saved is not None:
                scheduler.load_state_dict(saved)


def _report_checkpoint(session: TrainSession, method: Method, stages: list[Stage], index: int, step: int,
                       values: dict) -> None:
    """All ranks report (it is a barrier); rank 0 attaches the checkpoint."""
    metrics = {"stage": stages[index].name, "step": step + _offset(stages, index), **values}
    if world()[0] != 0:
        session.report(metrics, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / MODEL_FILE, method, {"training": training_state(stages, index, step)})
        session.report(metrics, Path(tmp))


def _objective(spec: WorkerSpec, method: Method, val_set, device: torch.device) -> dict[str, float]:
    """The tuning objective of the finalized method (rank 0 scores; others report nothing)."""
    if not spec.objective:
        return {}
    from ..tune.objective import objective_metrics

    if world()[0] != 0:
        return {}
    result = objective_metrics(method, spec.objective, spec.dataset, spec.data_root, spec.category, val_set,
                               device, spec.objective_seed)
    method.train()
    return result


def _restore(method: Method, session: TrainSession) -> dict[str, Any] | None:
    """Load the latest reported checkpoint into `method`; its training state, or None."""
    checkpoint = session.latest_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        payload = read_model_file(Path(directory) / MODEL_FILE)
    method.load_state_dict(payload["state_dict"])
    state = payload.get("training") or {}
    if world()[0] == 0:
        print(f"[{method.name}] resumed from checkpoint at stage {state.get('stage')} step {state.get('step')}",
              flush=True)
    if state.get("finished"):  # the final checkpoint (lean, or full before lean ones): nothing left to train
        state = {**state, "stage": state.get("stages", len(state.get("optimizers", [])))}
    return state


def _report_final(spec: WorkerSpec, session: TrainSession, method: Method, stages: list[Stage],
                  device: torch.device, health: dict[str, Any]) -> None:
    """Rank 0 scores the test split and reports the final checkpoint with metrics and plots.

    The final checkpoint's model file is lean (no optimizer or scheduler state): training is
    over, so resuming it only re-scores, and this same file is what the driver registers."""
    if world()[0] != 0:
        session.report({"final": True, "step": _offset(stages, len(stages))}, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        metrics: dict[str, Any] = {}
        if spec.evaluate:
            from ..evaluate.scoring import evaluate_to_dir

            metrics = evaluate_to_dir(method, spec.dataset, spec.data_root, spec.category, Path(tmp), device,
                                      **spec.eval_options)
        training = {**training_state(stages, max(len(stages) - 1, 0), stages[-1].steps if stages else 0),
                    "finished": True,
                    **health}
        metrics.update({k: v for k, v in health.items() if k != "resumed_from"})
        save_model(Path(tmp) / MODEL_FILE, method, {"training": training, "threshold": metrics.get("threshold"),
                                                    "threshold_fpr": metrics.get("threshold_fpr")}, lean=True)
        (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
        final = {"final": True, "step": _offset(stages, len(stages)), **numbers}
        session.report(final, Path(tmp))


def _step_logger(spec: WorkerSpec):
    """Rank 0 logs losses and throughput into the driver's MLflow run, live."""
    if not (spec.tracking_uri and spec.run_id):
        return None
    from ..registry.tracking import StepLogger

    return StepLogger(spec.tracking_uri, spec.run_id)
