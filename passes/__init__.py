"""The built-in passes, one module each, by stage: export/, graph/, precision/; repair/ and
_support/ hold what several passes share.

The table below is the whole registry of built-in passes: the engine imports a pass's module only
when a recipe, ``list`` or ``schema`` asks for it (pipeline.engine.registry).
"""

BUILTIN_PASSES: dict[str, str] = {
    "torchscript": "passes.export.torchscript:TorchScriptPass",
    "torch_export": "passes.export.torch_export:TorchExportPass",
    "onnx_export": "passes.export.onnx_export:OnnxExportPass",
    "openvino_convert": "passes.export.openvino_convert:OpenVinoConvertPass",
    "onnx_simplify": "passes.graph.onnx_simplify:OnnxSimplifyPass",
    "ort_optimize": "passes.graph.ort_optimize:OrtOptimizePass",
    "fp16": "passes.precision.fp16:Fp16Pass",
    "int8_dynamic": "passes.precision.int8_dynamic:Int8DynamicPass",
    "int8_static": "passes.precision.int8_static:Int8StaticPass",
    "matmul_nbits": "passes.precision.matmul_nbits:MatMulNBitsPass",
    "nncf_int8": "passes.precision.nncf_int8:NncfInt8Pass",
    "ov_weight_int8": "passes.precision.ov_weight_int8:OvWeightInt8Pass",
    "ov_weight_compress": "passes.precision.ov_weight_compress:OvWeightCompressPass",
}
