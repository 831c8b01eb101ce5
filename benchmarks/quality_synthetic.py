"""Any method on every synthetic LOCO category with a fixed budget, through the real pipeline
(Ray Train, MLflow): quality (image AUROC per kind, sPRO) and speed, written as JSON + a table.

    python benchmarks/quality_synthetic.py --method dfsc [--preset cpu-synthetic] [--set key=value ...]
    # writes benchmarks/results/<method>_synthetic.json unless --out is given
    # --rescore NAME:KEY=VALUE[;KEY=VALUE] (repeatable): also the test AUROCs of each trained
    # model under score-only settings (MethodConfig.SCORE_ONLY), from one cached forward pass

Beside every method, the same run scores two parameter-free references on the pretrained
features the presets use (`feature_baselines.py`: patch nearest-neighbour, global Gaussian), so
each row says what pretrained features give for free (`--no-reference` skips them). Means are
given over all categories and over the fixed-layout ones (`FIXED_LAYOUT`).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch
from logicad.data import load_split
from logicad.data.synthetic import CATEGORIES, SyntheticSpec, make_synthetic
from logicad.models.base import method_class
from logicad.pipelines.config import resolve_config
from logicad.pipelines.train.checkpoints import load_model
from logicad.pipelines.train.driver import TrainJob, ensure_ray, run_train
from logicad.pipelines.tune.score_only import cache_parts, score_setting

from feature_baselines import reference_metrics

#: the synthetic categories whose rules fix where each part sits (screw_bag's layout is random)
FIXED_LAYOUT = ("parts_box", "bottle_label", "screw_kit")
COLUMNS = ("image_auroc_logical", "image_auroc_structural", "image_auroc", "spro_0.05", "pixel_auroc",
           "train_images_per_second", "infer_ms_per_image", "images_per_second_b16", "train_seconds")


def images_per_second_b16(model_dir: Path, data: Path, category: str) -> float:
    """Batched scoring throughput (batch 16) of the trained model."""
    method = load_model(model_dir)
    test = load_split("mvtec_loco", data, category, "test", method.config.image_size)
    batch = torch.stack([test[i % len(test)]["image"] for i in range(16)])
    with torch.inference_mode():
        method.image_score(method.anomaly_map(batch))
        start = time.perf_counter()
        for _ in range(3):
            method.image_score(method.anomaly_map(batch))
    return 48 / (time.perf_counter() - start)


def parse_rescore(items: list[str]) -> dict[str, dict[str, str]]:
    """{"name": {key: value}} from ["name:key=value;key=value", ...]."""
    settings = {}
    for item in items:
        name, _, body = item.partition(":")
        pairs = [p.split("=", 1) for p in body.split(";") if p]
        if not name or not pairs or any(len(p) != 2 for p in pairs):
            raise SystemExit(f"--rescore {item!r}: expected NAME:KEY=VALUE[;KEY=VALUE]")
        settings[name] = dict(pairs)
    return settings


def rescored(model_dir: Path, data: Path, category: str, settings: dict[str, dict[str, str]]) -> dict:
    """Test image AUROCs of the trained model under each score-only setting (no retraining)."""
    if not settings:
        return {}
    method = load_model(model_dir)
    base = method.config
    test = load_split("mvtec_loco", data, category, "test", base.image_size)
    parts, kinds = cache_parts(method, test, torch.device("cpu"))
    out = {}
    for name, values in settings.items():
        bad = sorted(set(values) - set(type(base).SCORE_ONLY))
        if bad:
            raise SystemExit(f"--rescore {name}: {bad} are not score-only keys of {method.name}; "
                             f"score-only: {list(type(base).SCORE_ONLY)}")
        method.config = base
        out[name] = score_setting(method, values, parts, kinds)
    return out


def means(rows: dict[str, dict], keys: tuple[str, ...] = COLUMNS[:5]) -> dict[str, float | None]:
    """Mean of each key over the rows that have it (None where none has)."""
    out = {}
    for key in keys:
        values = [r[key] for r in rows.values() if r.get(key) is not None]
        out[key] = sum(values) / len(values) if values else None
    return out


def write_result(args: argparse.Namespace, config, rows: dict[str, dict], references: dict[str, dict]) -> dict:
    """The JSON of the categories done so far (their means over those categories), with the
    references' rows and means beside the method's."""
    fixed = {k: r for k, r in rows.items() if k in FIXED_LAYOUT}
    reference_means = {name: {"mean": means({c: r[name] for c, r in references.items()}),
                              "mean_fixed_layout": means({c: r[name] for c, r in references.items()
                                                          if c in FIXED_LAYOUT})}
                       for name in next(iter(references.values()), {})}
    result = {"method": args.method, "preset": args.preset, "data_seed": args.data_seed, "config": config.to_dict(),
              "categories": rows,
              "mean": means(rows), "mean_fixed_layout": means(fixed) if fixed else None,
              "references": {"backbone": "tf_efficientnet_lite0 + imagenet-lite0", "image_size": args.reference_size,
                             "categories": references, **reference_means},
              "peak_rss_gb_driver": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
              "torch_threads": torch.get_num_threads()}
    out = Path(args.out or f"benchmarks/results/{args.method}_synthetic.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", default="dfsc")
    parser.add_argument("--out", default=None, help="default benchmarks/results/<method>_synthetic.json")
    parser.add_argument("--preset", default="cpu-synthetic",
                        help="'none' for the defaults; a method without this preset runs its defaults")
    parser.add_argument("--set", action="append", default=[])
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--data-seed", type=int, default=0,
                        help="seed of the generated data: 0 is the benchmark set; another seed (e.g. 1) is a "
                             "selection set for choosing settings without touching the benchmark's test split")
    parser.add_argument("--rescore", action="append", default=[], metavar="NAME:KEY=VALUE[;KEY=VALUE]")
    parser.add_argument("--no-reference", action="store_true", help="skip the parameter-free references")
    parser.add_argument("--reference-size", type=int, default=128, help="image size of the references")
    args = parser.parse_args()
    presets = method_class(args.method).config_cls.PRESETS
    args.preset = args.preset if args.preset in presets else None
    settings = parse_rescore(args.rescore)
    ensure_ray()
    rows, references = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        make_synthetic(data, SyntheticSpec(seed=args.data_seed))
        for category in args.categories.split(","):
            config = resolve_config(args.method, args.set, preset=args.preset)
            job = TrainJob(args.method, config, "mvtec_loco", str(data), category, preset=args.preset,
                           output_dir=f"{tmp}/{category}", storage_path=f"{tmp}/ray",
                           tracking_uri=f"sqlite:///{tmp}/mlflow.db", register=False, log_every=50)
            record = run_train(job)
            record["images_per_second_b16"] = images_per_second_b16(Path(record["run_dir"]) / "model", data, category)
            rows[category] = {k: record.get(k) for k in COLUMNS}
            rows[category]["rescored"] = rescored(Path(record["run_dir"]) / "model", data, category, settings)
            if not args.no_reference:
                references[category] = reference_metrics(data, category, args.reference_size)
            result = write_result(args, config, rows, references)  # after every category: a cut-off run keeps it
    print(" | ".join(["category", *COLUMNS]))
    for name, row in rows.items():
        print(" | ".join([name, *(f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in COLUMNS)]))
        for ref, metrics in references.get(name, {}).items():
            print(" | ".join([f"  {ref}", *(f"{metrics.get(k):.3f}" if isinstance(metrics.get(k), float) else "-"
                                            for k in COLUMNS)]))
    for name, row in rows.items():
        for label, aurocs in row["rescored"].items():
            print(f"{name} rescored {label}: logical {aurocs['image_auroc_logical']:.3f} "
                  f"structural {aurocs['image_auroc_structural']:.3f}")
    print(json.dumps({k: result[k] for k in ("mean", "mean_fixed_layout")}, indent=2))
    references_out = result["references"]
    print(json.dumps({name: references_out[name] for name in ("patch_nn", "global_gaussian") if name in references_out},
                     indent=2))


if __name__ == "__main__":
    main()
