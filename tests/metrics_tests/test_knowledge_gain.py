from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from optuna_ext.metrics import evbmf
from optuna_ext.metrics import knowledge_gain_rank
from optuna_ext.metrics import unfold
from tests.metrics_tests._models import conv_weight
from tests.metrics_tests._models import plant_low_rank
from tests.metrics_tests._models import ResNet20
from tests.metrics_tests._models import small_cnn


def test_unfold_modes() -> None:
    w = torch.arange(4 * 3 * 2 * 2, dtype=torch.float32).reshape(4, 3, 2, 2)
    mode3 = unfold(w, 3)
    mode4 = unfold(w, 4)
    assert mode3.shape == (3, 16)
    assert mode4.shape == (4, 12)
    for i in range(3):  # row i of mode 3: everything that input channel i feeds
        assert torch.equal(mode3[i], w[:, i].reshape(-1))
    for o in range(4):
        assert torch.equal(mode4[o], w[o].reshape(-1))
    linear = torch.randn(5, 7)
    assert torch.equal(unfold(linear, 3), linear.T)
    assert torch.equal(unfold(linear, 4), linear)
    with pytest.raises(ValueError, match="5"):
        unfold(w, 5)
    with pytest.raises(ValueError, match=r"\(2, 2, 2\)"):
        unfold(torch.ones(2, 2, 2), 3)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("model_fn", [small_cnn, ResNet20])
def test_fresh_network_has_z_one(seed: int, model_fn: type[nn.Module]) -> None:
    torch.manual_seed(seed)
    snapshot = knowledge_gain_rank(model_fn())
    assert snapshot.z == 1.0
    assert snapshot.n_zero_gain == snapshot.n_unfoldings == 2 * len(snapshot.layers)
    assert all(layer.gain3 == layer.gain4 == 0.0 for layer in snapshot.layers)


def _learnable_task(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    prototypes = torch.randn(4, 1, 8, 8, generator=g)
    labels = torch.randint(0, 4, (512,), generator=g)
    images = prototypes[labels] + 0.5 * torch.randn(512, 1, 8, 8, generator=g)
    return images, labels


def test_training_lowers_z() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    images, labels = _learnable_task(0)
    assert knowledge_gain_rank(model).z == 1.0
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    for _ in range(60):
        index = torch.randint(0, len(labels), (64,), generator=g)
        loss = nn.functional.cross_entropy(model(images[index]), labels[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    snapshot = knowledge_gain_rank(model)
    assert snapshot.z < 1.0
    assert any(layer.gain4 > 0.0 for layer in snapshot.layers)


def test_gains_and_ranks_match_single_matrix_evbmf() -> None:
    torch.manual_seed(0)
    model = ResNet20()
    convs = [p for p in model.parameters() if p.ndim == 4]
    for i, weight in enumerate(convs[::3]):
        plant_low_rank(weight.data, rank=1 + i % 3, seed=i)
    for p in (1, 2):
        snapshot = knowledge_gain_rank(model, p=p)
        assert len(snapshot.layers) == len(convs)
        for layer, weight in zip(snapshot.layers, convs, strict=True):
            assert layer.shape == tuple(weight.shape)
            for mode, gain, rank in ((3, layer.gain3, layer.rank3), (4, layer.gain4, layer.rank4)):
                result = evbmf(unfold(weight.detach(), mode))
                assert rank == result.rank
                values = result.singular_values
                expected = (
                    float(((values / values[0]) ** p).sum()) / unfold(weight, mode).shape[0]
                    if result.rank
                    else 0.0
                )
                assert gain == pytest.approx(expected, rel=1e-9, abs=0.0)
        # One in three layers carries a planted signal in both unfoldings.
        assert snapshot.z == pytest.approx(1.0 - len(convs[::3]) / len(convs))
        assert snapshot.n_zero_gain == 2 * (len(convs) - len(convs[::3]))


@pytest.mark.parametrize("tall_policy", ["transpose", "reference"])
def test_every_orientation_matches_single_matrix_evbmf(tall_policy: str) -> None:
    # Tall and wide unfoldings in both modes, and a linear layer.
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(48, 12, 1),  # mode 3 is 48 x 12 (tall), mode 4 is 12 x 48
        nn.Conv2d(12, 48, 1),  # mode 3 is 12 x 48, mode 4 is 48 x 12 (tall)
        nn.Conv2d(48, 48, 3),
        nn.Linear(40, 10),
    )
    for i, module in enumerate(list(model)[:3]):
        plant_low_rank(conv_weight(module), rank=2, seed=i, strength=2.0)
    snapshot = knowledge_gain_rank(model, tall_policy=tall_policy, include_linear=True)
    weights = [p for p in model.parameters() if p.ndim in (2, 4)]
    assert len(snapshot.layers) == len(weights) == 4
    for layer, weight in zip(snapshot.layers, weights, strict=True):
        for mode, gain, rank in ((3, layer.gain3, layer.rank3), (4, layer.gain4, layer.rank4)):
            result = evbmf(unfold(weight.detach(), mode), tall_policy=tall_policy)
            assert rank == result.rank
            values = result.singular_values
            n = unfold(weight, mode).shape[0]
            assert gain == pytest.approx(float((values / values[0]).sum()) / n if rank else 0.0)
    assert snapshot.layers[0].rank4 == 2


def test_gain_range_and_p() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    plant_low_rank(conv_weight(model[2]), rank=3, seed=0)
    layer1 = knowledge_gain_rank(model, p=1).layers[1]
    layer2 = knowledge_gain_rank(model, p=2).layers[1]
    assert layer1.rank3 == layer2.rank3 == 3
    assert layer1.rank4 == layer2.rank4 == 3
    # G_d = (1/N_d) sum (gamma_h / gamma_1)^p: in [1/N_d, r/N_d], smaller for p = 2.
    for p1, p2, n in ((layer1.gain3, layer2.gain3, 8), (layer1.gain4, layer2.gain4, 16)):
        assert 1 / n <= p2 <= p1 <= 3 / n


def test_tall_policy_on_expanding_one_by_one_conv() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU(), nn.Conv2d(64, 64, 3))
    # Mode 4 of the 1x1 conv is 64 x 16: tall (ratio 4). A moderate planted signal is found by
    # EVBMF on its transpose but not by the reference, whose bounds are reversed there.
    plant_low_rank(conv_weight(model[0]), rank=2, seed=0, strength=1.5)
    transpose = knowledge_gain_rank(model).layers[0]
    reference = knowledge_gain_rank(model, tall_policy="reference").layers[0]
    assert transpose.rank4 == 2
    assert transpose.rank3 == reference.rank3 == 2
    assert reference.rank4 == 0
    assert reference.gain4 == 0.0


def test_no_conv_weights() -> None:
    mlp = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 3))
    with pytest.raises(ValueError, match="no convolution"):
        knowledge_gain_rank(mlp)
    with pytest.raises(ValueError, match="no convolution"):
        knowledge_gain_rank(nn.Sequential(nn.BatchNorm2d(3)), include_linear=True)
    snapshot = knowledge_gain_rank(mlp, include_linear=True)
    assert [layer.name for layer in snapshot.layers] == ["0.weight", "2.weight"]
    assert snapshot.z == 1.0


