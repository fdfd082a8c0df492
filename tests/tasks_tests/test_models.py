from __future__ import annotations

import pytest
import torch
from torch import nn

from optuna_ext.tasks import build_model
from optuna_ext.tasks import DatasetSplit
from optuna_ext.tasks import load_digits
from optuna_ext.tasks import make_teacher_data
from optuna_ext.tasks import MLP
from optuna_ext.tasks import MODEL_NAMES
from optuna_ext.tasks import ResNet20
from optuna_ext.tasks import SmallCNN
from optuna_ext.tasks import SmallVGG


CNN_NAMES = ("cnn", "resnet20", "vgg")
MLP_NAMES = ("mlp-2-1", "mlp-2-3-1", "mlp-2-5-5-1")


@pytest.fixture(scope="module")
def digits() -> DatasetSplit:
    return load_digits()


@pytest.fixture(scope="module")
def teacher_2d() -> DatasetSplit:
    return make_teacher_data(teacher="2-3-1", n_samples=200)


@pytest.fixture(scope="module")
def teacher_image() -> DatasetSplit:
    return make_teacher_data(teacher="2-3-1", form="image", n_samples=200)


def test_model_names() -> None:
    assert set(MODEL_NAMES) == set(CNN_NAMES) | set(MLP_NAMES)


@pytest.mark.parametrize("name", CNN_NAMES)
def test_cnn_forward_on_digits(name: str, digits: DatasetSplit) -> None:
    model = build_model(name, data=digits)
    x = digits.valid.tensors[0][:7]
    model.train()
    assert model(x).shape == (7, 10)
    model.eval()
    assert model(x).shape == (7, 10)


@pytest.mark.parametrize("name", CNN_NAMES)
def test_cnn_forward_on_teacher_images(name: str, teacher_image: DatasetSplit) -> None:
    model = build_model(name, data=teacher_image)
    assert model(teacher_image.train.tensors[0][:5]).shape == (5, 2)


@pytest.mark.parametrize("name", MLP_NAMES)
def test_mlp_forward_on_teacher_points(name: str, teacher_2d: DatasetSplit) -> None:
    model = build_model(name, data=teacher_2d)
    assert isinstance(model, MLP)
    assert model.layers == tuple(int(w) for w in name.split("-")[1:])
    assert model(teacher_2d.train.tensors[0][:5]).shape == (5, 1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_model_is_seeded(name: str, digits: DatasetSplit, teacher_2d: DatasetSplit) -> None:
    data = teacher_2d if name in MLP_NAMES else digits
    state = torch.get_rng_state()
    a = build_model(name, data=data, seed=3).state_dict()
    b = build_model(name, data=data, seed=3).state_dict()
    c = build_model(name, data=data, seed=4).state_dict()
    # The global random state is left as it was.
    assert torch.equal(state, torch.get_rng_state())
    assert a.keys() == b.keys() == c.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_build_model_unknown_name(digits: DatasetSplit) -> None:
    with pytest.raises(ValueError, match="resnet20"):
        build_model("resnet56", data=digits)


def test_build_model_shape_mismatch(digits: DatasetSplit, teacher_2d: DatasetSplit) -> None:
    with pytest.raises(ValueError, match="mlp-2-3-1"):
        build_model("mlp-2-3-1", data=digits)
    with pytest.raises(ValueError, match="image inputs"):
        build_model("cnn", data=teacher_2d)


def test_build_model_passes_kwargs(digits: DatasetSplit, teacher_2d: DatasetSplit) -> None:
    model = build_model("resnet20", data=digits, width=4)
    assert isinstance(model, ResNet20)
    assert model.classifier.in_features == 16
    cnn = build_model("cnn", data=digits, channels=(4, 6))
    assert isinstance(cnn, SmallCNN)
    assert cnn.classifier.in_features == 4 * 6
    mlp = build_model("mlp-2-3-1", data=teacher_2d, activation="tanh")
    assert any(isinstance(m, nn.Tanh) for m in mlp.modules())


def _convs(model: nn.Module, kernel: int) -> list[nn.Conv2d]:
    return [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size[0] == kernel]


@pytest.mark.parametrize("width", [4, 16])
def test_resnet20_structure(width: int) -> None:
    model = ResNet20(in_channels=3, n_classes=7, width=width)
    convs3 = _convs(model, 3)
    assert len(convs3) == 19  # 19 3x3 convolutions + 1 linear layer = 20 layers
    assert len([m for m in model.modules() if isinstance(m, nn.Linear)]) == 1
    # Option-B shortcuts at the two downsampling blocks.
    shortcuts = _convs(model, 1)
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcuts] == [
        (width, 2 * width, (2, 2)),
        (2 * width, 4 * width, (2, 2)),
    ]
    assert convs3[0].in_channels == 3
    assert sorted({c.out_channels for c in convs3}) == [width, 2 * width, 4 * width]
    assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 7)
    # Not tied to 8x8 inputs.
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_resnet20_width_16_has_the_original_size() -> None:
    # ResNet-20 for CIFAR has about 0.27 M parameters (He et al., 2016, Table 6).
    n = sum(p.numel() for p in ResNet20(in_channels=3, width=16).parameters())
    assert 0.26e6 < n < 0.29e6


def test_small_vgg_structure() -> None:
    model = SmallVGG(in_channels=2, n_classes=3, width=8)
    convs = _convs(model, 3)
    assert [c.out_channels for c in convs] == [8, 8, 16, 16, 32, 32]
    assert model(torch.zeros(4, 2, 8, 8)).shape == (4, 3)


def test_small_cnn_structure() -> None:
    model = SmallCNN(in_channels=3, n_classes=5, channels=(8, 12))
    assert [(c.in_channels, c.out_channels) for c in _convs(model, 3)] == [(3, 8), (8, 12)]
    assert model(torch.zeros(4, 3, 8, 8)).shape == (4, 5)
    assert model(torch.zeros(4, 3, 16, 16)).shape == (4, 5)


@pytest.mark.parametrize("layers, n_params", [((2, 1), 3), ((2, 3, 1), 13), ((2, 5, 5, 1), 51)])
def test_mlp_sizes(layers: tuple[int, ...], n_params: int) -> None:
    model = MLP(layers=layers)
    assert sum(p.numel() for p in model.parameters()) == n_params
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == len(layers) - 1
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == len(layers) - 2


def test_mlp_flattens_inputs() -> None:
    assert MLP(layers=(64, 10)).forward(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize(
    "factory, name",
    [
        (lambda: MLP(layers=(2,)), "layers"),
        (lambda: MLP(layers=(2, 0, 1)), "layers"),
        (lambda: MLP(layers=(2, 1), activation="sigmoid"), "activation"),
        (lambda: SmallCNN(channels=(16,)), "channels"),  # type: ignore[arg-type]
        (lambda: SmallCNN(channels=(16, 0)), "channels"),
        (lambda: SmallCNN(n_classes=0), "n_classes"),
        (lambda: ResNet20(width=0), "width"),
        (lambda: SmallVGG(in_channels=0), "in_channels"),
    ],
)
def test_model_bad_arguments(factory, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        factory()
