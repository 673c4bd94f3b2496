"""Export to TFLite and measure the exported model with the LiteRT interpreter.

>>> tfl = tfopt.export.to_tflite(model, quantization="int8", representative_data=train_ds)  # doctest: +SKIP
>>> tfopt.export.evaluate(tfl, val_ds)["accuracy"]  # doctest: +SKIP
"""

from tfopt.export.evaluate import compare, evaluate, latency
from tfopt.export.tflite import QUANTIZATIONS, TFLiteModel, interpreter, tflite_weights, to_tflite, weight_stats

__all__ = ["QUANTIZATIONS", "TFLiteModel", "compare", "evaluate", "interpreter", "latency", "tflite_weights", "to_tflite", "weight_stats"]
