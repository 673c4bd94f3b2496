"""Export to TFLite and measure the exported model with the LiteRT interpreter.

>>> tfl = tfopt.export.to_tflite(model, quantization="int8", representative_data=train_ds)  # doctest: +SKIP
>>> tfopt.export.evaluate(tfl, test_ds)["accuracy_ci95"]  # doctest: +SKIP
"""

from tfopt.export.evaluate import (PREDICTIONS, compare, compare_with_baseline, evaluate, evaluate_splits, latency,
                                    read_predictions, write_predictions)
from tfopt.export.tflite import (CALIBRATED, CRASH_PRONE, QUANTIZATION_NAMES, QUANTIZATIONS, VARIANT, TFLiteModel, interpreter,
                                  tflite_weight_bits, tflite_weights, to_tflite, weight_stats)
from tfopt.export.int4 import INT4_QUANTIZATIONS, quantize_tflite

__all__ = ["CALIBRATED", "CRASH_PRONE", "INT4_QUANTIZATIONS", "PREDICTIONS", "QUANTIZATION_NAMES", "QUANTIZATIONS", "VARIANT", "TFLiteModel", "compare", "compare_with_baseline", "evaluate", "evaluate_splits",
           "interpreter", "latency", "quantize_tflite", "read_predictions", "tflite_weight_bits", "tflite_weights", "to_tflite", "weight_stats", "write_predictions"]
