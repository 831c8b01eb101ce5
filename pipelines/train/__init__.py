"""Train: the Ray Train driver, the worker loop every method runs, sessions, checkpoints, progress."""
