from __future__ import annotations

from collections.abc import Iterator
from collections.abc import Sequence
from dataclasses import dataclass
import math

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset


TEACHER_NAMES = ("linear", "2-3-1", "2-5-5-1")
"""The teacher networks of :func:`make_teacher_data`."""

_TEACHER_LAYERS: dict[str, tuple[int, ...]] = {
    "linear": (2, 1),
    "2-3-1": (2, 3, 1),
    "2-5-5-1": (2, 5, 5, 1),
}
_FORMS = ("2d", "image")
DATASET_NAMES = ("digits",) + tuple(
    f"teacher-{teacher}-{form}" for teacher in TEACHER_NAMES for form in _FORMS
)
"""The names accepted by :func:`load_dataset` (the :attr:`DatasetSplit.name` of each)."""
_IMAGE_SHAPE = (1, 8, 8)
# Size of the reference sample whose median output sets a teacher's decision threshold.
_N_REFERENCE = 100_000
# A teacher is redrawn until each class holds at least this share of the reference sample.
_MIN_CLASS_SHARE = 0.3
# ... and at most this share of it lies on the decision threshold.
_MAX_TIED_SHARE = 0.01
_MAX_TEACHER_DRAWS = 1000
# Inputs whose teacher logit is closer to 0 than this are redrawn, so that no label depends on
# floating-point rounding.
_MIN_ABS_LOGIT = 1e-6
# Offsets that keep the random streams of one seed apart.
_STREAM_TEACHER = 0
_STREAM_INPUTS = 1
_STREAM_IMAGE = 2
_STREAM_SPLIT = 3


@dataclass(frozen=True)
class DatasetSplit:
    """A classification data set split into train, valid and test parts.

    Each part is a :class:`~torch.utils.data.TensorDataset` of ``(inputs, labels)`` with
    ``float32`` inputs of shape ``(N, *input_shape)`` and ``int64`` labels in
    ``[0, n_classes)``.

    Example:

        .. testcode::

            from optuna_ext.tasks import load_digits

            data = load_digits()
            inputs, labels = data.train.tensors
            assert inputs.shape[1:] == data.input_shape

    Args:
        train:
            The training part.
        valid:
            The validation part (what hyper-parameter searches should optimize).
        test:
            The held-out test part.
        n_classes:
            The number of classes.
        input_shape:
            The shape of one input, e.g. ``(1, 8, 8)`` or ``(2,)``.
        name:
            A short name of the data set, e.g. ``"digits"`` or ``"teacher-2-3-1-2d"``.
        teacher:
            For teacher data (:func:`make_teacher_data`), the teacher network on the 2-D points
            (see :func:`teacher_network`); :obj:`None` otherwise.
    """

    train: TensorDataset
    valid: TensorDataset
    test: TensorDataset
    n_classes: int
    input_shape: tuple[int, ...]
    name: str
    teacher: nn.Module | None = None


def _check_fractions(valid_fraction: float, test_fraction: float) -> None:
    for name, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"The value of `{name}` is {value}, but must be `0 < {name} < 1`.")
    if valid_fraction + test_fraction >= 1.0:
        raise ValueError(
            f"The values of `valid_fraction` and `test_fraction` are {valid_fraction} and "
            f"{test_fraction}, but must be `valid_fraction + test_fraction < 1`."
        )


