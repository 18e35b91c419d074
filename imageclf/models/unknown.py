"""Photos of none of the classes: scores computed from a photo's frozen-backbone features, each with a threshold
chosen on val, and the same computation as ONNX nodes so that an exported model flags the same photos.

Two scores, higher meaning "more like the training photos", a photo being flagged when any is under its threshold:
- `knn`: the cosine similarity of its features to their k-th nearest neighbour among the training photos' features.
  Every architecture has it.
- `imagenet`: the log of the probability that the backbone's own ImageNet classifier puts on the synsets of the
  classes (the ones the training photos' predictions concentrate on, or a mapping given by hand). Only a pretrained
  backbone that ships its classifier has it; a model trained from zero uses the feature distance alone.
A distance score alone also flags odd photos of the classes (dark rooms, several animals, odd framing), and the
ImageNet view alone lets through animals near a class (a camel near a horse): each at half the val budget, together
they flag at most 1 % of val (docs/unknown.md has the figures).

NumPy only: `imageclf predict` runs it without torch. `state` and `from_state` keep it as arrays and plain Python
for a `weights_only` model file; `onnx_unknown` appends it to a graph that outputs `features`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import onnx

# The share of val photos all scores together may flag; each score gets an equal part of it.
UNKNOWN_VAL_SHARE = 0.01
# Neighbours: on three splits of the animals photos k from 3 to 6 did about the same; 1 and 2 flagged more test photos.
KNN_K = 5
# A synset belongs to a class when the training photos of that class give it at least this mean probability: 170 of
# ImageNet's 1,000 for cat, dog and horse (the dog breeds, the cats, sorrel, and for this data's small, distant horses
# also camel, hartebeest, ox...). 0.001 (320 synsets) and 0.003 flagged fewer photos of none of the classes.
SYNSET_MIN_PROBABILITY = 0.002
# Training features are kept as float16: 2 bytes a number, no flag changed on the animals photos (docs/unknown.md).
BANK_DTYPE = np.float16
STATE_VERSION = 1
# Relative: 10 × the largest NumPy-ONNX Runtime difference measured on real features (docs/unknown.md).
THRESHOLD_MARGIN = 1e-5

# The names of every node, initializer and output `onnx_unknown` adds start with this.
UNKNOWN_NODES = "unknown"

# Why a photo was flagged, by score name: the words `predict` and the serve page show.
REASONS = {
    "knn": "far from every training photo (feature distance)",
    "imagenet": "the backbone's ImageNet classifier sees none of the classes",
}


def normalised(features: np.ndarray) -> np.ndarray:
    """Each row at unit length; a row of zeros (a ReLU backbone can give one) stays zeros, as ONNX's
    LpNormalization leaves it, so its similarity to every training photo is 0."""
    features = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(features, axis=1, keepdims=True)
    return np.divide(features, norms, out=np.zeros_like(features), where=norms > 0)


def logsumexp(values: np.ndarray) -> np.ndarray:
    """log Σ exp over axis 1, max-shifted, as the ONNX nodes of `onnx_unknown` compute it."""
    peak = values.max(axis=1, keepdims=True)
    return (np.log(np.exp(values - peak).sum(axis=1, keepdims=True)) + peak)[:, 0]


def calibrated_threshold(scores: np.ndarray, share: float) -> float:
    """The highest threshold under which at most floor(share × n) of these val scores fall, less a margin of
    `THRESHOLD_MARGIN`: NumPy and an ONNX runtime round float32 sums differently (by about 1e-6 here), and the val
    photo whose score sets the threshold must stay on the same side of it in both."""
    ranked = np.sort(np.asarray(scores, dtype=np.float64))
    kept = ranked[math.floor(round(share * len(ranked), 9))]
    return float(kept - THRESHOLD_MARGIN * max(1.0, abs(kept)))


def imagenet_classifier(state_dict: Mapping[str, Any], classes: int = 1000) -> tuple[np.ndarray, np.ndarray] | None:
    """The (weight, bias) of the ImageNet classifier in an architecture's pretrained state dict (timm's and the Lite
    packages' `_fc`/`classifier`, torchvision's `fc`/`classifier.1`): the linear layer with `classes` outputs that
    reads the pooled features. None when there is none (a model trained from zero)."""
    for name, tensor in state_dict.items():
        bias = state_dict.get(name.removesuffix("weight") + "bias") if name.endswith("weight") else None
        if bias is not None and np.ndim(tensor) == 2 and np.shape(tensor)[0] == classes == np.shape(bias)[0]:
            return np.asarray(tensor, dtype=np.float32), np.asarray(bias, dtype=np.float32)
    return None


@dataclass(frozen=True)
class ImagenetHead:
    """The backbone's ImageNet classifier (stored as float16) and the synsets of each class."""

    weight: np.ndarray
    bias: np.ndarray
    class_synsets: dict[str, list[int]]

    @property
    def synsets(self) -> np.ndarray:
        return np.array(sorted({index for indices in self.class_synsets.values() for index in indices}), np.int64)

    @cached_property
    def float32(self) -> tuple[np.ndarray, np.ndarray]:
        """The weight and bias as float32, converted once (each call took 20 ms for Lite0's 1,000 × 1,280)."""
        return self.weight.astype(np.float32), self.bias.astype(np.float32)

    def logits(self, features: np.ndarray) -> np.ndarray:
        weight, bias = self.float32
        return np.asarray(features, dtype=np.float32) @ weight.T + bias

    def log_mass(self, logits: np.ndarray) -> np.ndarray:
        """log of the softmax probability on the classes' synsets."""
        logits = np.asarray(logits, dtype=np.float32)
        return logsumexp(logits[:, self.synsets]) - logsumexp(logits)


