from __future__ import annotations

import json
from typing import Any

import optuna
import pytest
import torch
from torch import nn

from optuna_ext.metrics import KNOWLEDGE_GAIN_LAYERS_KEY
from optuna_ext.metrics import knowledge_gain_rank
from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_KEY
from optuna_ext.metrics import KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY
from optuna_ext.metrics import KnowledgeGainTracker
from tests.metrics_tests._models import conv_weight
from tests.metrics_tests._models import plant_low_rank
from tests.metrics_tests._models import ResNet20
from tests.metrics_tests._models import small_cnn


class _FakeTrial:
    def __init__(self) -> None:
        self.user_attrs: dict[str, Any] = {}

    def set_user_attr(self, key: str, value: Any) -> None:
        self.user_attrs[key] = value


def _tracked_three_epochs() -> tuple[KnowledgeGainTracker, list[float]]:
    torch.manual_seed(0)
    model = small_cnn()
    tracker = KnowledgeGainTracker(model)
    returned = [tracker()]  # epoch 1: untrained, Z = 1
    plant_low_rank(conv_weight(model[2]), rank=2, seed=0)
    returned.append(tracker.update())  # epoch 2: conv2 has structure in both modes
    plant_low_rank(conv_weight(model[0]), rank=2, seed=1)
    returned.append(tracker())  # epoch 3: conv1 mode 4 too (its mode 3 is 1 x 144)
    return tracker, returned


def test_tracker_keeps_per_epoch_z_and_mean() -> None:
    tracker, returned = _tracked_three_epochs()
    assert returned == [1.0, 0.5, 0.25]
    assert tracker.z_per_epoch == returned
    assert tracker.z == pytest.approx(sum(returned) / 3)
    assert len(tracker.snapshots) == 3
    gains = tracker.layer_gains
    assert list(gains) == ["0.weight", "2.weight"]
    assert all(len(history) == 3 for history in gains.values())
    assert gains["2.weight"][0] == (0.0, 0.0)
    assert gains["2.weight"][1][0] > 0.0 and gains["2.weight"][1][1] > 0.0
    assert gains["0.weight"][2][0] == 0.0 and gains["0.weight"][2][1] > 0.0


def test_report_writes_the_three_keys() -> None:
    tracker, returned = _tracked_three_epochs()
    trial = _FakeTrial()
    tracker.report(trial)
    assert set(trial.user_attrs) == {
        KNOWLEDGE_GAIN_Z_KEY,
        KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY,
        KNOWLEDGE_GAIN_LAYERS_KEY,
    }
    z = trial.user_attrs[KNOWLEDGE_GAIN_Z_KEY]
    assert isinstance(z, float)
    assert z == pytest.approx(sum(returned) / 3)
    assert trial.user_attrs[KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY] == returned
    layers = trial.user_attrs[KNOWLEDGE_GAIN_LAYERS_KEY]
    last = tracker.snapshots[-1].layers
    assert layers == {
        "0": [round(last[0].gain3, 3), round(last[0].gain4, 3)],
        "2": [round(last[1].gain3, 3), round(last[1].gain4, 3)],
    }
    json.dumps(trial.user_attrs)  # storable


def test_report_to_an_optuna_trial() -> None:
    study = optuna.create_study()
    trial = study.ask()
    tracker, returned = _tracked_three_epochs()
    tracker.report(trial)
    study.tell(trial, tracker.z)
    stored = study.trials[0].user_attrs
    assert stored[KNOWLEDGE_GAIN_Z_KEY] == pytest.approx(sum(returned) / 3)
    assert stored[KNOWLEDGE_GAIN_Z_PER_EPOCH_KEY] == returned
    assert set(stored[KNOWLEDGE_GAIN_LAYERS_KEY]) == {"0", "2"}


def test_layers_summary_is_small_for_resnet20() -> None:
    torch.manual_seed(0)
    model = ResNet20()
    tracker = KnowledgeGainTracker(model)
    for epoch in range(5):
        for i, weight in enumerate(p for p in model.parameters() if p.ndim == 4):
            if i % 4 == epoch % 4:
                plant_low_rank(weight.data, rank=2, seed=10 * epoch + i)
        tracker()
    trial = _FakeTrial()
    tracker.report(trial)
    layers = trial.user_attrs[KNOWLEDGE_GAIN_LAYERS_KEY]
    assert len(layers) == 21  # 19 3x3 convolutions and 2 1x1 shortcuts
    assert len(json.dumps(layers)) < 2048
    assert len(json.dumps(trial.user_attrs)) < 2048 + 200


def test_matches_knowledge_gain_rank_options() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(16, 64, 1), nn.ReLU(), nn.Linear(5, 5))
    plant_low_rank(conv_weight(model[0]), rank=2, seed=0, strength=1.5)
    for kwargs in (
        {},
        {"tall_policy": "reference"},
        {"p": 2, "include_linear": True},
        {"rescale": False},
    ):
        tracker = KnowledgeGainTracker(model, **kwargs)
        assert tracker() == knowledge_gain_rank(model, **kwargs).z
        assert tracker.snapshots[0] == knowledge_gain_rank(model, **kwargs)


def test_nothing_tracked_yet() -> None:
    tracker = KnowledgeGainTracker(small_cnn())
    assert tracker.z_per_epoch == []
    assert tracker.layer_gains == {}
    with pytest.raises(ValueError, match="No epoch"):
        _ = tracker.z
    with pytest.raises(ValueError, match="No epoch"):
        tracker.report(_FakeTrial())


@pytest.mark.parametrize(
    "model,kwargs,match",
    [
        (nn.Linear(3, 4), {}, "no convolution"),
        (small_cnn(), {"p": 1.5}, "`p` is 1.5"),
        (small_cnn(), {"tall_policy": "transposed"}, "'transposed'"),
    ],
)
def test_invalid_arguments(model: nn.Module, kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        KnowledgeGainTracker(model, **kwargs)


def test_include_linear_allows_mlp() -> None:
    tracker = KnowledgeGainTracker(nn.Linear(3, 4), include_linear=True)
    assert tracker() == 1.0


def test_diverged_weights_raise_and_record_nothing() -> None:
    model = small_cnn()
    tracker = KnowledgeGainTracker(model)
    assert tracker() == 1.0
    with torch.no_grad():
        conv_weight(model[0]).fill_(float("nan"))
    with pytest.raises(ValueError, match="The model's weight `0.weight` holds NaN or infinite"):
        tracker()
    assert tracker.z_per_epoch == [1.0]  # the failed measurement left no epoch behind
