from __future__ import annotations

import math

from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import numpy as np
import pytest
from sklearn.datasets import load_digits as sk_load_digits
import torch
from torch.utils.data import TensorDataset

from optuna_ext.tasks import DATASET_NAMES
from optuna_ext.tasks import DatasetSplit
from optuna_ext.tasks import load_dataset
from optuna_ext.tasks import load_digits
from optuna_ext.tasks import make_loader
from optuna_ext.tasks import make_teacher_data
from optuna_ext.tasks import TEACHER_NAMES
from optuna_ext.tasks import teacher_network
from optuna_ext.tasks._data import _stratified_split


@pytest.fixture(scope="module")
def digits() -> DatasetSplit:
    return load_digits()


def _parts(data: DatasetSplit) -> list[TensorDataset]:
    return [data.train, data.valid, data.test]


# ---------------------------------------------------------------------------------------------
# Digits


def test_digits_shapes_and_dtypes(digits: DatasetSplit) -> None:
    assert digits.n_classes == 10
    assert digits.input_shape == (1, 8, 8)
    assert digits.name == "digits"
    assert digits.teacher is None
    for part in _parts(digits):
        x, y = part.tensors
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8)
        assert len(x) == len(y)
        assert int(y.min()) >= 0 and int(y.max()) < 10
    assert sum(len(p) for p in _parts(digits)) == 1797


def _raw_rows(digits: DatasetSplit) -> tuple[list[np.ndarray], float, float]:
    """Undo the standardization: map the 17 values of the train pixels back to 0..16."""
    train_x = digits.train.tensors[0].numpy().astype(np.float64)
    levels = np.unique(train_x)
    assert len(levels) == 17  # the raw pixels are the integers 0..16
    step = (levels[-1] - levels[0]) / 16
    np.testing.assert_allclose(np.diff(levels), step, rtol=1e-4)
    rows = []
    for part in _parts(digits):
        x = part.tensors[0].numpy().astype(np.float64).reshape(len(part), 64)
        raw = (x - levels[0]) / step
        # Valid and test are on the same affine scale as train: integers 0..16.
        np.testing.assert_allclose(raw, np.round(raw), atol=1e-3)
        rows.append(np.round(raw))
    return rows, levels[0], step


def test_digits_is_a_partition_of_sklearn_digits(digits: DatasetSplit) -> None:
    rows, _, _ = _raw_rows(digits)
    labels = [p.tensors[1].numpy() for p in _parts(digits)]
    ours = np.concatenate([np.column_stack([r, y]) for r, y in zip(rows, labels, strict=True)])
    bunch = sk_load_digits()
    theirs = np.column_stack([bunch.data, bunch.target])
    # The same multiset of (image, label) rows: the parts add up and are disjoint.
    ours = ours[np.lexsort(ours.T[::-1])]
    theirs = theirs[np.lexsort(theirs.T[::-1])]
    np.testing.assert_array_equal(ours, theirs)


def test_digits_standardized_with_train_statistics(digits: DatasetSplit) -> None:
    rows, _, _ = _raw_rows(digits)
    raw_train = rows[0]
    mean, std = raw_train.mean(), raw_train.std()
    for raw, part in zip(rows, _parts(digits), strict=True):
        expected = (raw - mean) / std
        x = part.tensors[0].numpy().reshape(len(part), 64)
        np.testing.assert_allclose(x, expected, atol=1e-5)
    train_x = digits.train.tensors[0].double()
    assert abs(float(train_x.mean())) < 1e-6
    assert abs(float(train_x.std(unbiased=False)) - 1.0) < 1e-5
    # The valid part was not standardized with its own statistics.
    assert abs(float(digits.valid.tensors[0].double().mean())) > 1e-4


def test_digits_split_is_stratified(digits: DatasetSplit) -> None:
    all_labels = torch.cat([p.tensors[1] for p in _parts(digits)])
    overall = torch.bincount(all_labels, minlength=10).double() / len(all_labels)
    for part in _parts(digits):
        share = torch.bincount(part.tensors[1], minlength=10).double() / len(part)
        assert float((share - overall).abs().max()) < 0.01
    assert len(digits.valid) == round(0.2 * 1797)
    assert len(digits.test) == round(0.2 * 1797)


