"""Model builders, registered by name: ``build("cnn", input_shape=..., num_classes=...)``.

Every builder returns a functional tf_keras model (so tfmot can wrap each layer) whose last layer is a
linear Dense named "logits". Register your own with ``@register("name")``.

>>> from tfopt.models import build, list_models
>>> list_models("mobilenet*")
['mobilenet_v2', 'mobilenet_v3_large', 'mobilenet_v3_small']
>>> build("cnn", input_shape=(28, 28, 1), num_classes=10).output_shape
(None, 10)
"""

from tfopt.models.registry import FROM_DATA, build, build_for, data_args, get_builder, list_models, register  # noqa: I001
from tfopt.models.cnn import cnn
from tfopt.models.lstm import lstm
from tfopt.models.mlp import mlp
from tfopt.models.resnet import resnet
from tfopt.models.transformer import AddPositionEmbedding, transformer
from tfopt.models.vit import vit
from tfopt.models.applications import (APPLICATIONS, application, densenet121, efficientnet_b0, mobilenet_v2,
                                       mobilenet_v3_large, mobilenet_v3_small, resnet50)

__all__ = ["build", "build_for", "data_args", "FROM_DATA", "register", "list_models", "get_builder", "cnn", "mlp", "lstm",
           "resnet", "transformer", "vit", "AddPositionEmbedding", "application", "APPLICATIONS", "mobilenet_v2",
           "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0", "resnet50", "densenet121"]
