"""The training loop every Ray Train worker runs, for any registered method.

Life cycle per worker: build the method, `prepare` (statistics all-reduced), wrap in
DDP (`ray.train.torch.prepare_model`), run each stage's steps on a distributed
sampler, report a checkpoint every K steps, `finalize` (statistics gathered), and
on rank 0 score the test split. A restarted worker group resumes from the latest
reported checkpoint (`ray.train.get_checkpoint`).
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

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader, DistributedSampler

from logicad.data import load_split
from logicad.data.transforms import train_transform
from logicad.models.base import Method, Stage, build_method, method_class

from .checkpoints import MODEL_FILE, read_model_file, save_model
from .distributed import DeviceLoader, TorchCollective, shard, world
from .progress import Progress


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_loop(loop_config: dict[str, Any]) -> None:
    """`train_loop_per_worker` of the TorchTrainer."""
    spec = WorkerSpec(**loop_config)
    rank, world_size = world()
    device = ray.train.torch.get_device()
    config = method_class(spec.method).config_cls.build(spec.config)
    torch.manual_seed(config.seed)  # identical initial replicas (DDP also broadcasts rank 0's)
    method = build_method(spec.method, config).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    train_set = load_split(spec.dataset, spec.data_root, spec.category, "train", config.image_size, train_transform())
    val_set = load_split(spec.dataset, spec.data_root, spec.category, "validation", config.image_size)
    collective = TorchCollective()
    state = _restore(method)
    first_attempt = state is None
    if first_attempt:
        if rank == 0:
            for line in method.describe():
                print(f"[{spec.method}] {line}", flush=True)
        method.prepare(_stats_loader(train_set, config, device), collective)
        state = {"stage": 0, "step": 0}
    ddp = ray.train.torch.prepare_model(
        method, parallel_strategy_kwargs={"find_unused_parameters": method.find_unused_parameters}
    )
    stages = method.stages()
    _load_training_state(stages, state)
    fault = spec.fault_at_step if first_attempt and rank == world_size - 1 else 0
    logger = _step_logger(spec) if rank == 0 else None
    rates = []
    for index in range(state["stage"], len(stages)):
        start = state["step"] if index == state["stage"] else 0
        rates.append(_run_stage(spec, method, ddp, stages, index, start, train_set, device, logger, fault))
    method.finalize(_stats_loader(val_set, config, device), collective)
    health = {"resumed_from": None if first_attempt else {"stage": state["stage"], "step": state["step"]},
              "replica_divergence": replica_divergence(method, collective),
              "train_images_per_second": rates[-1] * config.batch_size * world_size if rates else None}
    _report_final(spec, method, stages, device, health)


def replica_divergence(method: Method, collective) -> float:
    """Largest difference between workers of any parameter's sum: 0.0 for true DDP replicas."""
    sums = torch.stack([p.detach().double().sum() for p in method.parameters()]).to(
        next(method.parameters()).device)
    gathered = collective.cat(sums[None])
    return float((gathered - gathered[:1]).abs().max())


def _stats_loader(dataset, config, device) -> DeviceLoader:
    rank, world_size = world()
    loader = DataLoader(shard(dataset, rank, world_size), batch_size=max(config.batch_size, 8), shuffle=False)
    return DeviceLoader(loader, device)


def _batches(dataset, config, device, epoch: int) -> Iterator[dict]:
    """Endless shuffled batches of this worker's share, reshuffled each epoch."""
    rank, world_size = world()
    sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=config.seed)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.num_workers,
                        drop_last=len(dataset) // world_size >= config.batch_size)
    loader = ray.train.torch.prepare_data_loader(loader, add_dist_sampler=False, move_to_device=True)
    while True:
        sampler.set_epoch(epoch)
        yield from loader
        epoch += 1


