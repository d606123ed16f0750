"""Integer-arithmetic-only inference (Jacob et al., CVPR 2018): fixed-point math, parameters, reference kernels.

- :mod:`.fixedpoint`: gemmlowp/TFLite primitives (NumPy definition + bit-identical torch versions);
- :mod:`.qparams`: scales, zero points, multipliers, bias quantization (float, conversion time only);
- :mod:`.reference`: plain int64 NumPy kernels, the definition of the integer model.
"""

from .fixedpoint import (
    INT32_MAX,
    INT32_MIN,
    multiply_by_quantized_multiplier,
    multiply_by_quantized_multiplier_torch,
    quantize_multiplier,
    rdbpot,
    rdbpot_torch,
    requantize,
    requantize_torch,
    srdhm,
    srdhm_torch,
)
from .qparams import (
    add_multipliers,
    asymmetric_uint8,
    bias_int32,
    concat_multipliers,
    dequantize,
    nudged_range,
    output_multiplier,
    quantize,
    relu_range,
    round_half_away,
    symmetric_int8,
)
from . import reference

__all__ = [
    "INT32_MAX",
    "INT32_MIN",
    "add_multipliers",
    "asymmetric_uint8",
    "bias_int32",
    "concat_multipliers",
    "dequantize",
    "multiply_by_quantized_multiplier",
    "multiply_by_quantized_multiplier_torch",
    "nudged_range",
    "output_multiplier",
    "quantize",
    "quantize_multiplier",
    "rdbpot",
    "rdbpot_torch",
    "reference",
    "relu_range",
    "requantize",
    "requantize_torch",
    "round_half_away",
    "srdhm",
    "srdhm_torch",
    "symmetric_int8",
]
from . import calibrate, convert, engine, fakequant, method, model, qat  # noqa: E402  (method registers "integer-only")
from .method import IntegerOnly, inspect, int_mismatches  # noqa: E402
from .model import IntegerModel  # noqa: E402
from .qat import prepare  # noqa: E402
from .export import build_onnx, export_file, export_onnx  # noqa: E402

__all__ += ["build_onnx", "export_file", "export_onnx", "IntegerModel", "IntegerOnly", "calibrate", "convert", "engine", "fakequant", "inspect",
            "int_mismatches", "method", "model", "prepare", "qat"]
