"""Tune: Ray Tune sweeps, search-space files, tuning objectives, MLflow child runs."""