def test_digits_split_fixed_across_calls(digits: DatasetSplit) -> None:
    again = load_digits()
    for a, b in zip(_parts(digits), _parts(again), strict=True):
        assert torch.equal(a.tensors[0], b.tensors[0])
        assert torch.equal(a.tensors[1], b.tensors[1])
    other = load_digits(split_seed=1)
    assert not torch.equal(other.valid.tensors[1], digits.valid.tensors[1])


def test_digits_fractions() -> None:
    data = load_digits(valid_fraction=0.1, test_fraction=0.3)
    assert len(data.valid) == round(0.1 * 1797)
    assert len(data.test) == round(0.3 * 1797)
    assert len(data.train) == 1797 - len(data.valid) - len(data.test)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"valid_fraction": 0.0}, "valid_fraction"),
        ({"valid_fraction": -0.1}, "valid_fraction"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"valid_fraction": math.nan}, "valid_fraction"),
        ({"test_fraction": 0.0}, "test_fraction"),
        ({"test_fraction": 1.5}, "test_fraction"),
        ({"valid_fraction": 0.5, "test_fraction": 0.5}, "valid_fraction"),
        ({"split_seed": -1}, "split_seed"),
    ],
)
def test_digits_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        load_digits(**kwargs)


# ---------------------------------------------------------------------------------------------
# Stratified split (pure helper)


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 4), min_size=5, max_size=300),
    valid_fraction=st.floats(0.05, 0.45),
    test_fraction=st.floats(0.05, 0.45),
    seed=st.integers(0, 2**32 - 1),
)
def test_stratified_split_partition_and_shares(
    labels: list[int], valid_fraction: float, test_fraction: float, seed: int
) -> None:
    y = np.asarray(labels)
    n = len(y)
    n_test = max(1, round(test_fraction * n))
    n_valid = max(1, round(valid_fraction * n))
    if n - n_test - n_valid < 1:
        with pytest.raises(ValueError):
            _stratified_split(y, valid_fraction, test_fraction, seed)
        return
    train, valid, test = _stratified_split(y, valid_fraction, test_fraction, seed)
    assert (len(train), len(valid), len(test)) == (n - n_test - n_valid, n_valid, n_test)
    np.testing.assert_array_equal(np.sort(np.concatenate([train, valid, test])), np.arange(n))
    classes = np.unique(y)
    k = len(classes)
    for c in classes:
        m = int((y == c).sum())
        bound = m * k / n + 1 + 1e-9
        # Test is the first n_test of a class-proportional order, test + valid the first
        # n_test + n_valid.
        for prefix, idx in ((n_test, test), (n_test + n_valid, np.concatenate([test, valid]))):
            assert abs(int((y[idx] == c).sum()) - m * prefix / n) <= bound


# ---------------------------------------------------------------------------------------------
# Teacher data


@pytest.mark.parametrize("teacher", TEACHER_NAMES)
def test_teacher_labels_reproduced_by_teacher(teacher: str) -> None:
    data = make_teacher_data(teacher=teacher, n_samples=1000, seed=3)
    assert data.teacher is not None
    rebuilt = teacher_network(teacher, seed=3)
    for part in _parts(data):
        x, y = part.tensors
        assert x.shape[1:] == (2,)
        assert set(y.unique().tolist()) <= {0, 1}
        with torch.no_grad():
            logits = data.teacher(x)
            assert torch.equal(logits, rebuilt(x))
        # 100 % accuracy of the teacher on its own data.
        assert torch.equal((logits > 0).long(), y)
    assert data.n_classes == 2
    assert data.input_shape == (2,)
    assert data.name == f"teacher-{teacher}-2d"


@pytest.mark.parametrize("teacher", TEACHER_NAMES)
def test_teacher_classes_not_degenerate(teacher: str) -> None:
    # Seeds 25 and 35 of "2-3-1" once drew teachers whose median lay in a flat region.
    for seed in range(40):
        data = make_teacher_data(teacher=teacher, n_samples=500, seed=seed)
        y = torch.cat([p.tensors[1] for p in _parts(data)]).double()
        assert 0.2 < float(y.mean()) < 0.8, seed


