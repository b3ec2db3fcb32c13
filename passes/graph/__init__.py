"""Passes that rewrite an ONNX graph: onnxsim and onnxruntime's fusions."""
