"""The pipeline's folders and files, as `dvc.yaml`'s commands name them: the defaults of the `imageclf` commands, and
what `imageclf compare`, `imageclf serve` and the benchmarks read from a project or an experiment."""

from pathlib import Path

RAW_DIR = Path("data/raw")  # where `imageclf fetch` puts a downloaded data set
SPLIT_DIR = Path("data/split")
TRAIN_DIR = SPLIT_DIR / "train"
VAL_DIR = SPLIT_DIR / "val"
TEST_DIR = SPLIT_DIR / "test"
AUGMENTED_DIR = Path("data/augmented")
MODEL_FILE = Path("models/model.pt")
METRICS_DIR = Path("metrics")

# In METRICS_DIR: what split, train and evaluate write. The metrics files DVC shows (`dvc metrics show`, `dvc exp
# show`) hold the headline numbers; the same file name in DETAILS_DIR holds everything behind them.
SPLIT_METRICS = "split.json"
TRAIN_METRICS = "train.json"
TRAIN_HISTORY = "train_history.csv"
TRAIN_TIME = "train_time.json"
EVALUATE_METRICS = "evaluate.json"
TEST_IMAGES_METRICS = "test_images.json"
DETAILS_DIR = "details"
TEST_PREDICTIONS = "test_predictions.csv"
PRECISION_RECALL_DIR = "precision_recall"
PLOTS_DIR = "plots"
REPORT = "report.md"
# In METRICS_DIR / PLOTS_DIR: evaluate's pictures.
CONFUSION_MATRIX = "confusion_matrix.png"
MISCLASSIFIED = "misclassified.png"
PRECISION_RECALL = "precision_recall.png"
TRAINING_CURVES = "training_curves.png"


def metrics_dir_of(model_file: Path) -> Path:
    """The metrics folder of the project a model file lies in (`<project>/models/model.pt` → `<project>/metrics`)."""
    return Path(model_file).resolve().parent.parent / METRICS_DIR
