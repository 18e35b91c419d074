"""Classification metrics (scikit-learn) and the predictions behind them."""

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from imageclf.models import Classifier


@torch.inference_mode()
def predict_probabilities(
    model: Classifier, dataset: Dataset, batch_size: int, device: torch.device, description: str = "predict"
) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities for every item of `dataset`, and the items' labels."""
    model = model.eval().to(device, memory_format=torch.channels_last)
    probabilities, labels = [], []
    for images, targets in tqdm(DataLoader(dataset, batch_size=batch_size), desc=description, unit="batch"):
        logits = model(images.to(device, memory_format=torch.channels_last))
        probabilities.append(logits.float().softmax(dim=1).cpu())
        labels.append(targets)
    return torch.cat(probabilities).numpy(), torch.cat(labels).numpy()


def classification_metrics(true: list[str], predicted: list[str], classes: list[str]) -> dict:
    """Accuracy, per-class precision, recall, F1 and support, and macro F1."""
    precision, recall, f1, support = precision_recall_fscore_support(true, predicted, labels=classes, zero_division=0)
    return {
        "accuracy": float(accuracy_score(true, predicted)),
        "macro_f1": float(f1_score(true, predicted, labels=classes, average="macro", zero_division=0)),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, label in enumerate(classes)
        },
    }
