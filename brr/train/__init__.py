"""Training of the V3 detector on an EDF + csv_bi corpus: settings, data, focal loss, loop, evaluation."""

from brr.train.dataset import CorpusError, find_corpus, split_corpus
from brr.train.evaluate import evaluate_checkpoint, evaluate_corpus
from brr.train.loop import TrainingError, TrainResult, train
from brr.train.settings import SettingsError, TrainSettings, make_settings
from brr.train.state import TrainingStateError

__all__ = [
    "CorpusError", "SettingsError", "TrainResult", "TrainSettings", "TrainingError", "TrainingStateError",
    "evaluate_checkpoint", "evaluate_corpus", "find_corpus", "make_settings", "split_corpus", "train",
]