def test_teacher_architectures() -> None:
    widths = {"linear": [(1, 2)], "2-3-1": [(3, 2), (1, 3)], "2-5-5-1": [(5, 2), (5, 5), (1, 5)]}
    for teacher, shapes in widths.items():
        net = teacher_network(teacher, seed=0)
        linear = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert [tuple(m.weight.shape) for m in linear] == shapes
        assert not any(p.requires_grad for p in net.parameters())


def test_deep_teacher_boundary_is_not_linear() -> None:
    # A least-squares linear classifier does not fit the 2-5-5-1 teacher's labels.
    def linear_fit_accuracy(teacher: str) -> float:
        data = make_teacher_data(teacher=teacher, n_samples=4000, seed=0)
        x, y = data.train.tensors
        a = torch.cat([x.double(), torch.ones(len(x), 1, dtype=torch.float64)], dim=1)
        w = torch.linalg.lstsq(a, (2.0 * y - 1.0).double().unsqueeze(1)).solution
        return float(((a @ w).squeeze(1) > 0).long().eq(y).double().mean())

    assert linear_fit_accuracy("2-5-5-1") < 0.99


@pytest.mark.parametrize("teacher", TEACHER_NAMES)
def test_teacher_image_form(teacher: str) -> None:
    flat = make_teacher_data(teacher=teacher, n_samples=600, seed=5)
    image = make_teacher_data(teacher=teacher, form="image", n_samples=600, seed=5)
    assert image.input_shape == (1, 8, 8)
    assert image.name == f"teacher-{teacher}-image"
    for p2, pi in zip(_parts(flat), _parts(image), strict=True):
        assert pi.tensors[0].shape == (len(p2), 1, 8, 8)
        assert pi.tensors[0].dtype == torch.float32
        # The same points, hence the same labels and split.
        assert torch.equal(p2.tensors[1], pi.tensors[1])
    # Each image is a fixed linear map of its 2-D point plus noise of std 0.1.
    x2 = torch.cat([p.tensors[0] for p in _parts(flat)]).double()
    xi = torch.cat([p.tensors[0] for p in _parts(image)]).double().reshape(-1, 64)
    coef = torch.linalg.lstsq(x2, xi).solution
    residual = xi - x2 @ coef
    assert 0.09 < float(residual.std()) < 0.11
    # Pixels have about unit variance.
    assert 0.5 < float(xi.std()) < 1.5


def test_teacher_image_noise_zero_is_exactly_linear() -> None:
    flat = make_teacher_data(n_samples=200, seed=1)
    image = make_teacher_data(form="image", n_samples=200, seed=1, image_noise=0.0)
    x2 = flat.train.tensors[0].double()
    xi = image.train.tensors[0].double().reshape(-1, 64)
    coef = torch.linalg.lstsq(x2, xi).solution
    assert float((xi - x2 @ coef).abs().max()) < 1e-5


@pytest.mark.parametrize("form", ["2d", "image"])
def test_teacher_reproducible_and_seed_dependent(form: str) -> None:
    a = make_teacher_data(teacher="2-5-5-1", form=form, n_samples=300, seed=7)
    b = make_teacher_data(teacher="2-5-5-1", form=form, n_samples=300, seed=7)
    c = make_teacher_data(teacher="2-5-5-1", form=form, n_samples=300, seed=8)
    for pa, pb, pc in zip(_parts(a), _parts(b), _parts(c), strict=True):
        assert torch.equal(pa.tensors[0], pb.tensors[0])
        assert torch.equal(pa.tensors[1], pb.tensors[1])
        assert not torch.equal(pa.tensors[0], pc.tensors[0])
    assert a.teacher is not None and c.teacher is not None
    wa = next(iter(a.teacher.parameters()))
    wc = next(iter(c.teacher.parameters()))
    assert not torch.equal(wa, wc)


