"""A fusion beside its members on every synthetic LOCO category, through the real pipeline:
each member trained with its preset and registered (Ray Train, MLflow), then `logicad fuse`
(a score-only Ray Tune sweep on the leak-free objective); every test AUROC, and what each model
scored on the objective, written as JSON + a table.

    python benchmarks/fusion_synthetic.py --members dfsc,patchcore,global_gaussian [--categories a,b]
    # writes benchmarks/results/fusion_synthetic.json unless --out is given

The set's validation and test splits default to MVTec LOCO's sizes (about 60 validation normals
and about 100 test images of each kind per category), not `SyntheticSpec`'s 16 and 20: the
objective ranks fusion settings on the validation normals, and with 16 its AUROC moves by a few
hundredths from one seed of synthetic anomalies to the next; with 20 test images of a kind, so does
the test AUROC the fusion is judged on. `--validation 16 --test 20` gives the small set.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from logicad.data.synthetic import CATEGORIES, SyntheticSpec, make_synthetic
from logicad.models.base import method_class
from logicad.pipelines.config import resolve_config
from logicad.pipelines.train.driver import TrainJob, ensure_ray, run_train
from logicad.pipelines.tune.fusion import FusionJob, run_fusion

KEYS = ("image_auroc_logical", "image_auroc_structural", "image_auroc")


def train_member(method: str, preset: str, data: Path, category: str, tmp: Path, uri: str) -> tuple[str, dict]:
    """(registered model URI, its record) of `method` trained with `preset` (where it has one) on `category`."""
    preset = preset if preset in method_class(method).config_cls.PRESETS else None
    config = resolve_config(method, [], preset=preset)
    job = TrainJob(method, config, "mvtec_loco", str(data), category, preset=preset, output_dir=f"{tmp}/out",
                   storage_path=f"{tmp}/ray", tracking_uri=uri, log_every=100)
    record = run_train(job)
    return record["model_uri"], {k: record.get(k) for k in (*KEYS, "train_seconds")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--members", default="dfsc,glcf,slsg,fod,patchcore,global_gaussian")
    parser.add_argument("--preset", default="cpu-synthetic")
    parser.add_argument("--categories", default=",".join(CATEGORIES))
    parser.add_argument("--num-samples", type=int, default=200)
    parser.add_argument("--validation", type=int, default=60, help="validation normals per category (LOCO: 54-69)")
    parser.add_argument("--test", type=int, default=100, help="test images of each kind (good, logical, structural) "
                        "per category (LOCO: 81-142)")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the generated set")
    parser.add_argument("--out", default="benchmarks/results/fusion_synthetic.json")
    args = parser.parse_args()
    ensure_ray()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        data = tmp / "data"
        make_synthetic(data, SyntheticSpec(seed=args.data_seed, n_validation=args.validation, n_test_good=args.test,
                                           n_test_logical=args.test, n_test_structural=args.test))
        uri = f"sqlite:///{tmp}/mlflow.db"
        for category in args.categories.split(","):
            members = {m: train_member(m, args.preset, data, category, tmp, uri) for m in args.members.split(",")}
            start = time.perf_counter()
            record = run_fusion(FusionJob([uri_ for uri_, _ in members.values()], "mvtec_loco", str(data), category,
                                          uri, num_samples=args.num_samples, output_dir=f"{tmp}/fusion",
                                          storage_path=f"{tmp}/ray"))
            on_objective = list(record["members_on_objective"].values())
            rows[category] = {"members": {m: r for m, (_, r) in members.items()},
                              "fusion": {k: record.get(k) for k in KEYS},
                              "fusion_params": record["best_params"], "fusion_seconds": time.perf_counter() - start,
                              "objective_evidence": record.get("objective_evidence"),
                              "on_objective": {**dict(zip(members, on_objective)),
                                               "FUSION": record["fusion_on_objective"]}}
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(rows, indent=2, default=str))  # a cut-off run keeps its rows
    print("category | model | test image AUROC logical | structural | all | objective logical | structural | all")
    for category, row in rows.items():
        for name, values in [*row["members"].items(), ("FUSION", row["fusion"])]:
            seen = row["on_objective"][name]
            print(" | ".join([category, name, *(f"{values[k]:.3f}" if values.get(k) is not None else "-"
                                                for k in KEYS), *(f"{seen[k]:.3f}" for k in KEYS)]))
        print(f"{category} fusion settings: {row['fusion_params']}; on the objective vs its best member: "
              f"{row['objective_evidence']}")


if __name__ == "__main__":
    main()
