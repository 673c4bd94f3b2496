"""Model builders, registered by name: ``build("cnn", input_shape=..., num_classes=...)``.

Every builder returns a functional tf_keras model (so tfmot can wrap each layer) whose last layer is a
linear Dense named "logits". Register your own with ``@register("name")``.

>>> from tfopt.models import build, list_models
>>> list_models()
['cnn', 'lstm', 'mlp', 'resnet']
>>> build("cnn", input_shape=(28, 28, 1), num_classes=10).output_shape
(None, 10)
"""

from tfopt.models.registry import FROM_DATA, build, build_for, data_args, get_builder, list_models, register  # noqa: I001
from tfopt.models.cnn import cnn
from tfopt.models.lstm import lstm
from tfopt.models.mlp import mlp
from tfopt.models.resnet import resnet

__all__ = ["build", "build_for", "data_args", "FROM_DATA", "register", "list_models", "get_builder", "cnn", "mlp", "lstm", "resnet"]