def _autocast(device: torch.device, precision: str):
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _run_stage(spec, method: Method, ddp, stages: list[Stage], index: int, start: int,
               train_set, device, logger, fault: int = 0) -> float:
    """Train one stage from `start`; returns its steps per second."""
    stage, config = stages[index], method.config
    rank, world_size = world()
    steps_per_epoch = max(1, len(train_set) // (world_size * config.batch_size))
    batches = _batches(train_set, config, device, epoch=start // steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "16" and device.type == "cuda")
    progress = Progress(f"{spec.method}:{stage.name}", stage.steps, start, enabled=rank == 0)
    ddp.train()
    for step in range(start, stage.steps):
        if fault and step + _offset(stages, index) == fault:
            _die()
        batch = next(batches)
        if device.type == "cuda":
            batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
        with _autocast(device, config.precision):
            losses = ddp(batch, stage=stage.name)
        stage.optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(stage.optimizer)
        scaler.update()
        if stage.scheduler is not None:
            stage.scheduler.step()
        method.after_step(stage.name)
        values = {k: float(v.detach()) for k, v in losses.items()}
        if progress.update(step + 1, values, every=spec.log_every) and logger is not None:
            logger(step + 1 + _offset(stages, index), values, progress.rate)
        done = step + 1
        if spec.checkpoint_every and done % spec.checkpoint_every == 0 and done < stage.steps:
            _report_checkpoint(method, stages, index, done, values)
    return progress.rate


def _die(delay: float = 5.0) -> None:
    """Chaos testing: SIGKILL this worker. The delay lets Ray's controller (which polls workers
    every 2 s) register the checkpoint reported just before, as it would in a real run."""
    time.sleep(delay)
    os.kill(os.getpid(), signal.SIGKILL)


def _offset(stages: list[Stage], index: int) -> int:
    return sum(s.steps for s in stages[:index])


def _training_state(stages: list[Stage], index: int, step: int) -> dict[str, Any]:
    return {
        "stage": index,
        "step": step,
        "optimizers": [s.optimizer.state_dict() for s in stages],
        "schedulers": [s.scheduler.state_dict() if s.scheduler else None for s in stages],
    }


def _load_training_state(stages: list[Stage], state: dict[str, Any]) -> None:
    for stage, opt, sched in zip(stages, state.get("optimizers", []), state.get("schedulers", [])):
        stage.optimizer.load_state_dict(opt)
        if stage.scheduler is not None and sched is not None:
            stage.scheduler.load_state_dict(sched)


def _report_checkpoint(method: Method, stages: list[Stage], index: int, step: int, values: dict) -> None:
    """All ranks report (it is a barrier); rank 0 attaches the checkpoint."""
    metrics = {"stage": stages[index].name, "step": step + _offset(stages, index), **values}
    if world()[0] != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        save_model(Path(tmp) / MODEL_FILE, method, {"training": _training_state(stages, index, step)})
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _restore(method: Method) -> dict[str, Any] | None:
    """Load the latest reported checkpoint into `method`; its training state, or None."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return None
    with checkpoint.as_directory() as directory:
        payload = read_model_file(Path(directory) / MODEL_FILE)
    method.load_state_dict(payload["state_dict"])
    state = payload.get("training") or {}
    if world()[0] == 0:
        print(f"[{method.name}] resumed from checkpoint at stage {state.get('stage')} step {state.get('step')}",
              flush=True)
    if state.get("finished"):  # the final checkpoint: nothing left to train
        state = {**state, "stage": len(state.get("optimizers", []))}
    return state


def _report_final(spec: WorkerSpec, method: Method, stages: list[Stage], device: torch.device,
                  health: dict[str, Any]) -> None:
    """Rank 0 scores the test split and reports the final checkpoint with metrics and plots."""
    if world()[0] != 0:
        ray.train.report({"final": True}, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        metrics: dict[str, Any] = {}
        if spec.evaluate:
            from .evaluate import evaluate_to_dir

            metrics = evaluate_to_dir(method, spec.dataset, spec.data_root, spec.category, Path(tmp), device,
                                      **spec.eval_options)
        training = {**_training_state(stages, len(stages) - 1, stages[-1].steps if stages else 0), "finished": True,
                    **health}
        metrics.update({k: health[k] for k in ("replica_divergence", "train_images_per_second")})
        save_model(Path(tmp) / MODEL_FILE, method, {"training": training})
        (Path(tmp) / "metrics.json").write_text(json.dumps(metrics, indent=2))
        final = {"final": True, **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
        ray.train.report(final, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _step_logger(spec: WorkerSpec):
    """Rank 0 logs losses and throughput into the driver's MLflow run, live."""
    if not (spec.tracking_uri and spec.run_id):
        return None
    from .tracking import StepLogger

    return StepLogger(spec.tracking_uri, spec.run_id)