def _stratified_split(
    labels: np.ndarray, valid_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return sorted train, valid and test indices with the class shares of ``labels``."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    n_test = max(1, round(test_fraction * n))
    n_valid = max(1, round(valid_fraction * n))
    if n - n_test - n_valid < 1:
        raise ValueError(
            f"The data set has {n} samples, too few for `valid_fraction={valid_fraction}` and "
            f"`test_fraction={test_fraction}`."
        )
    # Interleave the classes' shuffled samples in proportion to the class sizes: any prefix of
    # the resulting order holds every class in (nearly) its overall share.
    classes = np.unique(labels)
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    keys = np.empty(n)
    for members in per_class:
        # Position k of m members gets key (k + u) / m with one offset u per class.
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    order = np.lexsort((rng.random(n), keys))
    test = np.sort(order[:n_test])
    valid = np.sort(order[n_test : n_test + n_valid])
    train = np.sort(order[n_test + n_valid :])
    return train, valid, test


def _dataset(inputs: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> TensorDataset:
    return TensorDataset(
        torch.as_tensor(inputs[idx], dtype=torch.float32).contiguous(),
        torch.as_tensor(labels[idx], dtype=torch.int64).contiguous(),
    )


def load_digits(
    *, valid_fraction: float = 0.2, test_fraction: float = 0.2, split_seed: int = 0
) -> DatasetSplit:
    """Load scikit-learn's bundled 8x8 handwritten digits (1797 images, 10 classes).

    The data ship inside the scikit-learn wheel, so nothing is downloaded. The images come as
    ``(N, 1, 8, 8)`` tensors standardized with one mean and one standard deviation computed
    over all pixels of the train part only (a per-pixel scale would divide by zero: some border
    pixels are 0 in every training image). The split is stratified by class and fixed by
    ``split_seed``, so every caller with the default arguments gets the same split
    (1079 train, 359 valid, 359 test images).

    Example:

        .. testcode::

            from optuna_ext.tasks import load_digits

            data = load_digits()
            print(len(data.train), len(data.valid), len(data.test), data.n_classes)

        .. testoutput::

            1079 359 359 10

    Args:
        valid_fraction:
            The share of the images in the valid part, in ``(0, 1)``.
        test_fraction:
            The share of the images in the test part, in ``(0, 1)``; the two shares must sum
            to less than 1.
        split_seed:
            The seed of the split.
    """
    _check_fractions(valid_fraction, test_fraction)
    _check_seed("split_seed", split_seed)
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = np.asarray(bunch.images, dtype=np.float64)[:, None, :, :]
    labels = np.asarray(bunch.target, dtype=np.int64)
    train, valid, test = _stratified_split(labels, valid_fraction, test_fraction, split_seed)
    mean = images[train].mean()
    std = images[train].std()
    images = (images - mean) / std
    return DatasetSplit(
        train=_dataset(images, labels, train),
        valid=_dataset(images, labels, valid),
        test=_dataset(images, labels, test),
        n_classes=10,
        input_shape=_IMAGE_SHAPE,
        name="digits",
    )


class _Teacher(nn.Module):
    """A ReLU network whose logit is its raw output minus a threshold; label = ``logit > 0``."""

    def __init__(self, *, net: nn.Sequential, threshold: float) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("threshold", torch.tensor(threshold, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        threshold: torch.Tensor = self.threshold  # type: ignore[assignment]
        return self.net(x.to(torch.float64)).squeeze(-1) - threshold


def _raw_teacher(layers: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    modules: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(layers[:-1], layers[1:], strict=True)):
        linear = nn.Linear(n_in, n_out, dtype=torch.float64)
        with torch.no_grad():
            # Kaiming-normal weights (ReLU gain) as in paper 004; standard normal biases so that
            # the ReLU kinks fall inside the standard normal input cloud.
            linear.weight.normal_(0.0, math.sqrt(2.0 / n_in), generator=generator)
            linear.bias.normal_(0.0, 1.0, generator=generator)
        modules.append(linear)
        if i < len(layers) - 2:
            modules.append(nn.ReLU())
    return nn.Sequential(*modules)


def _check_seed(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"The value of `{name}` is {value}, but must be an integer `>= 0`.")


def _derived_seed(seed: int, stream: int) -> int:
    """A 63-bit seed for the random stream ``stream`` of ``seed``."""
    state = np.random.SeedSequence([int(seed), stream]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def _generator(seed: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(seed, stream))


def _check_teacher(teacher: str) -> None:
    if teacher not in _TEACHER_LAYERS:
        raise ValueError(
            f"The value of `teacher` is {teacher!r}, but must be one of {TEACHER_NAMES}."
        )


def teacher_network(teacher: str = "2-3-1", *, seed: int = 0) -> nn.Module:
    """Return the random teacher network that labels :func:`make_teacher_data`'s points.

    Paper 004 (Jacobson and Gonzalez, "Auto-Tune") labels random 2-D points with a randomly
    initialised network of the same architecture as the student, so that the student can fit
    the data perfectly. The teacher here is a ReLU network with the layer widths of its name
    (``"linear"`` is a single linear unit, ``2-1``), Kaiming-normal weights and standard-normal
    biases, computed in ``float64``. Its output is shifted by the median of the raw output over
    a reference sample of 100 000 standard-normal points, so the two classes are balanced. A
    draw is replaced by the next deterministic draw when one class would hold less than 30 % of
    the reference sample, or when more than 1 % of it lies within ``1e-6`` of the threshold
    (the median fell in a flat region of the output, where every ReLU is off). The module maps
    inputs of shape ``(N, 2)`` to logits of shape ``(N,)``, and the label of a point is
    ``int(logit > 0)``.

    Example:

        .. testcode::

            from optuna_ext.tasks import make_teacher_data
            from optuna_ext.tasks import teacher_network

            data = make_teacher_data(teacher="2-3-1", seed=0)
            inputs, labels = data.train.tensors
            net = teacher_network("2-3-1", seed=0)
            assert ((net(inputs) > 0).long() == labels).all()

    Args:
        teacher:
            ``"linear"``, ``"2-3-1"`` or ``"2-5-5-1"``.
        seed:
            The seed of the teacher's weights (the same ``seed`` as in
            :func:`make_teacher_data`).
    """
    _check_teacher(teacher)
    _check_seed("seed", seed)
    generator = _generator(seed, _STREAM_TEACHER)
    reference = torch.randn(_N_REFERENCE, 2, generator=generator, dtype=torch.float64)
    for _ in range(_MAX_TEACHER_DRAWS):
        net = _raw_teacher(_TEACHER_LAYERS[teacher], generator)
        with torch.no_grad():
            out = net(reference).squeeze(-1)
        threshold = float(out.median())
        # Points within _MIN_ABS_LOGIT of the threshold are never used as data, so a draw whose
        # median lies in a flat region (ties: every ReLU off) is rejected as well.
        share_1 = float((out - threshold >= _MIN_ABS_LOGIT).double().mean())
        share_0 = float((out - threshold <= -_MIN_ABS_LOGIT).double().mean())
        if (
            min(share_0, share_1) >= _MIN_CLASS_SHARE
            and share_0 + share_1 >= 1.0 - _MAX_TIED_SHARE
        ):
            model = _Teacher(net=net, threshold=threshold)
            model.requires_grad_(False)
            return model.eval()
    raise RuntimeError(  # pragma: no cover (each draw is balanced with high probability)
        f"No balanced teacher {teacher!r} found for seed {seed}."
    )


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"The value of `{name}` is {value}, but must be `{name} >= 1`.")


def make_teacher_data(
    *,
    teacher: str = "2-3-1",
    form: str = "2d",
    n_samples: int = 2000,
    seed: int = 0,
    valid_fraction: float = 0.2,
    test_fraction: float = 0.2,
    image_noise: float = 0.1,
) -> DatasetSplit:
    """Generate binary data labelled by a random teacher network (paper 004's data sets).

    Paper 004 (Jacobson and Gonzalez, "Auto-Tune", section 3) compares tuners on 2-D points
    that a logistic regression (data set 1), a 2-3-1 network (data set 2) or a 2-5-5-1 network
    (data set 3) can classify perfectly. Here the points are standard normal, and their labels
    are ``int(logit > 0)`` of :func:`teacher_network` (``teacher``, ``seed``), which is also
    stored on the result as :attr:`DatasetSplit.teacher`. ``"linear"`` replaces the paper's
    ``make_classification`` clusters by a random linear separator, so that all three data sets
    come from a teacher. Points closer than ``1e-6`` to the teacher's boundary are redrawn.

    With ``form="image"`` each point ``x`` is embedded as an 8x8 image
    ``A @ x + image_noise * eps`` with a fixed random ``64 x 2`` matrix ``A`` (entries
    ``N(0, 1/2)``, so pixels have unit variance) and standard normal ``eps``, both drawn from
    ``seed``, so that the CNNs can train on the same task. The 2-D points, labels and split
    are the same as those of ``form="2d"`` with the same arguments. Inputs are not
    standardized (they already have zero mean and unit variance).

    Example:

        .. testcode::

            from optuna_ext.tasks import make_teacher_data

            data = make_teacher_data(teacher="2-5-5-1", form="image", n_samples=500)
            print(data.input_shape, data.n_classes, len(data.train))

        .. testoutput::

            (1, 8, 8) 2 300

    Args:
        teacher:
            ``"linear"``, ``"2-3-1"`` or ``"2-5-5-1"``.
        form:
            ``"2d"`` for inputs of shape ``(2,)`` or ``"image"`` for ``(1, 8, 8)``.
        n_samples:
            The total number of points, over the three parts.
        seed:
            The seed of the teacher, the points, the image embedding and the split.
        valid_fraction:
            The share of the points in the valid part, in ``(0, 1)``.
        test_fraction:
            The share of the points in the test part, in ``(0, 1)``; the two shares must sum
            to less than 1.
        image_noise:
            The standard deviation of the pixel noise of ``form="image"``, ``>= 0``.
    """
    _check_teacher(teacher)
    if form not in _FORMS:
        raise ValueError(f"The value of `form` is {form!r}, but must be one of {_FORMS}.")
    _check_positive_int("n_samples", n_samples)
    _check_seed("seed", seed)
    _check_fractions(valid_fraction, test_fraction)
    if not (math.isfinite(image_noise) and image_noise >= 0.0):
        raise ValueError(
            f"The value of `image_noise` is {image_noise}, but must be finite and "
            "`image_noise >= 0`."
        )
    net = teacher_network(teacher, seed=seed)
    points = _sample_points(net, n_samples, _generator(seed, _STREAM_INPUTS))
    with torch.no_grad():
        labels = (net(points) > 0).to(torch.int64).numpy()
    if form == "2d":
        inputs = points.numpy()
        input_shape: tuple[int, ...] = (2,)
    else:
        generator = _generator(seed, _STREAM_IMAGE)
        n_pixels = math.prod(_IMAGE_SHAPE)
        embedding = torch.randn(n_pixels, 2, generator=generator) * math.sqrt(0.5)
        noise = torch.randn(n_samples, n_pixels, generator=generator)
        images = (points @ embedding.T + image_noise * noise).reshape(n_samples, *_IMAGE_SHAPE)
        inputs = images.numpy()
        input_shape = _IMAGE_SHAPE
    split_seed = _derived_seed(seed, _STREAM_SPLIT)
    train, valid, test = _stratified_split(labels, valid_fraction, test_fraction, split_seed)
    return DatasetSplit(
        train=_dataset(inputs, labels, train),
        valid=_dataset(inputs, labels, valid),
        test=_dataset(inputs, labels, test),
        n_classes=2,
        input_shape=input_shape,
        name=f"teacher-{teacher}-{form}",
        teacher=net,
    )


def _sample_points(net: nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
    """Draw ``n`` standard normal float32 points away from the teacher's boundary."""
    kept: list[torch.Tensor] = []
    n_kept = 0
    while n_kept < n:
        points = torch.randn(n, 2, generator=generator)
        with torch.no_grad():
            points = points[net(points).abs() >= _MIN_ABS_LOGIT]
        kept.append(points)
        n_kept += len(points)
    return torch.cat(kept)[:n].contiguous()


class TensorLoader:
    """Batches of in-memory tensors, deterministic under a seed (a light ``DataLoader``).

    Indexing the tensors directly is much faster than a ``DataLoader`` on small data. Each
    ``iter()`` (one epoch) draws one permutation from a generator seeded once with ``seed``,
    so the order of epoch ``k`` depends only on ``seed`` and ``k``. Build a new loader to
    restart the sequence.

    Args:
        dataset:
            The :class:`~torch.utils.data.TensorDataset` to batch.
        batch_size:
            The number of samples per batch, ``>= 1``.
        shuffle:
            Whether to shuffle the samples in each epoch.
        seed:
            The seed of the shuffling.
        drop_last:
            Whether to drop the last batch when it is smaller than ``batch_size``.
    """

    def __init__(
        self,
        dataset: TensorDataset,
        *,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        _check_positive_int("batch_size", batch_size)
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self._generator = torch.Generator().manual_seed(seed)
        self._n = len(dataset.tensors[0])

    def __len__(self) -> int:
        if self.drop_last:
            return self._n // self.batch_size
        return -(-self._n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        # The permutation is drawn now, not at the first next(), so that each iter() call
        # consumes exactly one permutation.
        order = torch.randperm(self._n, generator=self._generator) if self.shuffle else None
        return self._batches(order)

    def _batches(self, order: torch.Tensor | None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        inputs, labels = self.dataset.tensors[0], self.dataset.tensors[1]
        for i in range(len(self)):
            start = i * self.batch_size
            stop = min(start + self.batch_size, self._n)
            if order is None:
                yield inputs[start:stop], labels[start:stop]
            else:
                idx = order[start:stop]
                yield inputs[idx], labels[idx]


def make_loader(
    dataset: TensorDataset,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    drop_last: bool = False,
) -> TensorLoader:
    """Return a seeded, re-iterable batch loader over an in-memory data set.

    See :class:`TensorLoader`: ``len(loader)`` is the number of batches, and each iteration
    over the loader is one epoch with a fresh permutation (when ``shuffle``) that depends only
    on ``seed`` and the epoch's index.

    Example:

        .. testcode::

            from optuna_ext.tasks import load_digits
            from optuna_ext.tasks import make_loader

            loader = make_loader(load_digits().train, batch_size=64, shuffle=True, seed=0)
            for inputs, labels in loader:
                pass
            print(len(loader))

        .. testoutput::

            17

    Args:
        dataset:
            The :class:`~torch.utils.data.TensorDataset` to batch.
        batch_size:
            The number of samples per batch, ``>= 1``.
        shuffle:
            Whether to shuffle the samples in each epoch.
        seed:
            The seed of the shuffling.
        drop_last:
            Whether to drop the last batch when it is smaller than ``batch_size``.
    """
    return TensorLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last
    )


def load_dataset(name: str, *, seed: int = 0, n_samples: int = 2000) -> DatasetSplit:
    """Load a data set by its name, e.g. from a command line or a benchmark table.

    ``"digits"`` is :func:`load_digits` with ``split_seed=seed``, and
    ``"teacher-<teacher>-<form>"`` (e.g. ``"teacher-2-3-1-2d"``) is :func:`make_teacher_data`
    with that teacher and form, ``seed`` and ``n_samples``; the other arguments keep their
    defaults. ``load_dataset(data.name)`` rebuilds ``data`` made with the defaults.

    Example:

        .. testcode::

            from optuna_ext.tasks import load_dataset

            data = load_dataset("teacher-2-5-5-1-image", seed=1)
            print(data.name, data.input_shape)

        .. testoutput::

            teacher-2-5-5-1-image (1, 8, 8)

    Args:
        name:
            One of :data:`DATASET_NAMES`.
        seed:
            The split seed of the digits, or the seed of the teacher data.
        n_samples:
            The number of points of teacher data (ignored for the digits).
    """
    if name not in DATASET_NAMES:
        raise ValueError(f"The value of `name` is {name!r}, but must be one of {DATASET_NAMES}.")
    if name == "digits":
        return load_digits(split_seed=seed)
    teacher, form = name.removeprefix("teacher-").rsplit("-", 1)
    return make_teacher_data(teacher=teacher, form=form, n_samples=n_samples, seed=seed)
