"""The training loop, read top to bottom: features once (frozen backbone), then epochs of train and validate.

`train_from_params` builds the model for `train.mode`; `fit` runs the epochs with the optimizer, schedule,
early stopping and checkpoints that `train.*` asks for.
"""

import copy
import hashlib
import io
import json
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, TensorDataset, WeightedRandomSampler
from tqdm import tqdm

from imageclf.data import MANIFEST_NAME, ImageDataset
from imageclf.device import Precision, is_distributed, loader_options, rank, select_device, world_size
from imageclf.errors import UserError, warn
from imageclf.features import cached_features, feature_extractor
from imageclf.files import write_atomic
from imageclf.models import Classifier, SavedModel, create_model, preprocessing_for
from imageclf.params import Params, TrainParams


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float


@dataclass
class Plateau:
    """Counts epochs in which a value did not improve on its best by more than `min_delta`.

    `exhausted` once that count reaches `patience`; a patience of 0 never runs out.
    """

    patience: int
    min_delta: float
    higher_is_better: bool
    best: float | None = None
    epochs_without_improvement: int = 0

    def update(self, value: float) -> bool:
        """Record one epoch's value; return whether it is a new best."""
        sign = 1 if self.higher_is_better else -1
        improved = self.best is None or sign * (value - self.best) > self.min_delta
        if improved:
            self.best, self.epochs_without_improvement = value, 0
        else:
            self.epochs_without_improvement += 1
        return improved

    @property
    def exhausted(self) -> bool:
        return 0 < self.patience <= self.epochs_without_improvement


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stop_reason: str = ""

    def summary(self) -> dict:
        """The best and the last epoch's losses and accuracies, for metrics/train.json."""

        def stats(epoch: EpochStats) -> dict:
            return {key: value for key, value in asdict(epoch).items() if key != "epoch"}

        return {
            "best_epoch": self.best_epoch,
            "epochs": len(self.history),
            "best": stats(self.history[self.best_epoch - 1]),
            "last": stats(self.history[-1]),
        }


