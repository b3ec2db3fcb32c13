"""What several passes share: ONNX I/O, shape checks and the per-shape numeric check."""
