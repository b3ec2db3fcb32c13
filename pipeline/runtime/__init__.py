"""Running artifacts: onnxruntime sessions with the provider asserted, the Runner, and the timing engines."""
