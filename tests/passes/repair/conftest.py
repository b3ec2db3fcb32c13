"""The tiny BERT with one weight changed: where a repair's localisation should find the error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


@pytest.fixture
def changed_matmul(tiny_onnx, tmp_path: Path) -> tuple[str, Path]:
    """(name, changed model): the tiny BERT's ONNX export with one layer-1 MatMul's weight moved away from
    zero by 0.05, saved beside it as broken.onnx."""
    model = onnx.load(str(tiny_onnx.path))
    weights = {t.name: t for t in model.graph.initializer}
    target = next(n for n in model.graph.node if n.op_type == "MatMul" and any(i in weights for i in n.input)
                  and "layer.1" in n.name)
    tensor = weights[next(i for i in target.input if i in weights)]
    value = numpy_helper.to_array(tensor)
    tensor.CopyFrom(numpy_helper.from_array(value + 0.05 * np.sign(value), tensor.name))
    broken = tmp_path / "broken.onnx"
    onnx.save_model(model, str(broken))
    return target.name, broken
