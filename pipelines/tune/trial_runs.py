"""MLflow for sweeps: one nested child run per Tune trial, created and fed by the driver."""

from __future__ import annotations

import time
from typing import Any

from ray.tune import Callback

from ..registry import tracking

SKIP = {"config", "date", "hostname", "node_ip", "pid", "timestamp", "time_this_iter_s", "time_total_s", "trial_id",
        "experiment_tag", "done", "should_checkpoint", "checkpoint_dir_name", "time_since_restore",
        "iterations_since_restore", "training_iteration"}


class MlflowTrialRuns(Callback):
    """Child run per trial (params = its sampled keys), metrics per report, status at the end.

    Runs are found again by the `logicad.trial_id` tag, so a resumed sweep keeps them."""

    def __init__(self, uri: str, experiment: str, parent_run_id: str, max_steps: int | None = None) -> None:
        self.uri, self.experiment, self.parent = uri, experiment, parent_run_id
        self.max_steps = max_steps  # the base config's step budget (a trial may sample its own)
        self.runs: dict[str, str] = {}
        self.steps: dict[str, int] = {}

    def _run(self, trial) -> str:
        if trial.trial_id not in self.runs:
            existing = tracking.trial_run_id(tracking_uri=self.uri, parent_run_id=self.parent,
                                             trial_id=trial.trial_id)
            self.runs[trial.trial_id] = existing or tracking.start_run(
                self.uri, self.experiment, f"trial-{trial.trial_id}", dict(trial.config.get("params", {})),
                {"logicad.trial_id": trial.trial_id, "logicad.trial_path": str(trial.path)},
                parent_run_id=self.parent)
        return self.runs[trial.trial_id]

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._run(trial)

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient

        step = self.step_of(trial, result)
        now = int(time.time() * 1000)
        values = [Metric(k, float(v), now, step) for k, v in result.items()
                  if k not in SKIP and isinstance(v, (int, float)) and not isinstance(v, bool)]
        MlflowClient(self.uri).log_batch(self._run(trial), metrics=values)

    def step_of(self, trial, result: dict) -> int:
        """The training step a report was measured at: its `step`, or for the final report (taken
        after the last step) the trial's step budget, never below an earlier report's step."""
        last = self.steps.get(trial.trial_id, 0)
        if "step" in result:
            step = int(result["step"])
        else:
            budget = trial.config.get("params", {}).get("max_steps", self.max_steps or last)
            step = int(budget) if result.get("final") else last
        self.steps[trial.trial_id] = max(last, step)
        return max(last, step)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        tracking.end_run(self.uri, self._run(trial), "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        tracking.end_run(self.uri, self._run(trial), "FAILED")
