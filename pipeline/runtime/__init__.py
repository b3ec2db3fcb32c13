"""Running artifacts: onnxruntime and OpenVINO sessions with the device asserted, the backend of each format, the
Runner (the one way to run any artifact), torch loaders, thread counts and timing primitives."""
