"""When training stops: the val metric it watches stopped improving (early stopping, which also picks the saved
epoch), or training accuracy stopped rising (convergence)."""

from dataclasses import dataclass

# `train.early_stopping.monitor`: the val metric, and whether higher is better.
MONITORS: dict[str, bool] = {"val_loss": False, "val_accuracy": True}


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
