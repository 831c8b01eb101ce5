"""`logicad predict --workers N`: score a large folder or an s3:// prefix on Ray Data.

The driver lists the inputs (a folder recursively, or an S3 prefix through the S3 API: nothing
is synced first), cuts the sorted list into shards of K images and writes `plan.json`. Each
shard is one row of a Ray Data dataset; `map_batches` runs `ShardScorer` actors (one model per
actor, loaded once from the payload put in the object store once; a GPU each when the cluster
has GPUs) that read their shard's images themselves (bytes from S3, streaming), preprocess them
exactly as `predict` does, score them and draw the overlays. The driver writes each finished
shard atomically as it arrives, prints progress, and finally merges the shards into
`scores.csv` in input order. `--resume` scores only the shards that were not written.
"""

from __future__ import annotations

import argparse
import os
import pickle
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..data_source import positive_int

if TYPE_CHECKING:  # imported where used: `logicad --help` builds these flags without torch or numpy
    import numpy as np

    from .batch_shards import Plan

DEFAULT_SHARD_SIZE = 256
READ_THREADS = 8


# --- command-line flags ------------------------------------------------------------------------
def add_batch_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that send `logicad predict` to Ray Data (any of --ray, --workers, --resume)."""
    group = parser.add_argument_group("batch scoring on Ray Data (large folders, s3:// prefixes)")
    group.add_argument("--ray", action="store_true",
                       help="score on Ray Data (the cluster in RAY_ADDRESS, else a local runtime)")
    group.add_argument("--workers", type=positive_int, default=None,
                       help="scoring actors, one model each, a GPU each when the cluster has GPUs (implies --ray; "
                            "default with --ray: 1)")
    group.add_argument("--shard-size", type=positive_int, default=DEFAULT_SHARD_SIZE,
                       help=f"images per shard, the unit written and resumed (default {DEFAULT_SHARD_SIZE})")
    group.add_argument("--resume", action="store_true",
                       help="continue an interrupted batch run in --out: score only the shards not written yet")
    group.add_argument("--no-overlays", dest="overlays", action="store_false",
                       help="write scores only, no heatmap overlay per image")


def wants_batch(args: argparse.Namespace) -> bool:
    """True when the flags ask for the Ray Data path rather than the single-process one."""
    return bool(args.ray or args.workers or args.resume)


# --- reading images on the workers -----------------------------------------------------------
class _Reader:
    """Decodes local paths or s3:// URIs to RGB exactly as `predict` does (`read_image_rgb`);
    S3 objects are fetched as bytes into a private temporary folder, decoded, then deleted."""

    def __init__(self, s3: Any = None) -> None:
        self.client = s3.client(attempts=5) if s3 is not None else None
        self.tmp = tempfile.TemporaryDirectory(prefix="logicad-batch-")

    def __call__(self, item: str) -> np.ndarray:
        from logicad.data.errors import DatasetError
        from logicad.data.images import read_image_rgb

        if not item.startswith("s3://"):
            return read_image_rgb(Path(item))
        bucket, _, key = item.removeprefix("s3://").partition("/")
        local = Path(self.tmp.name, f"{os.getpid()}-{abs(hash(item))}{Path(key).suffix}")
        local.write_bytes(self.client.get_object(Bucket=bucket, Key=key)["Body"].read())
        try:
            return read_image_rgb(local)
        except DatasetError as exc:
            raise DatasetError(str(exc).replace(str(local), item)) from None
        finally:
            local.unlink(missing_ok=True)


class ShardScorer:
    """A Ray Data callable class: one method per actor, loaded once; each input row is a shard
    (`shard`: index, `items`: its images), each output row that shard's pickled result."""

    def __init__(self, payload_ref: list, threshold: float | None, batch_size: int, compile: bool | None,
                 overlays: bool, images: str, s3: Any = None) -> None:
        import ray
        import torch

        from ..evaluate.compiled import make_scorer
        from ..train.checkpoints import method_from_payload

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.method = method_from_payload(ray.get(payload_ref[0])).to(self.device)
        self.scorer = make_scorer(self.method, self.device, compile)
        self.threshold, self.batch_size, self.overlays, self.images = threshold, batch_size, overlays, images
        self.read = _Reader(s3)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import numpy as np

        results = [pickle.dumps(self.score_shard(int(shard), [str(item) for item in items]))
                   for shard, items in zip(batch["shard"], batch["items"], strict=True)]
        return {"shard": np.asarray(batch["shard"]), "result": np.asarray(results, dtype=object)}

    def score_shard(self, shard: int, items: list[str]) -> dict[str, Any]:
        """{shard, rows, unreadable, overlays: [(name, png bytes)], fatal} of one shard. Images are
        read and scored a batch at a time, so an actor holds one batch of decoded images, not a
        shard's; overlays read their image again once the shard's colour scale is known."""
        rows, unreadable, kept = [], [], []
        for start in range(0, len(items), self.batch_size):
            decoded, bad, fatal = self._decode(items[start:start + self.batch_size])
            if fatal:
                return {"shard": shard, "fatal": fatal}
            unreadable += bad
            scored = self._score([image for _, image in decoded])
            rows += [(item, f"{score:.6f}", self._verdict(score))
                     for (item, _), (_, score) in zip(decoded, scored, strict=True)]
            kept += [(item, amap, score) for (item, _), (amap, score) in zip(decoded, scored, strict=True)]
        pictures = self._overlays(kept) if self.overlays and kept else []
        return {"shard": shard, "rows": rows, "unreadable": unreadable, "overlays": pictures, "fatal": None}

    def _decode(self, items: list[str]) -> tuple[list[tuple[str, np.ndarray]], list[tuple[str, str]], str | None]:
        """(decoded images in order, [(item, why)] of those that do not decode, the first other
        failure, e.g. S3 refusing a read, or None): reads run on a few threads (I/O bound)."""
        from logicad.data.errors import DatasetError

        def one(item: str) -> tuple[str, np.ndarray | None, str | None, bool]:
            try:
                return item, self.read(item), None, False
            except DatasetError as exc:
                return item, None, str(exc), False
            except Exception as exc:  # S3 and OS errors: the run cannot go on
                return item, None, f"{item}: {exc.__class__.__name__}: {str(exc)[:200]}", True

        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            results = list(pool.map(one, items))
        fatal = next((why for _, _, why, stop in results if stop), None)
        return ([(item, image) for item, image, _, _ in results if image is not None],
                [(item, why) for item, image, why, _ in results if image is None], fatal)

    def _score(self, images: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        """(map at the model's input size, image score) per image, preprocessed as `predict` does."""
        import torch

        from logicad.data.dataset import resize_image
        from logicad.data.transforms import eval_transform

        transform, size = eval_transform(), self.method.config.image_size
        tensors = [transform(image=resize_image(image, size))["image"] for image in images]
        out: list[tuple[np.ndarray, float]] = []
        with torch.inference_mode():
            for start in range(0, len(tensors), self.batch_size):
                maps, scores = self.scorer(torch.stack(tensors[start:start + self.batch_size]).to(self.device))
                out += [(maps[i, 0].float().cpu().numpy(), float(scores[i])) for i in range(len(maps))]
        return out

    def _verdict(self, score: float) -> str:
        from ..export.predictions import verdict

        return verdict(score, self.threshold)

    def _overlays(self, kept: list[tuple[str, np.ndarray, float]]) -> list[tuple[str, bytes]]:
        """Overlay PNGs named as `predict` names them; the colour scale is the shard's map range
        (shards are scored apart, so a run-wide range is not known while streaming)."""
        import cv2

        from ..export.predictions import overlay, overlay_name
        from .batch_shards import relative_name

        low = min(float(amap.min()) for _, amap, _ in kept)
        high = max(float(amap.max()) for _, amap, _ in kept)

        def one(entry: tuple[str, np.ndarray, float]) -> tuple[str, bytes]:
            item, amap, score = entry
            name = overlay_name(Path(relative_name(item, self.images)), Path("."))
            _, png = cv2.imencode(".png", overlay(self.read(item), amap, low, high, self._caption(score))[..., ::-1])
            return name.as_posix(), png.tobytes()

        with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
            return list(pool.map(one, kept))

    def _caption(self, score: float) -> str:
        """The caption `predict` writes on an overlay: score and verdict at the threshold."""
        if self.threshold is None:
            return f"score {score:.4g}"
        verdict = f" > {self.threshold:.4g}: anomalous" if score > self.threshold else \
            f" <= {self.threshold:.4g}: good"
        return f"score {score:.4g}{verdict}"


# --- the driver ---------------------------------------------------------------------------------
class BatchResult(NamedTuple):
    """What a batch run did: where the scores are (None when stopped early), shards scored now,
    shards found already written (resume), images in the plan, and when each scored shard was
    written (seconds after scoring started, actor start-up included)."""

    scores: Path | None
    scored_shards: int
    kept_shards: int
    images: int
    shard_seconds: tuple[float, ...] = ()


def run_batch_predict(payload: dict[str, Any], model: str, images: str, out: Path, *, workers: int = 1,
                      shard_size: int = DEFAULT_SHARD_SIZE, threshold: float | None = None, batch_size: int = 16,
                      skip_unreadable: bool = False, overlays: bool = True, resume: bool = False,
                      compile: bool | None = None, s3_endpoint_url: str | None = None,
                      stop_after: int | None = None) -> BatchResult:
    """Score every image below `images` (folder or s3:// prefix) on Ray Data into `out`, `workers`
    actors at once. `stop_after`: stop once that many shards were written (a test's interruption)."""
    from .batch_shards import Plan, fingerprint, list_inputs, model_digest, open_output, shards_of

    threshold = threshold if threshold is not None else payload.get("threshold")
    s3 = _s3_settings(images, s3_endpoint_url) if images.startswith("s3://") else None
    items = list_inputs(images, s3)
    plan = Plan(model=model, model_digest=model_digest(payload), images=images, count=len(items),
                fingerprint=fingerprint(items), shard_size=shard_size, threshold=threshold, overlays=overlays)
    pending = open_output(out, plan, resume)  # refuses a non-empty folder or another plan first
    kept = plan.shard_count - len(pending)
    if kept:
        print(f"resuming {out}: {kept} of {plan.shard_count} shards already written, {len(pending)} to score",
              flush=True)
    shards = shards_of(len(items), shard_size)
    times = _stream(payload, [(i, [items[j] for j in shards[i]]) for i in pending], out, plan,
                    _Settings(workers, batch_size, compile, skip_unreadable, s3), kept, stop_after)
    if len(times) < len(pending):
        return BatchResult(None, len(times), kept, len(items), times)
    return BatchResult(_finish(out, plan), len(times), kept, len(items), times)


def _finish(out: Path, plan: Plan) -> Path:
    """Merge the shards into scores.csv (and skipped.csv) and print predict's summary line."""
    from logicad.data.errors import DatasetError

    from ..export.predictions import summary_line
    from .batch_shards import merge

    verdicts, skipped = merge(out, plan.shard_count)
    if skipped:
        print(f"skipped {skipped} unreadable image(s), listed in {out / 'skipped.csv'}", flush=True)
    if not verdicts:
        raise DatasetError(f"{plan.images}: no readable images to score")
    print(summary_line(verdicts, plan.threshold, skipped), flush=True)
    return out / "scores.csv"


class _Settings(NamedTuple):
    workers: int
    batch_size: int
    compile: bool | None
    skip_unreadable: bool
    s3: Any


def _s3_settings(uri: str, endpoint_url: str | None):
    """The driver's S3 settings with its credentials resolved, so workers use the same ones."""
    from dataclasses import replace

    from ..storage import S3Settings, s3_errors

    settings = S3Settings.from_env(endpoint_url)
    with s3_errors(uri, settings, "resolving credentials"):
        credentials = settings.session().get_credentials()
    if credentials is None:
        return settings
    frozen = credentials.get_frozen_credentials()
    return replace(settings, access_key=frozen.access_key, secret_key=frozen.secret_key,
                   session_token=frozen.token)


def _stream(payload: dict[str, Any], todo: list[tuple[int, list[str]]], out: Path, plan: Plan,
            settings: _Settings, kept: int, stop_after: int | None) -> tuple[float, ...]:
    """Score the pending shards on Ray Data, writing each as it arrives; when each was written."""
    if not todo:
        return ()
    import ray

    from ..train.driver import ensure_ray

    ensure_ray()
    dataset = ray.data.from_items([{"shard": i, "items": items} for i, items in todo],
                                  override_num_blocks=len(todo))
    gpus = _gpus_per_actor(settings.workers)
    scored = dataset.map_batches(
        ShardScorer, batch_size=1, compute=ray.data.ActorPoolStrategy(size=settings.workers), num_gpus=gpus,
        num_cpus=1,
        fn_constructor_kwargs={"payload_ref": [ray.put(payload)], "threshold": plan.threshold,
                               "batch_size": settings.batch_size, "compile": settings.compile,
                               "overlays": plan.overlays, "images": plan.images, "s3": settings.s3})
    progress = _Progress(plan.count, plan.count - sum(len(items) for _, items in todo), plan.shard_count, kept)
    every, times, start = max(1, len(todo) // 20), [], time.perf_counter()
    for row in scored.iter_rows():
        result = pickle.loads(row["result"])
        _write_result(out, result, settings.skip_unreadable)
        times.append(time.perf_counter() - start)
        progress.shard_done(len(result["rows"]) + len(result["unreadable"]), show=len(times) % every == 0
                            or len(times) == len(todo))
        if stop_after is not None and len(times) >= stop_after:
            break
    return tuple(times)


def _gpus_per_actor(workers: int) -> float:
    """One GPU per actor when the cluster has GPUs or can autoscale GPU nodes, else CPU; says so."""
    from ..train.resources import cluster_gpu_view

    cluster = cluster_gpu_view()
    if cluster.now > 0 or cluster.can_autoscale():
        per = min(1.0, cluster.largest_node())
        print(f"scoring on {workers} actor(s), {per:g} GPU each ({cluster.describe()})", flush=True)
        return per
    print(f"scoring on {workers} actor(s) on CPU: the Ray cluster has no GPU and no GPU node type to autoscale",
          flush=True)
    return 0.0


class _Progress:
    """`[batch predict] 1280/5000 images (8/20 shards) 41.2 images/s ETA 1m30s` on the driver."""

    def __init__(self, total: int, done: int, shards: int, shards_done: int) -> None:
        self.total, self.done, self.start_done = total, done, done
        self.shards, self.shards_done, self.start = shards, shards_done, time.perf_counter()

    def shard_done(self, images: int, show: bool) -> None:
        from ..train.progress import format_seconds

        self.done, self.shards_done = self.done + images, self.shards_done + 1
        rate = (self.done - self.start_done) / max(time.perf_counter() - self.start, 1e-9)
        eta = format_seconds((self.total - self.done) / rate) if rate > 0 else "?"
        if show:
            print(f"[batch predict] {self.done}/{self.total} images ({self.shards_done}/{self.shards} shards) "
                  f"{rate:.1f} images/s ETA {eta}", flush=True)


def _write_result(out: Path, result: dict[str, Any], skip_unreadable: bool) -> None:
    """Overlays first, then the shard's part file (its presence marks the shard done). An
    unreadable image stops the run unless `skip_unreadable`; finished shards stay for --resume."""
    from logicad.data.errors import DatasetError

    from .batch_shards import write_atomic, write_shard

    if result["fatal"]:
        raise DatasetError(f"{result['fatal']} (while reading images on a worker; finished shards are kept, "
                           "rerun with --resume)")
    if result["unreadable"] and not skip_unreadable:
        why = result["unreadable"][0][1]
        raise DatasetError(f"{why} (give --skip-unreadable to list such images in skipped.csv and score the "
                           "rest; rerun with --resume)")
    for name, png in result["overlays"]:
        write_atomic(out / "overlays" / name, png)
    write_shard(out, result["shard"], result["rows"], result["unreadable"])
