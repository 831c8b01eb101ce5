"""Evaluate: MVTec LOCO metrics, scoring a method on a split, evaluate-maps, plots."""
