"""The training loop: the three modes, optimizers, schedules, class imbalance, early stopping and convergence."""

import copy
import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import TensorDataset

from imageclf.backbone.frozen import FrozenBackbone
from imageclf.core.config import load
from imageclf.core.device import select_device
from imageclf.core.errors import UserError
from imageclf.data.datasets import ImageDataset
from imageclf.data.manifest import read_manifest
from imageclf.data.params import AugmentParams, DataParams
from imageclf.data.splitting import make_split
from imageclf.inference.photos import predict_files
from imageclf.inference.predictor import load_predictor
from imageclf.models.architectures import preprocessing_for
from imageclf.models.classifier import create_model
from imageclf.models.model_file import load_model, save_model
from imageclf.models.unknown import normalised
from imageclf.training.balance import CLASS_WEIGHTS, SAMPLERS
from imageclf.training.loop import (
    WEIGHT_DECAY_GRID,
    Checkpointing,
    fit,
    fit_choosing_weight_decay,
    images_progress,
    parameter_groups,
)
from imageclf.training.optim import OPTIMIZERS, SCHEDULES, build_optimizer, build_schedule
from imageclf.training.params import TrainParams
from imageclf.training.train import run_fingerprint, train_from_params
from tests.helpers import CLASSES, PROJECT, SampleModel, make_image_folder, train_classifier, train_config

CPU = torch.device("cpu")


def datasets(tmp_path: Path, model: str, image_size: int) -> tuple[ImageDataset, ImageDataset]:
    make_split(make_image_folder(tmp_path / "raw"), CLASSES, image_size, 0.1, 0.1, 0, tmp_path / "split")
    preprocessing = preprocessing_for(model, image_size)
    return (
        ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, preprocessing),
        ImageDataset.from_manifest(tmp_path / "split/val", CLASSES, preprocessing),
    )


