"""MLflow "models from code" entry point of the served model: MLflow copies this file into the logged model and
runs it on load, instead of unpickling an object. Never imported by the package itself.

See https://mlflow.org/docs/latest/ml/model/models-from-code/ ; the class lives in
``catalog_classifier.registry.served``.
"""

from mlflow.models import set_model

from catalog_classifier.registry.served import CatalogClassifierModel

set_model(CatalogClassifierModel())
