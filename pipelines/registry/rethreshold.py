"""`logicad threshold`: choose a model's pass/fail threshold again, for another false-positive
rate or on the user's own labelled images, and write it as a new model (never over the old one).

    logicad threshold --model models:/NAME/V --fpr 0.005 --out DIR [--labelled FOLDER] [--register]

The normals are the validation split of the data the model was trained on (`--data`,
`--category`, as `evaluate` reads them) or, with `--labelled FOLDER`, the images below
FOLDER/good/; every other image below FOLDER counts as anomalous and gives the detection rate at
the new threshold. DIR gets `model.pt` (the old payload with the new threshold) and
`threshold.json` (what was chosen, on what); `--register` adds it to the registry as a new
version of a models:/ model, logged in the run that produced that version.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

# light at import: the CLI builds its parser (add_threshold) without loading torch
from ..data_source import MODEL_HELP, add_data_args
from ..evaluate.thresholds import DEFAULT_FPR, ThresholdError, check_fpr, confusion, fpr_threshold

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.pt"  # train.checkpoints.MODEL_FILE, named here to keep this module free of torch
REPORT_FILE = "threshold.json"


def labelled_scores(method, folder: Path, device: torch.device, batch_size: int = 16) -> tuple[list[float], list[str]]:
    """Scores of every image below `folder`, with kind `good` (below folder/good/) or `anomalous`."""
    from logicad.data import AnomalyDataset, Sample
    from logicad.data.errors import DatasetError
    from logicad.data.layouts import images_below

    from ..evaluate.scoring import score_batches

    if not (Path(folder) / "good").is_dir():
        raise DatasetError(f"{folder}: no good/ folder; expected FOLDER/good/ (normal images) beside the "
                           "anomalous ones")
    paths = images_below(Path(folder))
    kinds = ["good" if p.relative_to(folder).parts[0] == "good" else "anomalous" for p in paths]
    # the dataset's kinds are good/logical/structural: which anomalous kind is unknown, and unused here
    dataset = AnomalyDataset([Sample(p, int(k != "good"), "good" if k == "good" else "structural", k)
                              for p, k in zip(paths, kinds)], method.config.image_size)
    scores = {index: score for index, _, score in score_batches(method, dataset, device, batch_size)}
    return [scores[i] for i in range(len(paths))], kinds


def choose(payload: dict[str, Any], fpr: float, device: torch.device, labelled: Path | None = None,
           split: tuple[str, str, str | None] | None = None) -> dict[str, Any]:
    """The report of a new threshold for `payload`'s model: on `labelled`'s good/ images, else on
    the validation split `split` = (dataset, root, category)."""
    from logicad.data import load_split

    from ..evaluate.scoring import score_batches
    from ..train.checkpoints import method_from_payload

    method = method_from_payload(payload).to(device)
    if labelled is not None:
        scores, kinds = labelled_scores(method, Path(labelled), device)
        fitted = fpr_threshold([s for s, k in zip(scores, kinds) if k == "good"], fpr)
        counts = confusion(scores, kinds, fitted.value)
        report = {**fitted.metrics(), "threshold_source": f"labelled {labelled}",
                  **{k: counts[k] for k in ("tp", "fp", "tn", "fn", "test_fpr", "test_tpr")}}
    else:
        dataset, root, category = split
        val = load_split(dataset, root, category, "validation", method.config.image_size)
        fitted = fpr_threshold((s for _, _, s in score_batches(method, val, device)), fpr)
        report = {**fitted.metrics(), "threshold_source": f"validation split of {root} ({category or dataset})"}
    return {**report, "previous_threshold": payload.get("threshold")}


def write_model(payload: dict[str, Any], report: dict[str, Any], out: Path) -> Path:
    """`out/model.pt` (payload with the new threshold) and `out/threshold.json`; refuses a folder
    that already holds a model; each file is written to a temporary name, then renamed."""
    out = Path(out)
    if (out / MODEL_FILE).exists() or (out / REPORT_FILE).exists():
        raise ThresholdError(f"{out}: already holds a model or a threshold report; expected a new folder")
    import torch

    out.mkdir(parents=True, exist_ok=True)
    fields = {"threshold": report["threshold"], "threshold_fpr": report["threshold_fpr"],
              "threshold_source": report["threshold_source"]}
    tmp = out / (MODEL_FILE + ".tmp")
    torch.save({**payload, **fields}, tmp)
    tmp.replace(out / MODEL_FILE)
    (out / (REPORT_FILE + ".tmp")).write_text(json.dumps(report, indent=2))
    (out / (REPORT_FILE + ".tmp")).replace(out / REPORT_FILE)
    return out / MODEL_FILE


def register_new_version(model: str, model_file: Path, report: dict[str, Any], tracking_uri: str) -> str:
    """Register `model_file` as a new version of the models:/ model it was re-thresholded from,
    with that version's tags plus the new threshold; its models:/ URI."""
    import mlflow

    from .pyfunc import log_and_register, registered_version

    version = registered_version(model, tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    tags = {**version.tags, "threshold": report["threshold"], "threshold_fpr": report["threshold_fpr"],
            "threshold_source": report["threshold_source"],
            "threshold_from": f"models:/{version.name}/{version.version}"}
    return log_and_register(version.run_id, model_file, version.name, tags)


def cmd_threshold(args: argparse.Namespace) -> int:
    """The `logicad threshold` command (see the module's note)."""
    import mlflow
    import torch

    from ..data_source import resolve_data
    from .pyfunc import load_payload_any, recorded_category
    from .tracking import default_tracking_uri

    check_fpr(args.fpr)
    if args.register and not args.model.startswith("models:/"):
        raise ThresholdError(f"{args.model}: --register adds a version to a registered model; expected models:/NAME/V")
    if (Path(args.out) / MODEL_FILE).exists() or (Path(args.out) / REPORT_FILE).exists():
        raise ThresholdError(f"{args.out}: already holds a model or a threshold report; expected a new folder")
    uri = args.tracking_uri or default_tracking_uri()
    mlflow.set_tracking_uri(uri)
    payload = load_payload_any(args.model)
    split = None
    if args.labelled is None:
        if args.data is None and args.category is None:
            args.category = recorded_category(args.model, uri)
        root, category, _ = resolve_data(args)
        split = (args.dataset, root, category)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    report = choose(payload, args.fpr, device, args.labelled and Path(args.labelled), split)
    model_file = write_model(payload, {**report, "model": args.model}, Path(args.out))
    print(f"threshold {report['threshold']:.6g} (was {report['previous_threshold']}) for FPR {report['threshold_fpr']}"
          f" on {report['threshold_n_normals']} normals ({report['threshold_source']}); written to {model_file}")
    if args.register:
        print(f"registered as {register_new_version(args.model, model_file, report, uri)}")
    return 0


def add_threshold(sub) -> None:
    """The `threshold` subcommand's parser."""
    p = sub.add_parser("threshold", help="choose a model's pass/fail threshold again (another FPR or a labelled "
                                         "folder) and write it as a new model")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--fpr", type=float, default=DEFAULT_FPR,
                   help=f"false-positive rate on the normal images (default {DEFAULT_FPR}); with n normals it moves "
                        "in steps of 1/n, and below 1/n the threshold is the largest normal score")
    p.add_argument("--labelled", default=None, help="folder with good/ (normal images) and anomalous images in other "
                                                    "subfolders; default: the validation split of --data")
    add_data_args(p, category_help="category folder under --data (default: the model's own)")
    p.add_argument("--out", "--output", dest="out", required=True,
                   help="new folder for model.pt and threshold.json (an existing model is never overwritten)")
    p.add_argument("--register", action="store_true", help="also register it as a new version of the models:/ model")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, else sqlite:///mlruns/mlflow.db)")
    p.add_argument("--cpu", action="store_true", help="score on the CPU even where a GPU is available")
    p.set_defaults(func=cmd_threshold)