def features(count: int, seed: int, learnable: bool = True) -> TensorDataset:
    """Feature vectors in three clusters, one per class; with `learnable` False the labels are random."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    centres = torch.eye(3, 8) * 3
    vectors = centres[labels] + torch.randn(count, 8, generator=generator)
    if not learnable:
        labels = torch.randint(0, 3, (count,), generator=generator)
    return TensorDataset(vectors, labels)


def head() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Dropout(0.0), nn.Linear(8, 3))


def test_transfer_learning_trains_the_head_only(tmp_path: Path) -> None:
    train_data, val_data = datasets(tmp_path, "efficientnet_lite0", 32)
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True)
    backbone_before = copy.deepcopy(model.backbone.state_dict())
    head_before = copy.deepcopy(model.head.state_dict())
    config = train_config(epochs=4, batch_size=8, lr=0.01, seed=0)
    result = train_classifier(model, train_data, val_data, config, CPU)

    assert all(torch.equal(tensor, backbone_before[name]) for name, tensor in model.backbone.state_dict().items())
    assert not torch.equal(model.head[1].weight, head_before["1.weight"])
    val_losses = [epoch.val_loss for epoch in result.history]
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    assert all(torch.equal(model.head.state_dict()[name], tensor) for name, tensor in result.best_state.items())
    summary = result.details()
    assert summary["epochs"] == 4 and summary["best"]["val_loss"] == min(val_losses)
    assert summary["last"]["val_loss"] == val_losses[-1]


def mislabelled(count: int, seed: int, every: int) -> TensorDataset:
    """Learnable features with every `every`-th label wrong: val loss falls, then rises as the head grows
    confident on the wrong ones."""
    vectors, labels = features(count, seed).tensors
    labels = labels.clone()
    labels[::every] = (labels[::every] + 1) % 3
    return TensorDataset(vectors, labels)


def test_fit_leaves_the_model_holding_its_best_epoch_not_its_last() -> None:
    config = train_config(lr=0.02, epochs=12, batch_size=16)
    config = dataclasses.replace(config, early_stopping=dataclasses.replace(config.early_stopping, patience=0))
    model, val_data = head(), mislabelled(30, seed=2, every=5)
    result = fit(model, features(90, seed=1), val_data, config, CPU)

    val_losses = [epoch.val_loss for epoch in result.history]
    assert len(val_losses) == 12 and 1 < result.best_epoch < 12
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    assert val_losses[-1] > min(val_losses) + 0.05, "the last epoch must be clearly worse than the best"
    vectors, labels = val_data.tensors
    with torch.no_grad():
        recomputed = nn.functional.cross_entropy(model.eval()(vectors), labels).item()
    assert recomputed == pytest.approx(min(val_losses), abs=1e-5)
    assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in result.best_state.items())
    assert result.details()["best"]["val_loss"] == min(val_losses)


@pytest.mark.slow
def test_auto_weight_decay_keeps_the_val_best_strength_trained_as_a_fixed_run_would() -> None:
    """Val labels half wrong punish a confident head, so a strong L2 wins; clean ones reward it, so a weak one does."""
    config = train_config(weight_decay="auto", lr=0.3, epochs=10, batch_size=16)
    train_data = features(60, seed=1)
    chosen = {}
    for case, val_data in (("punished", mislabelled(30, seed=2, every=2)), ("rewarded", features(30, seed=2))):
        model = head()
        result = fit_choosing_weight_decay(model, train_data, val_data, config, CPU)
        losses = result.val_loss_by_weight_decay
        assert list(losses) == list(WEIGHT_DECAY_GRID)
        assert result.weight_decay == min(losses, key=losses.__getitem__)
        assert result.details()["weight_decay"] == result.weight_decay
        fixed = head()
        fit(fixed, train_data, val_data, dataclasses.replace(config, weight_decay=result.weight_decay), CPU)
        assert all(torch.equal(model.state_dict()[name], tensor) for name, tensor in fixed.state_dict().items())
        chosen[case] = result.weight_decay
    assert chosen["punished"] >= 0.03 and chosen["rewarded"] <= 0.001, chosen


def test_auto_weight_decay_is_chosen_in_transfer_learning_and_named_in_params(tmp_path: Path) -> None:
    train_data, val_data = datasets(tmp_path, "efficientnet_lite0", 32)
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True)
    result = train_classifier(model, train_data, val_data, train_config(weight_decay="auto", epochs=2))
    summary = result.details()
    assert list(summary["val_loss_by_weight_decay"]) == [str(strength) for strength in WEIGHT_DECAY_GRID]
    assert summary["weight_decay"] == result.weight_decay in WEIGHT_DECAY_GRID

    values = yaml.safe_load((PROJECT / "params.yaml").read_text())
    assert values["train"]["weight_decay"] == "auto"
    path = tmp_path / "params.yaml"
    for refused in ("strong", -0.1):
        values["train"]["weight_decay"] = refused
        path.write_text(yaml.safe_dump(values))
        with pytest.raises(UserError, match=rf"'train.weight_decay' is {refused!r}; give auto "):
            load(TrainParams, path)


@pytest.mark.slow
def test_training_from_zero_changes_every_layer_and_is_deterministic(tmp_path: Path) -> None:
    train_data, val_data = datasets(tmp_path, "original", 112)
    config = train_config(model="original", mode="fromzero", epochs=2, batch_size=8, lr=0.01, seed=0)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)
        model = create_model("original", 3, 112, pretrained=False)
        before = copy.deepcopy(model.state_dict())
        result = train_classifier(model, train_data, val_data, config, CPU)
        changed = [name for name, tensor in model.state_dict().items() if not torch.equal(tensor, before[name])]
        runs.append((result.history, changed))
    assert runs[0][0] == runs[1][0]
    assert len(runs[0][1]) == len(before)


def test_fine_tuning_scales_the_backbone_lr() -> None:
    config = train_config(mode="fine_tuning", lr=0.01, backbone_lr_scale=0.1)
    model = create_model("efficientnet_lite0", 3, 32, pretrained=True)
    backbone_group, head_group = parameter_groups(model, config)
    assert backbone_group["lr"] == pytest.approx(0.001) and head_group["lr"] == 0.01
    assert len(backbone_group["params"]) + len(head_group["params"]) == len(list(model.parameters()))


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_each_optimizer_lowers_the_training_loss(optimizer: str) -> None:
    config = train_config(optimizer=optimizer, nesterov=optimizer == "sgd", lr=0.05, epochs=8, batch_size=16)
    result = fit(head(), features(90, seed=1), features(30, seed=2), config, CPU)
    assert result.history[-1].train_loss < 0.5 * result.history[0].train_loss


@pytest.mark.parametrize(("key", "table"), [("optimizer", OPTIMIZERS), ("schedule.name", SCHEDULES)])
def test_every_table_name_builds_and_params_refuse_any_other(tmp_path: Path, key: str, table: dict) -> None:
    for name in table:
        config = train_config(optimizer=name) if key == "optimizer" else schedule_config(name)
        optimizer = build_optimizer(parameter_groups(head(), config), config)
        schedule = build_schedule(optimizer, config)
        assert isinstance(optimizer, torch.optim.Optimizer) and schedule.optimizer is optimizer

    values = yaml.safe_load((PROJECT / "params.yaml").read_text())
    section, name = ("train", key) if key == "optimizer" else ("train", "schedule")
    values[section][name] = "lion" if key == "optimizer" else {**values["train"]["schedule"], "name": "lion"}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(UserError) as refused:
        load(TrainParams, path)
    assert str(refused.value) == f"{path}: 'train.{key}' is 'lion'; allowed: {', '.join(table)}"


def schedule_config(name: str, **changes: object) -> TrainParams:
    config = train_config(lr=0.1, epochs=6, batch_size=16)
    return dataclasses.replace(config, schedule=dataclasses.replace(config.schedule, name=name, **changes))


def test_step_and_cosine_schedules_set_each_epochs_learning_rate() -> None:
    step = fit(head(), features(60, 1), features(30, 2), schedule_config("step", step_size=2, gamma=0.5), CPU)
    assert [epoch.lr for epoch in step.history] == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025, 0.025])
    cosine = fit(head(), features(60, 1), features(30, 2), schedule_config("cosine"), CPU)
    expected = [0.05 * (1 + math.cos(math.pi * epoch / 6)) for epoch in range(6)]
    assert [epoch.lr for epoch in cosine.history] == pytest.approx(expected)
    constant = fit(head(), features(60, 1), features(30, 2), schedule_config("none"), CPU)
    assert {epoch.lr for epoch in constant.history} == {0.1}


def test_plateau_schedule_lowers_the_rate_only_after_val_loss_stalls() -> None:
    config = schedule_config("plateau", patience=1, gamma=0.5)
    no_early_stop = dataclasses.replace(config.early_stopping, patience=0)
    config = dataclasses.replace(config, epochs=12, early_stopping=no_early_stop)
    result = fit(head(), features(60, 1), features(30, 2, learnable=False), config, CPU)
    rates = [epoch.lr for epoch in result.history]
    assert rates[0] == 0.1 and rates[-1] < 0.1
    for epoch in range(1, len(rates)):
        if rates[epoch] < rates[epoch - 1]:
            losses = [stats.val_loss for stats in result.history[:epoch]]
            assert min(losses[-2:]) >= min(losses[:-2]), "the rate fell although val loss had just improved"


def test_balanced_class_weights_match_scikit_learn() -> None:
    labels = torch.tensor([0] * 50 + [1] * 146 + [2] * 79)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels.numpy())
    assert CLASS_WEIGHTS["balanced"](labels, 3).tolist() == pytest.approx(expected)
    assert CLASS_WEIGHTS["none"](labels, 3) is None


def test_weighted_sampler_draws_every_class_about_equally() -> None:
    labels = torch.tensor([0] * 50 + [1] * 146 + [2] * 79)
    draws = [
        labels[index] for _ in range(20) for index in SAMPLERS["weighted"](labels, torch.Generator().manual_seed(0))
    ]
    shares = torch.bincount(torch.stack(draws)).float() / len(draws)
    assert shares.tolist() == pytest.approx([1 / 3] * 3, abs=0.03)


def test_early_stopping_stops_once_val_loss_has_not_improved_for_patience_epochs() -> None:
    config = train_config(lr=0.5, epochs=100, batch_size=8)
    config = dataclasses.replace(config, early_stopping=dataclasses.replace(config.early_stopping, patience=3))
    result = fit(head(), features(60, 1, learnable=False), features(30, 2, learnable=False), config, CPU)
    losses = [epoch.val_loss for epoch in result.history]
    assert len(losses) < 100 and result.stop_reason.startswith("early stopping")
    assert len(losses) == result.best_epoch + 3
    assert min(losses[result.best_epoch :]) >= losses[result.best_epoch - 1]

    off = dataclasses.replace(config, epochs=20, early_stopping=dataclasses.replace(config.early_stopping, patience=0))
    assert len(fit(head(), features(60, 1, False), features(30, 2, False), off, CPU).history) == 20


def test_training_stops_when_train_accuracy_has_converged() -> None:
    config = train_config(lr=0.05, epochs=100, batch_size=16)
    config = dataclasses.replace(
        config,
        early_stopping=dataclasses.replace(config.early_stopping, patience=0),
        convergence=dataclasses.replace(config.convergence, patience=2),
    )
    result = fit(head(), features(90, 1), features(30, 2), config, CPU)
    accuracies = [epoch.train_accuracy for epoch in result.history]
    assert len(accuracies) < 100 and result.stop_reason.startswith("converged")
    assert max(accuracies[-2:]) <= max(accuracies[:-2]) + config.convergence.min_delta


def test_a_checkpoint_of_other_params_or_data_is_discarded(tmp_path: Path) -> None:
    config = train_config(epochs=3, batch_size=16)
    checkpoint = Checkpointing(tmp_path / "train.pt", every=1, fingerprint="run-a")
    fit(head(), features(60, 1), features(30, 2), config, CPU, checkpoint)
    assert checkpoint.load()["history"][-1]["epoch"] == 3
    assert Checkpointing(tmp_path / "train.pt", every=1, fingerprint="run-b").load() is None

    train_data, val_data = datasets(tmp_path, "efficientnet_lite0", 32)
    data, train = load(DataParams, PROJECT / "params.yaml"), load(TrainParams, PROJECT / "params.yaml")
    online = load(AugmentParams, PROJECT / "params.yaml").online
    fingerprint = run_fingerprint(data, train, online, train_data, val_data)
    assert fingerprint == run_fingerprint(data, train, online, train_data, val_data)
    changed_lr = dataclasses.replace(train, lr=0.002)
    assert run_fingerprint(data, changed_lr, online, train_data, val_data) != fingerprint
    assert run_fingerprint(data, train, dataclasses.replace(online, flip=0.0), train_data, val_data) != fingerprint
    assert run_fingerprint(data, train, online, val_data, val_data) != fingerprint
    redrawn = train_data.paths[0]
    redrawn.write_bytes(val_data.paths[0].read_bytes())  # same manifest, other picture (as a new augment.seed)
    reread = ImageDataset(train_data.paths, train_data.labels, train_data.sources, train_data.preprocess)
    assert run_fingerprint(data, train, online, reread, val_data) != fingerprint, "the next run reads the folder anew"


def test_the_device_is_chosen_automatically_and_a_missing_one_is_named() -> None:
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert select_device("auto").type == expected
    assert select_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match=r"^train.device is 'cuda' but torch finds no CUDA device here"):
            select_device("cuda")


def test_a_real_training_run_flags_at_most_one_percent_of_val_and_saves_its_detector(
    sample_model: SampleModel,
) -> None:
    """The default model (Lite0's int8 graph, transfer learning) trained on the sample: both scores, their thresholds
    in the model file and the details, and at most floor(1 % of 9) = 0 val photos flagged as `predict` sees them."""
    unknown = sample_model.details["unknown"]
    assert unknown["scores"] == ["knn", "imagenet"] and unknown["val_flagged"] == 0.0 and "note" not in unknown
    detector = load_model(sample_model.path).unknown
    assert detector.thresholds == unknown["thresholds"] and detector.imagenet is not None
    assert len(detector.bank) == len(read_manifest(sample_model.split / "train")), "every training photo"
    val = [sample_model.split / "val" / record.path for record in read_manifest(sample_model.split / "val")]
    predictor = load_predictor(sample_model.path)  # the whole model on ONNX Runtime, as predict runs it
    predictions = list(predict_files(predictor, val, "none", 8))
    assert len(val) == 9 and not any(prediction.unknown_reason for prediction in predictions)
    for name, threshold in unknown["thresholds"].items():  # the highest thresholds that flag none of them
        lowest = min(prediction.unknown_scores[name] for prediction in predictions)
        assert threshold < lowest < threshold + 1e-4 * max(1, abs(threshold)), name


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fromzero", "fine_tuning"])
def test_a_backbone_that_trained_gets_the_feature_distance_alone_on_its_new_features(tmp_path: Path, mode: str) -> None:
    """fromzero and fine_tuning: the bank holds the trained backbone's features of the training photos (one more
    pass), no ImageNet classifier reads them, and the details say so."""
    make_split(make_image_folder(tmp_path / "raw"), CLASSES, 32, 0.1, 0.1, 0, tmp_path / "split")
    data = dataclasses.replace(load(DataParams, PROJECT / "params.yaml"), image_size=32)
    train = train_config(mode=mode, epochs=2, batch_size=8)
    saved, result = train_from_params(data, train, tmp_path / "split/train", tmp_path / "split/val")
    assert result.unknown["scores"] == ["knn"] and "feature distance only" in result.unknown["note"]
    assert saved.unknown.imagenet is None and set(saved.unknown.thresholds) == {"knn"}
    images = ImageDataset.from_manifest(tmp_path / "split/train", CLASSES, saved.preprocessing)
    with torch.inference_mode():
        trained = saved.classifier.backbone(torch.stack([images[index][0] for index in range(len(images))]))
    np.testing.assert_allclose(saved.unknown.bank, normalised(trained.numpy()).astype(np.float16), atol=2e-3)
    save_model(tmp_path / "model.pt", saved)
    predictor = load_predictor(tmp_path / "model.pt")  # what predict, serve and evaluate's report say of it
    assert predictor.unknown_scores == ("knn",) and "feature distance only" in predictor.unknown_note


def test_the_train_stage_trains_with_the_loss_its_params_ask_for(tmp_path: Path) -> None:
    """`train.label_smoothing` and `train.class_weights` reach the loss the train stage trains with: its first epoch,
    one batch at a negligible learning rate, reports the weighted, smoothed cross-entropy of the initial head on the
    training features; the val loss stays the plain cross-entropy, comparable across runs."""
    train_data, val_data = datasets(tmp_path, "efficientnet_lite0", 32)
    keep = [index for index, label in enumerate(train_data.labels) if label != 2 or index % 4 == 0]  # few horses
    train_data = ImageDataset(
        [train_data.paths[index] for index in keep],
        [train_data.labels[index] for index in keep],
        [train_data.sources[index] for index in keep],
        train_data.preprocess,
    )
    backbone = create_model("efficientnet_lite0", 3, 32, pretrained=True).backbone
    frozen = FrozenBackbone.for_training("efficientnet_lite0", backbone, "torch", "fp32", CPU, train_data, 0)
    train_features, train_labels = frozen.features(train_data, "train").dataset.tensors
    val_features, val_labels = frozen.features(val_data, "val").dataset.tensors
    balanced = torch.tensor(compute_class_weight("balanced", classes=np.arange(3), y=train_labels.numpy())).float()
    for label_smoothing, class_weights in ((0.3, "none"), (0.0, "balanced"), (0.3, "balanced")):
        model = create_model("efficientnet_lite0", 3, 32, pretrained=True)
        initial_head = copy.deepcopy(model.head).eval()
        config = train_config(
            epochs=1,
            lr=1e-12,
            batch_size=len(train_data),
            label_smoothing=label_smoothing,
            class_weights=class_weights,
            backbone_runtime="torch",
            backbone_precision="fp32",
        )
        result = train_classifier(model, train_data, val_data, config)
        with torch.no_grad():
            expected_train = nn.functional.cross_entropy(
                initial_head(train_features),
                train_labels,
                weight=balanced if class_weights == "balanced" else None,
                label_smoothing=label_smoothing,
            )
            expected_val = nn.functional.cross_entropy(initial_head(val_features), val_labels)
        assert result.history[0].train_loss == pytest.approx(expected_train.item(), rel=1e-5), class_weights
        assert result.history[0].val_loss == pytest.approx(expected_val.item(), rel=1e-5)


def test_an_epochs_bar_counts_images_per_second_and_its_eta(capsys: pytest.CaptureFixture[str]) -> None:
    """The per-batch bar of a training epoch counts images (not batches) out of the epoch's total, with a rate and
    the time left, and passes every batch on unchanged."""
    data = features(8, 0)
    batches = [[data.tensors[0][start : start + 3], data.tensors[1][start : start + 3]] for start in (0, 3, 6)]
    passed = []
    for batch in images_progress(batches, 8, "epoch 1", delay=0):
        time.sleep(0.15)  # a batch's work: longer than the bar's least interval between refreshes
        passed.append(batch)
    assert all(got is sent for got, sent in zip(passed, batches, strict=True))
    shown = capsys.readouterr().err.replace("\r", "\n").splitlines()
    done = [line for line in shown if line.startswith("epoch 1: 100%")]  # the bar is cleared after the epoch
    assert done and "8/8" in done[-1] and "img/s" in done[-1] and "<00:00" in done[-1], shown
