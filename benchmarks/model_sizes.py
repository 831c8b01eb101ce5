"""Model sizes per method before and after lean, single-copy models (issue 20 item 5).

    python benchmarks/model_sizes.py --methods dfsc --out benchmarks/results/model_sizes.json

Per method: the smallest run (`logicad train` with the cpu-synthetic preset where the method
has one, 2 steps, on a small synthetic dataset, registered in a local MLflow store), then

- registry artifact: the logged model's model.pt and its whole folder, now (lean) and before
  (the full payload: the same model with its optimizers' and schedulers' state, rebuilt here by
  stepping every stage's optimizers once with zero gradients, which fills their state without
  moving a weight, and saving it as the old code did);
- bytes written per run: every place the run wrote (`record["written"]`, a hard-linked file
  counted once), now; before = now - the lean model + four full copies (the old run folder,
  final Ray checkpoint, MLflow run artifact and logged model each held one).

and, without training (sizes do not depend on it), the model file at the method's paper
defaults (no preset), full and lean. `--paper-only` skips the training runs.

Results of earlier invocations in `--out` are kept, so methods can be run one at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

METHODS = ("dfsc", "glcf", "slsg", "fod", "patchcore", "global_gaussian")
SMALL = dict(size=96, n_train=6, n_validation=3, n_test_good=3, n_test_logical=3, n_test_structural=3)


def full_payload_bytes(lean_file: Path, dest: Path) -> int:
    """Size of the full model file the old code registered for the model in `lean_file`."""
    import torch

    from logicad.pipelines.train.checkpoints import method_from_payload, read_model_file, save_model
    from logicad.pipelines.train.worker import training_state

    payload = read_model_file(lean_file)
    method = method_from_payload(payload).train()
    stages = method.stages()
    for stage in stages:
        for optimizer in stage.optimizers:
            for group in optimizer.param_groups:
                for parameter in group["params"]:
                    parameter.grad = torch.zeros_like(parameter)
            optimizer.step()
    training = {**payload.get("training", {}),
                **training_state(stages, max(len(stages) - 1, 0), stages[-1].steps if stages else 0)}
    extra = {k: v for k, v in payload.items() if k not in ("format", "method", "config", "state_dict")}
    return save_model(dest, method, {**extra, "training": training}).stat().st_size


def paper_default_sizes(method: str, work: Path) -> dict[str, int]:
    """The model file of an untrained `method` at its paper defaults: full (old) and lean bytes."""
    from logicad.models.backbones import restoring_saved_weights
    from logicad.models.base import build_method, method_class
    from logicad.pipelines.train.checkpoints import save_model

    with restoring_saved_weights():  # random weights of the right shapes: no download
        model = build_method(method, method_class(method).config_cls.build({}))
    lean = save_model(work / "paper" / "lean" / "model.pt", model, {"training": {"finished": True}})
    return {"before": full_payload_bytes(lean, work / "paper" / "full" / "model.pt"), "after": lean.stat().st_size}


def measure(method: str, data: Path, category: str, work: Path) -> dict[str, Any]:
    """Train `method` briefly into `work`; its sizes before and after."""
    from logicad.pipelines.config import resolve_config
    from logicad.pipelines.train.driver import TrainJob, run_train
    from logicad.pipelines.train.run_dirs import measure_places

    presets = getattr(resolve_config(method), "PRESETS", {}) or {}
    preset = "cpu-synthetic" if "cpu-synthetic" in presets else None
    # precision 32: the files hold float32 weights whatever the precision; it also avoids CPU autocast
    config = resolve_config(method, ["max_steps=2", "precision=32"], preset=preset)
    job = TrainJob(method, config, "mvtec_loco", str(data), category, preset, output_dir=str(work / "outputs"),
                   storage_path=str(work / "ray_results"), tracking_uri=f"sqlite:///{work / 'mlruns' / 'mlflow.db'}",
                   gpus_per_worker=0.0)
    start = time.perf_counter()
    record = run_train(job)
    seconds = time.perf_counter() - start
    logged_folder = Path(record["written"]["MLflow model"])
    (lean_file,) = sorted(logged_folder.rglob("model.pt"))
    lean = lean_file.stat().st_size
    full = full_payload_bytes(lean_file, work / "full" / "model.pt")
    places = measure_places(record["written"])
    written = sum(p.own or 0 for p in places)
    folder = sum(p.stat().st_size for p in logged_folder.rglob("*") if p.is_file())
    return {"preset": preset, "config": config.to_dict(), "train_seconds": round(seconds, 1),
            "model_file": {"before": full, "after": lean},
            "registry_artifact": {"before": folder - lean + full, "after": folder},
            "written_per_run": {"before": written - lean + 4 * full, "after": written},
            "places_after": {p.what: {"bytes": p.own, "hard_linked_bytes": p.linked} for p in places}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: all)")
    parser.add_argument("--out", default="benchmarks/results/model_sizes.json")
    parser.add_argument("--paper-only", action="store_true", help="only the paper-default model files (no training)")
    args = parser.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {unknown}; expected some of {list(METHODS)}")
    for key, value in {"HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0",
                       "RAY_AUTH_MODE": "disabled", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}.items():
        os.environ.setdefault(key, value)
    import logicad.models  # noqa: F401  (torchvision op schemas before anything imports timm)
    import ray

    from logicad.data.synthetic import CATEGORIES, SyntheticSpec, make_synthetic

    out = Path(args.out)
    results = json.loads(out.read_text()).get("methods", {}) if out.is_file() else {}
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=300 * 2**20, log_to_driver=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "data"
            make_synthetic(data, SyntheticSpec(seed=0, **SMALL), categories=[CATEGORIES[0]])
            for method in methods:
                work = Path(tmp) / method
                if not args.paper_only:
                    results[method] = measure(method, data, CATEGORIES[0], work)
                results.setdefault(method, {})["paper_model_file"] = paper_default_sizes(method, work)
                print(method, json.dumps({k: v for k, v in results[method].items() if k in
                                          ("model_file", "registry_artifact", "written_per_run", "paper_model_file")}),
                      flush=True)
                out.parent.mkdir(parents=True, exist_ok=True)
                partial = out.with_suffix(".tmp")
                partial.write_text(json.dumps({"methods": results, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                                               "data": {"category": CATEGORIES[0], **SMALL}}, indent=2) + "\n")
                partial.replace(out)
    finally:
        ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
