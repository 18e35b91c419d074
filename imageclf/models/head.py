"""A trained head at prediction time: the linear layer that maps a backbone's features to class scores (its dropout
does nothing then). The one implementation of the head on features, in the two forms it runs in: on features read
from the feature store (`probabilities`), and as ONNX nodes after a backbone graph (`onnx_model`)."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LinearHead:
    """`weight` (classes × features) and `bias` (classes) of a Classifier's head."""

    weight: np.ndarray
    bias: np.ndarray

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        """Softmax of the logits, computed as torch computes the Classifier's head."""
        import torch

        logits = torch.nn.functional.linear(
            torch.as_tensor(features), torch.from_numpy(self.weight), torch.from_numpy(self.bias)
        )
        return torch.softmax(logits, dim=1).numpy()

    def onnx_model(self, features: str, softmax: bool, opset_import, ir_version: int):
        """An ONNX model from the input `features` (a batch of feature vectors) to `probabilities` (with `softmax`)
        or `logits`: a Gemm with this head's weights, then a Softmax. Merged after a backbone graph's output
        (onnx.compose), it makes the backbone graph a classifier."""
        from onnx import TensorProto, helper, numpy_helper

        output = "probabilities" if softmax else "logits"
        nodes = [
            helper.make_node("Gemm", [features, "imageclf_head_weight", "imageclf_head_bias"], ["logits"], transB=1)
        ]
        if softmax:
            nodes.append(helper.make_node("Softmax", ["logits"], [output], axis=1))
        classes, width = self.weight.shape
        graph = helper.make_graph(
            nodes,
            "head",
            [helper.make_tensor_value_info(features, TensorProto.FLOAT, ["batch", width])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", classes])],
            [
                numpy_helper.from_array(self.weight, "imageclf_head_weight"),
                numpy_helper.from_array(self.bias, "imageclf_head_bias"),
            ],
        )
        return helper.make_model(graph, opset_imports=opset_import, ir_version=ir_version)
