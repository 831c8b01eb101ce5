"""Console progress for long loops: step, losses, steps/s and ETA."""

from __future__ import annotations

import time


def format_seconds(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """Prints `[name] step 120/600 loss 0.41 (l_hard 0.2, ...) 3.1 steps/s ETA 2m34s` lines
    (`unit` names what is counted: "step", or e.g. "image" for scoring)."""

    def __init__(self, name: str, total: int, start: int = 0, enabled: bool = True, unit: str = "step") -> None:
        self.name, self.total, self.enabled, self.unit = name, total, enabled, unit
        self.start_step, self.start_time = start, time.perf_counter()
        self.rate = 0.0

    def update(self, step: int, values: dict[str, float], every: int = 10) -> bool:
        """Record `step`; print (and return True) every `every` steps and at the end."""
        elapsed = time.perf_counter() - self.start_time
        self.rate = (step - self.start_step) / elapsed if elapsed > 0 else 0.0
        if not (step % max(every, 1) == 0 or step == self.total):
            return False
        if self.enabled:
            print(self.line(step, values), flush=True)
        return True

    def line(self, step: int, values: dict[str, float]) -> str:
        parts = ", ".join(f"{k} {v:.4g}" for k, v in values.items() if k != "loss")
        eta = (self.total - step) / self.rate if self.rate > 0 else float("inf")
        eta_text = format_seconds(eta) if eta != float("inf") else "?"
        loss = f" loss {values['loss']:.4g}" if "loss" in values else ""
        return (f"[{self.name}] {self.unit} {step}/{self.total}{loss}" + (f" ({parts})" if parts else "")
                + f" {self.rate:.2f} {self.unit}s/s ETA {eta_text}")
