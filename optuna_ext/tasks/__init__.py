"""Small, real training problems for demos, benchmarks, notebooks and tests (no download).

Data: scikit-learn's bundled 8x8 digits (:func:`load_digits`) and paper 004's random-teacher
data sets (:func:`make_teacher_data`). Models: :class:`SmallCNN`, :class:`ResNet20`,
:class:`SmallVGG` and :class:`MLP`, by name through :func:`build_model`. Training:
:func:`make_optimizer`, :func:`train_epoch`, :func:`evaluate` and :func:`fit`, which reports
to an Optuna trial after every epoch.
"""

from optuna_ext.tasks._data import DATASET_NAMES
from optuna_ext.tasks._data import DatasetSplit
from optuna_ext.tasks._data import load_dataset
from optuna_ext.tasks._data import load_digits
from optuna_ext.tasks._data import make_loader
from optuna_ext.tasks._data import make_teacher_data
from optuna_ext.tasks._data import TEACHER_NAMES
from optuna_ext.tasks._data import teacher_network
from optuna_ext.tasks._data import TensorLoader
from optuna_ext.tasks._models import build_model
from optuna_ext.tasks._models import MLP
from optuna_ext.tasks._models import MODEL_NAMES
from optuna_ext.tasks._models import ResNet20
from optuna_ext.tasks._models import SmallCNN
from optuna_ext.tasks._models import SmallVGG
from optuna_ext.tasks._training import evaluate
from optuna_ext.tasks._training import Evaluation
from optuna_ext.tasks._training import fit
from optuna_ext.tasks._training import FitResult
from optuna_ext.tasks._training import make_optimizer
from optuna_ext.tasks._training import OPTIMIZER_NAMES
from optuna_ext.tasks._training import train_epoch


__all__ = [
    "DATASET_NAMES",
    "DatasetSplit",
    "Evaluation",
    "FitResult",
    "MLP",
    "MODEL_NAMES",
    "OPTIMIZER_NAMES",
    "ResNet20",
    "SmallCNN",
    "SmallVGG",
    "TEACHER_NAMES",
    "TensorLoader",
    "build_model",
    "evaluate",
    "fit",
    "load_dataset",
    "load_digits",
    "make_loader",
    "make_optimizer",
    "make_teacher_data",
    "teacher_network",
    "train_epoch",
]