def test_include_linear_counts_linear_layers() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    linear = model[6]
    assert isinstance(linear, nn.Linear)
    with torch.no_grad():  # a rank-1 linear weight plus a little noise
        linear.weight.copy_(torch.outer(torch.randn(4), torch.randn(16)))
        linear.weight.add_(0.01 * torch.randn(4, 16))
    without = knowledge_gain_rank(model)
    with_linear = knowledge_gain_rank(model, include_linear=True)
    assert [layer.name for layer in without.layers] == ["0.weight", "2.weight"]
    assert [layer.name for layer in with_linear.layers] == ["0.weight", "2.weight", "6.weight"]
    assert with_linear.n_unfoldings == 6
    last = with_linear.layers[-1]
    assert last.rank3 == last.rank4 == 1
    assert last.gain3 == pytest.approx(1 / 16)
    assert last.gain4 == pytest.approx(1 / 4)
    assert without.z == 1.0
    assert with_linear.z == pytest.approx(4 / 6)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"p": 3}, "`p` is 3"),
        ({"p": 0}, "`p` is 0"),
        ({"p": True}, "`p` is True"),
        ({"tall_policy": "square"}, "'square'"),
    ],
)
def test_invalid_options(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        knowledge_gain_rank(small_cnn(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_weights_name_the_layer(bad: float) -> None:
    # A diverged network: the error names the weight instead of torch's LinAlgError.
    model = small_cnn()
    with torch.no_grad():
        conv_weight(model[2])[0, 0, 0, 0] = bad
    with pytest.raises(ValueError, match="The model's weight `2.weight` holds NaN or infinite"):
        knowledge_gain_rank(model)


def test_does_not_touch_gradients_or_weights() -> None:
    torch.manual_seed(0)
    model = small_cnn()
    before = [p.detach().clone() for p in model.parameters()]
    knowledge_gain_rank(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("seed", range(6))
def test_a_layer_gets_the_same_gains_whatever_the_other_layers(seed: int) -> None:
    # The unfoldings of all layers are solved together: a layer's ranks and gains must be those
    # it gets in a model of its own, whatever the widths of the layers beside it.
    torch.manual_seed(seed)
    small = nn.Conv2d(6, 10, 3)
    plant_low_rank(small.weight, rank=2, seed=seed)
    wide = nn.Sequential(nn.Conv2d(10, 48, 3), nn.Conv2d(48, 96, 1))
    alone = knowledge_gain_rank(nn.Sequential(small)).layers[0]
    together = knowledge_gain_rank(nn.Sequential(small, wide)).layers[0]
    assert (together.rank3, together.rank4) == (alone.rank3, alone.rank4)
    assert (together.gain3, together.gain4) == (alone.gain3, alone.gain4)