@dataclass(frozen=True)
class Checkpointing:
    """Where to keep the resumable state, how often, and the fingerprint of the params and data it belongs to."""

    path: Path
    every: int
    fingerprint: str

    def load(self) -> dict | None:
        """The saved state if it belongs to this run; a stale or unreadable checkpoint is discarded."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:
            warn(f"discarding unreadable checkpoint '{self.path}' ({type(error).__name__}); starting over")
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            warn(f"discarding checkpoint '{self.path}': it was made with other train params or data")
            return None
        return state

    def save(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save({**state, "fingerprint": self.fingerprint}, buffer)
        write_atomic(self.path, buffer.getvalue())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    return torch.tensor(dataset.labels)


def parameter_groups(model: nn.Module, config: TrainParams) -> list[dict]:
    """One group per learning rate: in fine-tuning the backbone learns at `lr × backbone_lr_scale`."""
    if not isinstance(model, Classifier):
        return [{"params": list(model.parameters()), "lr": config.lr}]
    backbone_scale = config.backbone_lr_scale if config.mode == "fine_tuning" else 1.0
    return [
        {"params": list(model.backbone.parameters()), "lr": config.lr * backbone_scale},
        {"params": list(model.head.parameters()), "lr": config.lr},
    ]


def build_optimizer(groups: list[dict], config: TrainParams) -> torch.optim.Optimizer:
    decay = config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=config.momentum, nesterov=config.nesterov, weight_decay=decay)
    return torch.optim.RMSprop(groups, momentum=config.momentum, weight_decay=decay)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainParams) -> torch.optim.lr_scheduler.LRScheduler:
    schedule = config.schedule
    if schedule.name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
    if schedule.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=schedule.step_size, gamma=schedule.gamma)
    if schedule.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max" if config.early_stopping.monitor == "val_accuracy" else "min",
            factor=schedule.gamma,
            patience=schedule.patience,
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def build_sampler(labels: torch.Tensor, config: TrainParams, generator: torch.Generator) -> Sampler:
    """A shuffle, or a weighted draw that shows every class equally often (for imbalanced classes)."""
    if config.sampler == "weighted":
        weights = 1.0 / torch.bincount(labels).double()
        return WeightedRandomSampler(weights[labels], num_samples=len(labels), generator=generator)
    return torch.utils.data.RandomSampler(range(len(labels)), generator=generator)


def class_weights(labels: torch.Tensor, num_classes: int, config: TrainParams) -> torch.Tensor | None:
    """With `balanced`, each class's loss weight is inverse to its frequency (scikit-learn's formula)."""
    if config.class_weights == "none":
        return None
    counts = torch.bincount(labels, minlength=num_classes).float()
    return len(labels) / (num_classes * counts.clamp(min=1))


def run_epoch(
    model: nn.Module,
    batches: Iterable,
    loss_function: nn.Module,
    precision: Precision,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One pass over `batches`: trains when given an optimizer (and its scaler), else only evaluates.

    Returns (loss, accuracy); in training under torchrun, over the batches of every process.
    """
    total_loss, correct, seen = 0.0, 0, 0
    device = precision.device
    with torch.set_grad_enabled(optimizer is not None):
        for inputs, targets in batches:
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with precision.autocast():
                logits = model(inputs)
                loss = loss_function(logits.float(), targets)
            if optimizer is not None and scaler is not None:
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            total_loss += loss.item() * len(targets)
            correct += (logits.argmax(dim=1) == targets).sum().item()
            seen += len(targets)
    if optimizer is not None and is_distributed():
        totals = torch.tensor([total_loss, correct, seen], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(totals)
        total_loss, correct, seen = totals.tolist()
    return total_loss / seen, correct / seen


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    config: TrainParams,
    device: torch.device,
    checkpointing: Checkpointing | None = None,
) -> FitResult:
    """Train `model` for up to `config.epochs`; keep the weights of the best epoch by the monitored val metric.

    `model` is a whole Classifier, or just a head when training on precomputed features. With
    `checkpointing`, the state is saved every few epochs and a saved state of the same run is resumed.
    Under torchrun each process trains on its share of every batch (DistributedDataParallel); all of them
    validate on the whole val set, and only the first saves checkpoints.
    """
    model.to(device, memory_format=torch.channels_last)  # convolutions twice as fast on a CPU; a head is unaffected
    precision = Precision(device, config.amp)
    scaler = precision.grad_scaler()
    train_labels = labels_of(train_data)
    num_classes = int(max(train_labels.max(), labels_of(val_data).max())) + 1
    weights = class_weights(train_labels, num_classes, config)
    train_loss_function = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), label_smoothing=config.label_smoothing
    )
    val_loss_function = nn.CrossEntropyLoss()  # plain, so val loss compares across runs
    optimizer = build_optimizer(parameter_groups(model, config), config)
    scheduler = build_scheduler(optimizer, config)
    generator = torch.Generator().manual_seed(config.seed)
    loading = loader_options(device) if isinstance(train_data, ImageDataset) else {}
    processes = world_size()
    if processes > 1:
        if config.sampler == "weighted":
            raise UserError("train.sampler: weighted does not run under torchrun: use train.class_weights: balanced")
        sampler = DistributedSampler(train_data, num_replicas=processes, rank=rank(), seed=config.seed)
    else:
        sampler = build_sampler(train_labels, config, generator)
    batch_size = max(1, config.batch_size // processes)  # the same batch in all, however many processes share it
    train_batches = DataLoader(train_data, batch_size=batch_size, sampler=sampler, **loading)
    val_batches = DataLoader(val_data, batch_size=config.batch_size, **loading)
    monitor = config.early_stopping.monitor
    early_stopping = Plateau(
        config.early_stopping.patience, config.early_stopping.min_delta, higher_is_better=monitor == "val_accuracy"
    )
    convergence = Plateau(config.convergence.patience, config.convergence.min_delta, higher_is_better=True)
    result = FitResult()

    saved = checkpointing.load() if checkpointing else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        early_stopping, convergence = Plateau(**saved["early_stopping"]), Plateau(**saved["convergence"])
        history = [EpochStats(**epoch) for epoch in saved["history"]]
        result = FitResult(history, saved["best_epoch"], saved["best"], saved["stop_reason"])
        if rank() == 0:
            print(f"resuming from the checkpoint of epoch {len(history)} ({checkpointing.path})")

    fine_tuning = isinstance(model, Classifier) and config.mode == "fine_tuning"
    first_epoch = config.epochs + 1 if result.stop_reason else len(result.history) + 1
    progress = tqdm(range(first_epoch, config.epochs + 1), desc="train", unit="epoch", disable=rank() != 0)
    network, network_frozen = model, None
    for epoch in progress:
        backbone_frozen = fine_tuning and epoch <= config.warmup_epochs
        model.train()
        if backbone_frozen:
            model.backbone.requires_grad_(False).eval()
        elif fine_tuning:
            model.backbone.requires_grad_(True)
        if processes > 1 and backbone_frozen != network_frozen:  # DDP syncs the parameters that train when wrapped
            network, network_frozen = DistributedDataParallel(model), backbone_frozen
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        train_loss, train_accuracy = run_epoch(
            network,
            tqdm(train_batches, leave=False, delay=1, desc=f"epoch {epoch}"),
            train_loss_function,
            precision,
            optimizer,
            scaler,
        )
        model.eval()
        val_loss, val_accuracy = run_epoch(model, val_batches, val_loss_function, precision)
        stats = EpochStats(epoch, train_loss, train_accuracy, val_loss, val_accuracy, optimizer.param_groups[-1]["lr"])
        result.history.append(stats)

        if early_stopping.update(getattr(stats, monitor)):
            result.best_epoch, result.best_state = epoch, copy.deepcopy(model.state_dict())
        convergence.update(train_accuracy)
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(getattr(stats, monitor))
        else:
            scheduler.step()
        progress.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_accuracy:.3f}")

        if early_stopping.exhausted:
            result.stop_reason = f"early stopping: {monitor} has not improved for {early_stopping.patience} epochs"
        elif convergence.exhausted:
            result.stop_reason = f"converged: train accuracy has not risen for {convergence.patience} epochs"
        checkpoint_due = (
            checkpointing and checkpointing.every and (epoch % checkpointing.every == 0 or result.stop_reason)
        )
        if checkpoint_due and rank() == 0:
            checkpointing.save(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "rng": torch.get_rng_state(),
                    "early_stopping": asdict(early_stopping),
                    "convergence": asdict(convergence),
                    "history": [asdict(epoch) for epoch in result.history],
                    "best_epoch": result.best_epoch,
                    "best": result.best_state,
                    "stop_reason": result.stop_reason,
                }
            )
        if result.stop_reason:
            progress.write(f"stopped after epoch {epoch}: {result.stop_reason}")
            break
    return result