def test_teacher_sizes() -> None:
    data = make_teacher_data(n_samples=1000, valid_fraction=0.1, test_fraction=0.25)
    assert (len(data.train), len(data.valid), len(data.test)) == (650, 100, 250)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"teacher": "2-4-1"}, "teacher"),
        ({"form": "3d"}, "form"),
        ({"n_samples": 0}, "n_samples"),
        ({"n_samples": 2}, "2 samples"),
        ({"seed": -1}, "seed"),
        ({"valid_fraction": 0.0}, "valid_fraction"),
        ({"valid_fraction": 0.6, "test_fraction": 0.4}, "valid_fraction"),
        ({"image_noise": -0.1}, "image_noise"),
        ({"image_noise": math.inf}, "image_noise"),
    ],
)
def test_teacher_bad_arguments(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        make_teacher_data(**kwargs)


def test_teacher_network_bad_name() -> None:
    with pytest.raises(ValueError, match="2-5-5-1"):
        teacher_network("mlp")


# ---------------------------------------------------------------------------------------------
# Loader


def _index_dataset(n: int) -> TensorDataset:
    return TensorDataset(torch.arange(n, dtype=torch.float32).unsqueeze(1), torch.arange(n))


@pytest.mark.parametrize("n, batch_size", [(100, 32), (96, 32), (5, 64), (1, 1)])
def test_loader_len_and_coverage(n: int, batch_size: int) -> None:
    loader = make_loader(_index_dataset(n), batch_size=batch_size, shuffle=True, seed=0)
    assert len(loader) == math.ceil(n / batch_size)
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == len(loader)
        assert all(len(y) <= batch_size for _, y in batches)
        labels = torch.cat([y for _, y in batches])
        inputs = torch.cat([x for x, _ in batches])
        assert torch.equal(labels.sort().values, torch.arange(n))
        # Inputs and labels stay paired.
        assert torch.equal(inputs[:, 0].long(), labels)


def test_loader_drop_last() -> None:
    loader = make_loader(_index_dataset(100), batch_size=32, shuffle=True, drop_last=True)
    assert len(loader) == 3
    assert [len(y) for _, y in loader] == [32, 32, 32]


def test_loader_without_shuffle_keeps_order() -> None:
    loader = make_loader(_index_dataset(10), batch_size=4, shuffle=False)
    for _ in range(2):
        assert torch.equal(torch.cat([y for _, y in loader]), torch.arange(10))


def test_loader_epochs_depend_on_seed_and_epoch() -> None:
    def epochs(seed: int, k: int) -> list[torch.Tensor]:
        loader = make_loader(_index_dataset(50), batch_size=8, shuffle=True, seed=seed)
        return [torch.cat([y for _, y in loader]) for _ in range(k)]

    a, b, c = epochs(0, 3), epochs(0, 3), epochs(1, 3)
    for ea, eb in zip(a, b, strict=True):
        assert torch.equal(ea, eb)
    # Each epoch has a new order, and another seed other orders.
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[1], a[2])
    assert not torch.equal(a[0], c[0])


def test_loader_each_iter_is_one_epoch() -> None:
    loader = make_loader(_index_dataset(50), batch_size=8, shuffle=True, seed=0)
    iter(loader)  # an epoch begun and abandoned still counts as one epoch
    second = torch.cat([y for _, y in loader])
    fresh = make_loader(_index_dataset(50), batch_size=8, shuffle=True, seed=0)
    list(fresh)
    assert torch.equal(second, torch.cat([y for _, y in fresh]))


def test_loader_does_not_touch_global_rng() -> None:
    state = torch.get_rng_state()
    loader = make_loader(_index_dataset(50), batch_size=8, shuffle=True, seed=0)
    list(loader)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("batch_size", [0, -1])
def test_loader_bad_batch_size(batch_size: int) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_loader(_index_dataset(10), batch_size=batch_size, shuffle=False)


# ---------------------------------------------------------------------------------------------
# Data sets by name


@pytest.mark.parametrize("name", DATASET_NAMES)
def test_load_dataset_by_name(name: str) -> None:
    data = load_dataset(name, seed=2, n_samples=300)
    assert data.name == name
    if name == "digits":
        expected = load_digits(split_seed=2)
    else:
        teacher, form = name.removeprefix("teacher-").rsplit("-", 1)
        expected = make_teacher_data(teacher=teacher, form=form, n_samples=300, seed=2)
    assert data.input_shape == expected.input_shape
    for a, b in zip(_parts(data), _parts(expected), strict=True):
        assert torch.equal(a.tensors[0], b.tensors[0])
        assert torch.equal(a.tensors[1], b.tensors[1])


def test_load_dataset_unknown_name() -> None:
    with pytest.raises(ValueError, match="teacher-2-3-1-image"):
        load_dataset("mnist")
