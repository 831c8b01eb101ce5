"""A non-finite loss ends a training run without Ray retrying it.

Ray Train retries any worker error from the latest checkpoint (`--max-failures`), which
would only reproduce a NaN. `guarded_train_loop` runs the product loop and turns a
`NonFiniteLossError` into a final report carrying the message; the driver raises it again
as one line. Every rank reads its losses at the same steps and DDP keeps replicas equal,
so all ranks meet the non-finite value at the same read and report together.
"""

from __future__ import annotations

from typing import Any

NONFINITE_KEY = "nonfinite_loss"


def guarded_train_loop(loop_config: dict[str, Any]) -> None:
    """`train_loop_per_worker`: the product loop, with a non-finite loss reported, not raised."""
    import tempfile
    from pathlib import Path

    import ray.train

    from .worker import NonFiniteLossError, train_loop

    try:
        train_loop(loop_config)
    except NonFiniteLossError as exc:
        # Ray Train keeps the metrics of checkpointed reports only: rank 0 attaches a small one
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if ray.train.get_context().get_world_rank() == 0:
                (Path(tmp) / f"{NONFINITE_KEY}.txt").write_text(str(exc) + "\n")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report({NONFINITE_KEY: str(exc)}, checkpoint=checkpoint)


def raise_if_nonfinite(metrics: dict[str, Any] | None) -> None:
    """NonFiniteLossError (the worker's message) when the run ended on a non-finite loss."""
    from .worker import NonFiniteLossError

    if metrics and metrics.get(NONFINITE_KEY):
        raise NonFiniteLossError(metrics[NONFINITE_KEY])
