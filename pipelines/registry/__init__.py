"""Registry: MLflow tracking, the pyfunc model, the promotion gate, predict."""
