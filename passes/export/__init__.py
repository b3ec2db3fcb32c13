"""Passes that export the eager model: TorchScript and ONNX."""
