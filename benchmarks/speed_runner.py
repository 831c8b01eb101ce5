"""What every `benchmarks/*_speed.py` shares: load yardsticks, a median timer, synthetic
images, the machine record, and running each setting in a process of its own.

A speed benchmark on a shared machine is only readable next to the machine's state, so each
file records a matrix-multiply calibration (GFLOP/s at the thread count used) and the load
average before and after (`machine_record`). Settings whose peak memory is reported run in a
child process each (`run_each_in_process`): the child is the same script with `--one NAME`,
printing its row as JSON on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable


def calibrate(threads: int, seconds: float = 3.0) -> float:
    """Median float32 1024^2 matrix-multiply GFLOP/s at `threads` threads (a load yardstick)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        rates.append(4 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9)
    return round(statistics.median(rates), 1)


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_gb() -> float:
    """Peak resident memory of this process, GB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def sync(device: Any = None) -> None:
    """Wait for queued CUDA work on `device` (nothing for a CPU or None)."""
    if device is not None and getattr(device, "type", str(device)) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], repeats: int, warmup: int = 1, device: Any = None) -> float:
    """Median seconds of `fn()` over `repeats` calls after `warmup` untimed calls, waiting for
    queued CUDA work on `device` before each clock read."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def structured_images(n: int, size: int, seed: int = 0):
    """n x 3 x size x size crude structured images at ImageNet-normalised scale (blobs and bars
    on noise): speed does not depend on content, but constant inputs can take fast paths."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = 0.4 * torch.randn(n, 3, size, size, generator=g)
    for i in range(n):
        for _ in range(4):
            r, c = (int(v) for v in torch.randint(0, size * 3 // 4, (2,), generator=g))
            x[i, :, r:r + size // 6, c:c + size // 8] += torch.randn(3, 1, 1, generator=g) * 1.5
    return x


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_state(threads: int) -> dict[str, Any]:
    """The load yardsticks at one moment: matmul GFLOP/s at `threads` and the load average."""
    return {"gemm_gflops": calibrate(threads), "loadavg": os.getloadavg()}


def machine_record(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the JSON says about the machine: CPU, cores, torch, python, state before and after."""
    import torch

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "before": before, "after": after}


def run_each_in_process(script: str, names: Iterable[str], valid: Iterable[str], child_args: list[str],
                        threads: int, line: Callable[[str, dict[str, Any]], str]) -> dict[str, dict[str, Any]]:
    """{name: row} with each setting run as `script --one NAME *child_args` in its own process
    (OMP threads = `threads`, hub offline); `line(name, row)` is printed as each finishes. An
    unknown name or a failed child stops the run with its stderr's tail."""
    valid = list(valid)
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in valid:
            raise SystemExit(f"unknown setting {name!r}; valid: {', '.join(valid)}")
        cmd = [sys.executable, script, "--one", name, "--threads", str(threads), *child_args]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode:
            raise SystemExit(f"setting {name} failed:\n{proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(line(name, results[name]), flush=True)
    return results


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """`record` as indented JSON at `path` (folders made), stamped with the date."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "date": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    return path