def train_classifier(
    model: Classifier,
    train_data: ImageDataset,
    val_data: ImageDataset,
    config: TrainParams,
    device: torch.device,
    checkpointing: Checkpointing | None = None,
) -> FitResult:
    """Train `model` in place as `config.mode` says and leave it holding its best epoch's weights.

    In transfer learning the backbone is frozen: each image's features come from the feature cache or are
    computed once, and only the head trains on them, so an epoch costs milliseconds instead of a forward
    pass over every image.
    """
    trainable: nn.Module = model
    train_inputs: Dataset = train_data
    val_inputs: Dataset = val_data
    if config.mode == "transfer_learning":
        model.backbone.requires_grad_(False)
        if rank() > 0:
            torch.distributed.barrier()  # the first process fills the feature cache; the others then read it
        extractor = feature_extractor(
            config.model,
            model.backbone,
            config.backbone_runtime,
            config.backbone_precision,
            device,
            train_data,
            config.seed,
        )
        train_inputs, val_inputs = (
            cached_features(extractor, data, name).dataset for data, name in ((train_data, "train"), (val_data, "val"))
        )
        if rank() == 0 and is_distributed():
            torch.distributed.barrier()
        trainable = model.head
    result = fit(trainable, train_inputs, val_inputs, config, device, checkpointing)
    trainable.load_state_dict(result.best_state)
    return result


def run_fingerprint(params: Params, train_dir: Path, val_dir: Path) -> str:
    """A hash of everything a checkpoint depends on: the train params, classes, input size and both manifests."""
    digest = hashlib.sha256()
    settings = {"train": asdict(params.train), "classes": params.data.classes, "image_size": params.data.image_size}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for folder in (train_dir, val_dir):
        digest.update((Path(folder) / MANIFEST_NAME).read_bytes())
    return digest.hexdigest()


def train_from_params(
    params: Params, train_dir: Path, val_dir: Path, checkpoint_path: Path | None = None
) -> tuple[SavedModel, FitResult]:
    """Build the model `train.model` for `train.mode` and train it on the two manifest folders.

    With `checkpoint_path`, a run killed part way resumes from its last checkpoint; the checkpoint
    is removed once training has finished.
    """
    data, train = params.data, params.train
    seed_everything(train.seed)  # before the head is created, so its initial weights are the same every run
    preprocessing = preprocessing_for(train.model, data.image_size)
    model = create_model(
        train.model,
        len(data.classes),
        data.image_size,
        pretrained=train.mode != "fromzero",
        weights=Path(train.weights) if train.weights else None,
        dropout=train.dropout,
    )
    checkpointing = None
    if checkpoint_path is not None:
        fingerprint = run_fingerprint(params, train_dir, val_dir)
        checkpointing = Checkpointing(Path(checkpoint_path), train.checkpoint_every, fingerprint)
    result = train_classifier(
        model,
        ImageDataset.from_manifest(train_dir, data.classes, preprocessing),
        ImageDataset.from_manifest(val_dir, data.classes, preprocessing),
        train,
        select_device(train.device),
        checkpointing,
    )
    if checkpointing is not None and rank() == 0:
        checkpointing.remove()
    return SavedModel(model.cpu().eval(), train.model, data.classes, preprocessing), result
