"""The ONNX graph builder shared by both integer-model exporters (:mod:`.export`, :mod:`.export_exact`).

Holds the nodes and initializers while a backend walks the IR, and the two kernels that are exact in either export
(max pooling and flatten on uint8 codes).
"""

from __future__ import annotations

import numpy as np

from compactnn.errors import ModelError

__all__ = ["Graph", "MS", "emit_flatten", "emit_max_pool"]

MS = "com.microsoft"


class Graph:
    """Collects nodes and initializers while walking the IR."""

    def __init__(self, model) -> None:
        from onnx import helper, numpy_helper  # imported lazily: onnx is only needed to export

        self.helper, self.numpy_helper = helper, numpy_helper
        self.model = model
        self.nodes: list = []
        self.inits: dict[str, object] = {}
        self.count = 0

    def const(self, name: str, array: np.ndarray) -> str:
        if name not in self.inits:
            self.inits[name] = self.numpy_helper.from_array(np.array(array, order="C"), name)
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], domain: str | None = None, **attrs) -> None:
        self.count += 1
        self.nodes.append(self.helper.make_node(op, inputs, outputs, name=f"{op}_{self.count}", domain=domain, **attrs))

    def qparams(self, value: str) -> tuple[str, str]:
        """Names of the float32 scale and uint8 zero point initializers of an IR value."""
        info = self.model.values.get(value)
        if info is None:
            raise ModelError(f"value {value!r} has no entry in model.values; the integer model is malformed")
        if info.get("dtype", "uint8") != "uint8":
            raise ModelError(f"value {value!r} has dtype {info['dtype']!r}; only uint8 activations export to ONNX")
        s = self.const(f"{value}_scale", np.array(info["scale"], dtype=np.float32))
        z = self.const(f"{value}_zero_point", np.array(info["zero_point"], dtype=np.uint8))
        return s, z

    def buffer(self, name: str) -> np.ndarray:
        try:
            t = self.model.get_buffer(name) if hasattr(self.model, "get_buffer") else getattr(self.model, name)
        except (AttributeError, KeyError):
            raise ModelError(f"the integer model has no buffer {name!r}; the model is malformed") from None
        return t.detach().cpu().numpy() if hasattr(t, "detach") else np.asarray(t)

    def clamp(self, op, raw: str, out: str) -> None:
        """Route ``raw`` to ``out``, through a uint8 ``Clip`` when the op's fused clamp is narrower than [0, 255]."""
        qmin, qmax = op.qmin, op.qmax
        if (qmin, qmax) == (0, 255):
            self.nodes[-1].output[0] = out  # no clamp: the op writes the value directly
            return
        lo = self.const(f"{out}_qmin", np.array(qmin, dtype=np.uint8))
        hi = self.const(f"{out}_qmax", np.array(qmax, dtype=np.uint8))
        self.node("Clip", [raw, lo, hi], [out])


def emit_max_pool(g: Graph, i: int, op) -> None:
    """Max pooling on uint8 codes (exact as it is: no requantization)."""
    p = op.padding
    g.node("MaxPool", list(op.inputs[:1]), [op.output], kernel_shape=list(op.kernel), strides=list(op.stride),
           pads=[p[0], p[1], p[0], p[1]])


def emit_flatten(g: Graph, i: int, op) -> None:
    """Flatten (N, C, H, W) -> (N, C·H·W) on codes."""
    g.node("Flatten", list(op.inputs[:1]), [op.output], axis=1)
