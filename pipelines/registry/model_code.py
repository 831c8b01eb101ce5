"""The registered model's code, logged by path (MLflow's models-from-code): loading it builds a
`LogicadModel` from logicad's code (the copy logged with the model, which MLflow puts first on
sys.path, else an installed logicad), so no pickled object travels with the model (and MLflow
does not warn about CloudPickle at every registration)."""

import mlflow.models

from logicad.pipelines.registry.pyfunc import LogicadModel

mlflow.models.set_model(LogicadModel())