def learned_synsets(
    probabilities: np.ndarray, labels: np.ndarray, classes: Sequence[str], min_probability: float
) -> dict[str, list[int]]:
    """Each class's synsets: those its training photos give a mean ImageNet probability of at least
    `min_probability`, and at least the one they give the most (photos the ImageNet classifier finds like nothing in
    particular, such as plain colours, spread their probability under that bar)."""
    labels = np.asarray(labels)
    synsets = {}
    for label, name in enumerate(classes):
        if np.any(labels == label):
            mean = probabilities[labels == label].mean(axis=0)
            synsets[name] = sorted(
                {int(np.argmax(mean)), *(int(index) for index in np.nonzero(mean >= min_probability)[0])}
            )
    return synsets


def softmax(logits: np.ndarray) -> np.ndarray:
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exponentials / exponentials.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Flags:
    """Per photo: whether it is none of the classes, and the names of the scores that flagged it (`REASONS`)."""

    unknown: np.ndarray
    reasons: list[tuple[str, ...]]


@dataclass(frozen=True)
class UnknownDetector:
    """What flags a photo as none of the classes: the training photos' normalised features (`bank`), the ImageNet
    classifier when the backbone has one, and one threshold per score."""

    bank: np.ndarray
    k: int
    imagenet: ImagenetHead | None
    thresholds: dict[str, float] = field(default_factory=dict)

    @cached_property
    def bank_float32(self) -> np.ndarray:
        """The bank as float32, converted once: a photo's similarities are a float32 product, as in the ONNX nodes."""
        return self.bank.astype(np.float32)

    @property
    def score_names(self) -> list[str]:
        return [name for name in SCORES if name != "imagenet" or self.imagenet is not None]

    @property
    def note(self) -> str:
        """What a user should know about how this detector decides, or "" when it uses every score."""
        if self.imagenet is None:
            return (
                "feature distance only: no ImageNet classifier reads this model's features "
                "(its backbone trained, or never had one)"
            )
        return ""

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        labels: np.ndarray,
        classes: Sequence[str],
        val_features: np.ndarray,
        imagenet: tuple[np.ndarray, np.ndarray] | None = None,
        class_synsets: Mapping[str, Sequence[int]] | None = None,
        k: int = KNN_K,
        bank_size: int | None = None,
        share: float = UNKNOWN_VAL_SHARE,
        seed: int = 0,
    ) -> UnknownDetector:
        """Fit on the training photos' features and labels, then calibrate on val (all of the classes).

        `imagenet`: the backbone's ImageNet (weight, bias) (`imagenet_classifier`), None for a backbone without one,
        and for a fine-tuned one: its features no longer match the classifier trained on the pretrained ones.
        `class_synsets`: class → ImageNet class indices, given by hand; learned from the training photos when None.
        `bank_size`: keep this many training photos' features (drawn with `seed`), all when None.
        """
        features = np.asarray(features, dtype=np.float32)
        labels = np.asarray(labels)
        if bank_size is not None and bank_size < len(features):
            chosen = np.sort(np.random.default_rng(seed).choice(len(features), bank_size, replace=False))
            bank = normalised(features[chosen])
        else:
            bank = normalised(features)
        head = None
        if imagenet is not None:
            weight, bias = (np.asarray(array, dtype=np.float32) for array in imagenet)
            if class_synsets is None:
                probabilities = softmax(features @ weight.T + bias)
                class_synsets = learned_synsets(probabilities, labels, classes, SYNSET_MIN_PROBABILITY)
            synsets = {name: sorted(int(index) for index in indices) for name, indices in class_synsets.items()}
            head = ImagenetHead(weight.astype(BANK_DTYPE), bias.astype(BANK_DTYPE), synsets)
        detector = cls(bank.astype(BANK_DTYPE), int(min(k, len(bank))), head)
        return detector.calibrated(val_features, share)

    def calibrated(self, val_features: np.ndarray, share: float = UNKNOWN_VAL_SHARE) -> UnknownDetector:
        """The same detector with each score's threshold set on val photos, together flagging at most `share`."""
        scores = self.scores(val_features)
        part = share / len(scores)
        return replace(self, thresholds={name: calibrated_threshold(values, part) for name, values in scores.items()})

    def scores(self, features: np.ndarray, imagenet_logits: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Each score of each photo (float32, higher: more like the training photos). `imagenet_logits`: the
        backbone's ImageNet logits when the caller has them, else they are computed from `features`."""
        return {name: SCORES[name](self, np.asarray(features), imagenet_logits) for name in self.score_names}

    def flags(self, features: np.ndarray, imagenet_logits: np.ndarray | None = None) -> Flags:
        scores = self.scores(features, imagenet_logits)
        under = {name: values < self.thresholds[name] for name, values in scores.items()}
        reasons = [tuple(name for name in under if under[name][row]) for row in range(len(features))]
        return Flags(np.array([bool(reason) for reason in reasons], dtype=bool), reasons)

    def outputs(self, features: np.ndarray) -> dict[str, np.ndarray]:
        """What the ONNX nodes of `onnx_unknown` output for these features, computed in NumPy."""
        scores = self.scores(features)
        flags = np.stack([scores[name] < self.thresholds[name] for name in self.score_names], axis=1)
        named = {f"unknown_score_{name}": values for name, values in scores.items()}
        return {"unknown": flags.any(axis=1), "unknown_flags": flags} | named

    def state(self) -> dict:
        """Arrays and plain Python: `torch.from_numpy` each array to keep it in a `weights_only` model file."""
        state: dict = {"version": STATE_VERSION, "bank": self.bank, "k": self.k, "thresholds": dict(self.thresholds)}
        if self.imagenet is not None:
            state |= {
                "imagenet_weight": self.imagenet.weight,
                "imagenet_bias": self.imagenet.bias,
                "class_synsets": {name: list(indices) for name, indices in self.imagenet.class_synsets.items()},
            }
        return state

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> UnknownDetector:
        """The detector of `state`; its arrays may be NumPy arrays or CPU tensors."""
        head = None
        if "imagenet_weight" in state:
            head = ImagenetHead(
                np.asarray(state["imagenet_weight"]),
                np.asarray(state["imagenet_bias"]),
                {name: [int(index) for index in indices] for name, indices in state["class_synsets"].items()},
            )
        thresholds = {name: float(value) for name, value in state["thresholds"].items()}
        return cls(np.asarray(state["bank"]), int(state["k"]), head, thresholds)

    def nbytes(self) -> int:
        """What its arrays add to a model file."""
        arrays = [self.bank] + ([self.imagenet.weight, self.imagenet.bias] if self.imagenet else [])
        return sum(array.nbytes for array in arrays)


def knn_score(detector: UnknownDetector, features: np.ndarray, _: np.ndarray | None) -> np.ndarray:
    similarities = normalised(features) @ detector.bank_float32.T
    count = similarities.shape[1]
    return np.partition(similarities, count - detector.k, axis=1)[:, count - detector.k]


def imagenet_score(detector: UnknownDetector, features: np.ndarray, logits: np.ndarray | None) -> np.ndarray:
    head = detector.imagenet
    return head.log_mass(head.logits(features) if logits is None else logits)


SCORES: dict[str, Callable[[UnknownDetector, np.ndarray, np.ndarray | None], np.ndarray]] = {
    "knn": knn_score,
    "imagenet": imagenet_score,
}


def onnx_unknown(model: onnx.ModelProto, detector: UnknownDetector, features: str = "features") -> onnx.ModelProto:
    """`model` with the detector's computation appended after its `features` tensor, as outputs `unknown` (bool,
    per photo), `unknown_flags` (bool, per photo and score, in `detector.score_names` order) and
    `unknown_score_<name>` (float32 per photo). Its existing outputs are kept."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    opset = next(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    nodes, initializers = [], []

    def constant(name: str, array: np.ndarray) -> str:
        if not any(initializer.name == f"unknown_{name}" for initializer in initializers):
            initializers.append(numpy_helper.from_array(array, f"unknown_{name}"))
        return f"unknown_{name}"

    def node(op: str, inputs: list[str], name: str, **attributes: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [f"unknown_{name}"], **attributes))
        return f"unknown_{name}"

    axis = constant("axis", np.array([1]))

    def log_sum_exp(source: str, name: str) -> str:
        """Over axis 1, max-shifted as `logsumexp` computes it. From ReduceMax and ReduceSum: OpenVINO's converter
        reduces a ReduceLogSumExp over the batch axis too."""
        if opset >= 18:
            peak = node("ReduceMax", [source, axis], f"{name}_peak", keepdims=1)
        else:
            peak = node("ReduceMax", [source], f"{name}_peak", axes=[1], keepdims=1)
        shifted = node("Exp", [node("Sub", [source, peak], f"{name}_shifted")], f"{name}_exp")
        total = node("ReduceSum", [shifted, axis], f"{name}_sum", keepdims=1)
        return node("Squeeze", [node("Add", [node("Log", [total], f"{name}_log"), peak], f"{name}_kept"), axis], name)

    unit = node("LpNormalization", [features], "normalised", axis=1, p=2)
    bank = node("Cast", [constant("bank", detector.bank)], "bank_float", to=TensorProto.FLOAT)
    similarities = node("Gemm", [unit, bank], "similarities", transB=1)
    nodes.append(
        helper.make_node(
            "TopK", [similarities, constant("k", np.array([detector.k]))], ["unknown_top", "unknown_top_indices"]
        )
    )
    kth = node("Gather", ["unknown_top", constant("kth_index", np.array(detector.k - 1))], "kth_similarity", axis=1)
    scores = {"knn": kth}
    if detector.imagenet is not None:
        head = detector.imagenet
        weight = node("Cast", [constant("imagenet_weight", head.weight)], "imagenet_weight_float", to=TensorProto.FLOAT)
        bias = node("Cast", [constant("imagenet_bias", head.bias)], "imagenet_bias_float", to=TensorProto.FLOAT)
        logits = node("Gemm", [features, weight, bias], "imagenet_logits", transB=1)
        chosen = node("Gather", [logits, constant("synsets", head.synsets)], "synset_logits", axis=1)
        scores["imagenet"] = node("Sub", [log_sum_exp(chosen, "synset_lse"), log_sum_exp(logits, "lse")], "mass")
    flags = []
    for name in detector.score_names:
        threshold = constant(f"threshold_{name}", np.array(detector.thresholds[name], dtype=np.float32))
        flags.append(node("Less", [scores[name], threshold], f"flag_{name}"))
    unknown = flags[0]
    for index, flag in enumerate(flags[1:]):
        unknown = node("Or", [unknown, flag], f"any_{index}")
    columns = [node("Unsqueeze", [flag, axis], f"column_{flag}") for flag in flags]
    nodes.append(helper.make_node("Identity", [unknown], ["unknown"]))
    nodes.append(helper.make_node("Concat", columns, ["unknown_flags"], axis=1))
    outputs = [
        helper.make_tensor_value_info("unknown", TensorProto.BOOL, ["batch"]),
        helper.make_tensor_value_info("unknown_flags", TensorProto.BOOL, ["batch", len(flags)]),
    ]
    for name, source in scores.items():
        nodes.append(helper.make_node("Identity", [source], [f"unknown_score_{name}"]))
        outputs.append(helper.make_tensor_value_info(f"unknown_score_{name}", TensorProto.FLOAT, ["batch"]))
    combined = onnx.ModelProto()
    combined.CopyFrom(model)
    combined.graph.node.extend(nodes)
    combined.graph.initializer.extend(initializers)
    combined.graph.output.extend(outputs)
    onnx.checker.check_model(combined)
    return combined
