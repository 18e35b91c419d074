"""The training loop, read top to bottom: `fit` runs epochs of train and validate with the optimizer, schedule,
early stopping and checkpoints that `train.*` asks for, on whatever its mode feeds it (`setup.Inputs`: a whole
classifier on decoded images, a head on stored features, or last blocks and head on stored activations);
`fit_choosing_weight_decay` runs it once per L2 strength; `fit_head_first` runs the head alone, then the backbone
(or its last blocks) with it.
"""

import copy
import io
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, TensorDataset
from tqdm import tqdm

from imageclf.core.device import MixedPrecision, is_distributed, loader_options, rank, world_size
from imageclf.core.errors import UserError, warn
from imageclf.core.files import write_atomic
from imageclf.data.datasets import ImageDataset
from imageclf.data.decoded import DecodedImages
from imageclf.models.classifier import Classifier
from imageclf.training.balance import CLASS_WEIGHTS, SAMPLERS
from imageclf.training.optim import WEIGHT_DECAY_AUTO, build_optimizer, build_schedule, step_schedule
from imageclf.training.params import TrainParams
from imageclf.training.precision import training_precision
from imageclf.training.stopping import MONITORS, Plateau

if TYPE_CHECKING:
    from imageclf.training.optim import Schedule


@dataclass
class EpochStats:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_state: dict[str, torch.Tensor] = field(default_factory=dict)
    stop_reason: str = ""
    weight_decay: float = 0.0  # the L2 strength trained with: train.weight_decay, or the one `auto` chose
    val_loss_by_weight_decay: dict[float, float] = field(default_factory=dict)  # `auto`: every candidate's
    unknown: dict = field(default_factory=dict)  # the detector's scores, thresholds and val share flagged, once fitted
    precision: str = "float32"  # what the training steps ran in (`train.amp`); validation runs in float32

    @property
    def best_val_loss(self) -> float:
        return self.history[self.best_epoch - 1].val_loss

    def headline(self) -> dict:
        """metrics/train.json: how many epochs ran, and the val loss of the best one (the weights kept)."""
        return {"epochs": len(self.history), "val_loss": self.best_val_loss}

    def details(self) -> dict:
        """metrics/details/train.json: the precision of the training steps, the L2 strength (and every candidate's
        val loss), the none-of-these detector's thresholds, and the best and the last epoch's losses and accuracies."""

        def stats(epoch: EpochStats) -> dict:
            return {key: value for key, value in asdict(epoch).items() if key != "epoch"}

        search = {"val_loss_by_weight_decay": {str(key): loss for key, loss in self.val_loss_by_weight_decay.items()}}
        return {
            "precision": self.precision,
            "weight_decay": self.weight_decay,
            **(search if self.val_loss_by_weight_decay else {}),
            **({"unknown": self.unknown} if self.unknown else {}),
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

    def due(self, epoch: int, finished: bool) -> bool:
        """Every `every` epochs (0: never), and after the last one, so a finished run resumes as finished."""
        return self.every > 0 and (epoch % self.every == 0 or finished)

    def save(self, state: dict) -> None:
        buffer = io.BytesIO()
        torch.save({**state, "fingerprint": self.fingerprint}, buffer)
        write_atomic(self.path, buffer.getvalue())

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class TrainingState:
    """Everything one epoch hands to the next, so everything a checkpoint holds and a resumed run restores.

    `state_dict` and `load_state_dict` are the one place that says what a checkpoint is.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: "Schedule"
    scaler: torch.amp.GradScaler
    generator: torch.Generator  # draws the order of the training batches
    early_stopping: Plateau
    convergence: Plateau
    result: FitResult = field(default_factory=FitResult)

    @classmethod
    def start(cls, model: nn.Module, config: TrainParams, precision: MixedPrecision) -> "TrainingState":
        optimizer = build_optimizer(parameter_groups(model, config), config)
        stopping = config.early_stopping
        return cls(
            model,
            optimizer,
            build_schedule(optimizer, config),
            precision.grad_scaler(),
            torch.Generator().manual_seed(config.seed),
            Plateau(stopping.patience, stopping.min_delta, higher_is_better=MONITORS[stopping.monitor]),
            Plateau(config.convergence.patience, config.convergence.min_delta, higher_is_better=True),
        )

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "generator": self.generator.get_state(),
            "rng": torch.get_rng_state(),
            "early_stopping": asdict(self.early_stopping),
            "convergence": asdict(self.convergence),
            "history": [asdict(epoch) for epoch in self.result.history],
            "best_epoch": self.result.best_epoch,
            "best_state": self.result.best_state,
            "stop_reason": self.result.stop_reason,
        }

    def load_state_dict(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.scaler.load_state_dict(saved["scaler"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["rng"])
        self.early_stopping, self.convergence = Plateau(**saved["early_stopping"]), Plateau(**saved["convergence"])
        history = [EpochStats(**epoch) for epoch in saved["history"]]
        self.result = FitResult(history, saved["best_epoch"], saved["best_state"], saved["stop_reason"])

    def resume(self, checkpointing: Checkpointing) -> None:
        """Continue from the checkpoint of this run, if there is one."""
        saved = checkpointing.load()
        if saved is None:
            return
        self.load_state_dict(saved)
        if rank() == 0:
            print(f"resuming from the checkpoint of epoch {len(self.result.history)} ({checkpointing.path})")

    def epochs_left(self, epochs: int) -> range:
        """The epochs still to run: all for a new run, those after its checkpoint for a resumed one, none for a
        run that stopped early."""
        if self.result.stop_reason:
            return range(0)
        return range(len(self.result.history) + 1, epochs + 1)

    def end_epoch(self, stats: EpochStats, monitor: str) -> None:
        """Record the epoch; keep its weights if `monitor` is the best so far; step the schedule; decide to stop."""
        result = self.result
        result.history.append(stats)
        if self.early_stopping.update(getattr(stats, monitor)):
            result.best_epoch, result.best_state = stats.epoch, copy.deepcopy(self.model.state_dict())
        self.convergence.update(stats.train_accuracy)
        step_schedule(self.schedule, getattr(stats, monitor))
        if self.early_stopping.exhausted:
            result.stop_reason = f"early stopping: {monitor} has not improved for {self.early_stopping.patience} epochs"
        elif self.convergence.exhausted:
            result.stop_reason = f"converged: train accuracy has not risen for {self.convergence.patience} epochs"


def labels_of(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    return torch.tensor(dataset.labels)


def parameter_groups(model: nn.Module, config: TrainParams) -> list[dict]:
    """One group per learning rate: where a mode fine-tunes, the backbone learns at `lr × backbone_lr_scale`."""
    if not isinstance(model, Classifier):
        return [{"params": list(model.parameters()), "lr": config.lr}]
    backbone_scale = config.backbone_lr_scale if config.training_mode.fine_tunes else 1.0
    return [
        {"params": list(model.backbone.parameters()), "lr": config.lr * backbone_scale},
        {"params": list(model.head.parameters()), "lr": config.lr},
    ]


def run_epoch(
    network: nn.Module,
    batches: Iterable,
    loss_function: nn.Module,
    precision: MixedPrecision,
    optimizer: torch.optim.Optimizer | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> tuple[float, float]:
    """One pass of `network` (a model, or its DistributedDataParallel wrapper) over `batches`: trains when given
    an optimizer (and its scaler), else only evaluates.

    Returns (loss, accuracy); in training under torchrun, over the batches of every process.
    """
    total_loss, correct, seen = 0.0, 0, 0
    device = precision.device
    with torch.set_grad_enabled(optimizer is not None):
        for inputs, targets in batches:
            inputs, targets = inputs.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            with precision.autocast():
                logits = network(inputs)
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


def images_progress(batches: Iterable, images: int, description: str, delay: float = 1.0) -> Iterator:
    """The batches, behind a bar of images done, images per second and the epoch's ETA: shown once an epoch has taken
    `delay` seconds (a head's epochs on stored features take milliseconds), by the first process only."""
    with tqdm(total=images, unit="img", leave=False, delay=delay, desc=description, disable=rank() != 0) as bar:
        for batch in batches:
            yield batch
            bar.update(len(batch[-1]))


def loss_functions(
    train_data: Dataset, val_data: Dataset, config: TrainParams, device: torch.device
) -> tuple[nn.Module, nn.Module]:
    """The training loss, with the label smoothing and class weights asked for, and a plain val loss that
    compares across runs."""
    train_labels = labels_of(train_data)
    num_classes = int(max(train_labels.max(), labels_of(val_data).max())) + 1
    weights = CLASS_WEIGHTS[config.class_weights](train_labels, num_classes)
    train_loss = nn.CrossEntropyLoss(
        weight=None if weights is None else weights.to(device), label_smoothing=config.label_smoothing
    )
    return train_loss, nn.CrossEntropyLoss()


class MemoryBatches:
    """Batches of a dataset held in memory (stored features, activations or decoded images) in the order `sampler`
    draws, a whole batch at a time.

    The same batches as a DataLoader over the same sampler, without its per-item fetch and collate, which cost a
    head's epoch many times its arithmetic.
    """

    def __init__(self, dataset: TensorDataset | DecodedImages, batch_size: int, sampler: Iterable[int] | None = None):
        self.dataset, self.batch_size = dataset, batch_size
        self.sampler = sampler if sampler is not None else range(len(dataset))

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        order = torch.tensor(list(self.sampler))
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            if isinstance(self.dataset, DecodedImages):
                yield self.dataset.batch(index)
            else:
                yield [tensor[index] for tensor in self.dataset.tensors]


def data_loaders(
    train_data: Dataset, val_data: Dataset, config: TrainParams, device: torch.device, generator: torch.Generator
) -> tuple[Iterable, Iterable]:
    """Training batches in the order `generator` draws (under torchrun, each process its share of every
    batch); val batches in file order, the whole val set in every process."""
    processes = world_size()
    if processes > 1:
        if config.sampler == "weighted":
            raise UserError("train.sampler: weighted does not run under torchrun: use train.class_weights: balanced")
        sampler = DistributedSampler(train_data, num_replicas=processes, rank=rank(), seed=config.seed)
    else:
        sampler = SAMPLERS[config.sampler](labels_of(train_data), generator)
    batch_size = max(1, config.batch_size // processes)  # the same batch in all, however many processes share it
    in_memory = (TensorDataset, DecodedImages)
    if isinstance(train_data, in_memory) and isinstance(val_data, in_memory):
        return MemoryBatches(train_data, batch_size, sampler), MemoryBatches(val_data, config.batch_size)
    loading = loader_options(device) if isinstance(train_data, ImageDataset) else {}
    return (
        DataLoader(train_data, batch_size=batch_size, sampler=sampler, **loading),
        DataLoader(val_data, batch_size=config.batch_size, **loading),
    )


class TrainableLayers:
    """The module that trains, in training mode.

    Where a pretrained backbone trains, with `train.freeze_batchnorm` its BatchNorm layers keep their pretrained
    statistics. Under torchrun the module is a DistributedDataParallel wrapper, which syncs the gradients of the
    parameters that train.
    """

    def __init__(self, model: nn.Module, config: TrainParams):
        self.model = model
        fine_tuning = isinstance(model, Classifier) and config.training_mode.fine_tunes
        self.freeze_batchnorm = fine_tuning and config.freeze_batchnorm
        self.wrapper = DistributedDataParallel(model) if world_size() > 1 else model

    def for_epoch(self) -> nn.Module:
        """Set the layers to training mode (BatchNorm statistics frozen where asked) and return the module to train."""
        self.model.train()
        if self.freeze_batchnorm:  # normalise with the pretrained statistics; the scales and shifts still learn
            for module in self.model.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self.wrapper


def fit(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    config: TrainParams,
    device: torch.device,
    checkpointing: Checkpointing | None = None,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """Train `model` for up to `config.epochs` and leave it holding the weights of its best epoch by the
    monitored val metric (the same weights as the result's `best_state`).

    `model` is a whole Classifier, or just a head when training on precomputed features. With
    `checkpointing`, the state is saved every few epochs and a saved state of the same run is resumed.
    `on_epoch` sees the result after every epoch (in the first process), to show a running run's progress.
    Under torchrun each process trains on its share of every batch (DistributedDataParallel); all of them
    validate on the whole val set, and only the first saves checkpoints.
    """
    model.to(device, memory_format=torch.channels_last)  # convolutions twice as fast on a CPU; a head is unaffected
    trainable = TrainableLayers(model, config)
    trainable.for_epoch()  # the layers in the modes they train in, which the precision is timed in
    precision = training_precision(model, train_data, config.batch_size, device, config.amp)
    train_loss_function, val_loss_function = loss_functions(train_data, val_data, config, device)
    state = TrainingState.start(model, config, precision)
    if checkpointing:
        state.resume(checkpointing)
    train_batches, val_batches = data_loaders(train_data, val_data, config, device, state.generator)
    monitor = config.early_stopping.monitor

    progress = tqdm(state.epochs_left(config.epochs), desc="train", unit="epoch", disable=rank() != 0)
    for epoch in progress:
        if isinstance(train_batches.sampler, DistributedSampler):
            train_batches.sampler.set_epoch(epoch)
        if isinstance(train_data, DecodedImages):
            train_data.set_epoch(epoch)  # this epoch's augmentation
        train_loss, train_accuracy = run_epoch(
            trainable.for_epoch(),
            images_progress(train_batches, len(train_batches.sampler), f"epoch {epoch}"),
            train_loss_function,
            precision,
            state.optimizer,
            state.scaler,
        )
        model.eval()
        val_loss, val_accuracy = run_epoch(model, val_batches, val_loss_function, MixedPrecision(device))
        lr = state.optimizer.param_groups[-1]["lr"]
        state.end_epoch(EpochStats(epoch, train_loss, train_accuracy, val_loss, val_accuracy, lr), monitor)
        progress.set_postfix(train_loss=f"{train_loss:.3f}", val_loss=f"{val_loss:.3f}", val_acc=f"{val_accuracy:.3f}")

        if on_epoch is not None and rank() == 0:
            on_epoch(state.result)
        stop_reason = state.result.stop_reason
        if checkpointing and checkpointing.due(epoch, finished=bool(stop_reason)) and rank() == 0:
            checkpointing.save(state.state_dict())
        if stop_reason:
            progress.write(f"stopped after epoch {epoch}: {stop_reason}")
            break
    model.load_state_dict(state.result.best_state)
    state.result.weight_decay = float(config.weight_decay)
    state.result.precision = precision.name
    return state.result


# `train.weight_decay: auto` tries these L2 strengths, a decade apart around the 0.01 that 5-fold cross-validation
# chose for a linear head on 3,000 photos' Lite0 features (scikit-learn's C = 0.03 is 1 / (C × n)). A finer grid of
# eight (half a decade apart) picked 0.0 or 0.001 on three splits of the animals photos, both in this one, at twice
# the cost.
WEIGHT_DECAY_GRID = (0.0, 1e-3, 1e-2, 1e-1)


def fit_choosing_weight_decay(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    config: TrainParams,
    device: torch.device,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """`fit` once per strength of WEIGHT_DECAY_GRID and keep the head whose best epoch has the lowest val loss
    (on a tie the weaker L2): a strength chosen on data the head does not train on, not by hand.

    Each candidate starts from the same initial weights and random state, so the kept head is the one a run
    with that fixed `train.weight_decay` trains. Meant for a head on cached features, which trains in about a
    second; there is no checkpoint to resume. `on_epoch` follows the candidate being trained.
    """
    initial_weights, random_state = copy.deepcopy(model.state_dict()), torch.get_rng_state()
    results = []
    for weight_decay in WEIGHT_DECAY_GRID:
        model.load_state_dict(initial_weights)
        torch.set_rng_state(random_state)
        results.append(
            fit(model, train_data, val_data, replace(config, weight_decay=weight_decay), device, on_epoch=on_epoch)
        )
    best = min(results, key=lambda result: result.best_val_loss)  # the first of equals: the weaker L2
    model.load_state_dict(best.best_state)
    best.val_loss_by_weight_decay = {result.weight_decay: result.best_val_loss for result in results}
    if rank() == 0:
        print(f"train.weight_decay auto: {best.weight_decay} (val loss {best.best_val_loss:.4f})")
    return best


def fit_at_weight_decay(
    model: nn.Module,
    train_data: Dataset,
    val_data: Dataset,
    config: TrainParams,
    device: torch.device,
    choose: bool,
    checkpointing: Checkpointing | None = None,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """`fit` at `train.weight_decay`. Its `auto` tries every strength of WEIGHT_DECAY_GRID where `choose` (a head on
    stored features, where a candidate costs a second); elsewhere each would be a whole training run, and auto
    means 0."""
    if config.weight_decay == WEIGHT_DECAY_AUTO:
        if choose:
            return fit_choosing_weight_decay(model, train_data, val_data, config, device, on_epoch)
        config = replace(config, weight_decay=0.0)
    return fit(model, train_data, val_data, config, device, checkpointing, on_epoch)


def fit_head_first(
    network: Classifier,
    train_data: Dataset,
    val_data: Dataset,
    features: Callable[[Dataset], torch.Tensor],
    config: TrainParams,
    device: torch.device,
    checkpointing: Checkpointing | None = None,
    on_epoch: Callable[[FitResult], None] | None = None,
) -> FitResult:
    """Train the head alone on `features` of the data (the backbone's as it stands: a linear probe, for
    `train.epochs`, L2 chosen on val), then the backbone (or its last blocks) with it for `train.backbone_epochs`
    epochs at the backbone's learning rate; the weights of the epoch of lowest val loss are kept, the head-only
    epochs included.

    A new head would send large, random gradients into a pretrained backbone; a head that already fits its features
    lets it move only as far as the data asks. The result's history holds both phases, the head's first.
    """
    labels = labels_of(train_data), labels_of(val_data)
    train_features, val_features = (
        TensorDataset(features(data), label) for data, label in zip((train_data, val_data), labels, strict=True)
    )
    with torch_threads(1):  # a head's matrices are too small to share out between threads
        head = fit_at_weight_decay(network.head, train_features, val_features, config, device, True, None, on_epoch)
    probed = copy.deepcopy(network.state_dict())
    head_epochs = len(head.history)

    def on_backbone_epoch(result: FitResult) -> None:
        if on_epoch is not None:
            on_epoch(joined(head, result, head_epochs))

    backbone_config = replace(config, epochs=config.backbone_epochs, weight_decay=head.weight_decay)
    backbone = fit(network, train_data, val_data, backbone_config, device, checkpointing, on_backbone_epoch)
    result = joined(head, backbone, head_epochs)
    if head.best_val_loss <= backbone.best_val_loss:  # training the backbone did not help on val: keep it as it was
        network.load_state_dict(probed)
        result.best_epoch, result.best_state = head.best_epoch, probed
    return result


def joined(head: FitResult, backbone: FitResult, head_epochs: int) -> FitResult:
    """One history of both phases: the backbone's epochs numbered after the head's; their best epoch kept."""
    history = head.history + [replace(epoch, epoch=epoch.epoch + head_epochs) for epoch in backbone.history]
    best_epoch = backbone.best_epoch + head_epochs if backbone.best_epoch else 0
    return FitResult(
        history,
        best_epoch,
        backbone.best_state,
        backbone.stop_reason,
        head.weight_decay,
        head.val_loss_by_weight_decay,
        precision=backbone.precision,
    )


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """PyTorch's CPU threads set to `count` inside (None: left as they are), and restored after."""
    before = torch.get_num_threads()
    torch.set_num_threads(count or before)
    try:
        yield
    finally:
        torch.set_num_threads(before)
