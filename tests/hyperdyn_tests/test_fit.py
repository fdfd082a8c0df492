"""fit_hyperdyn and make_task_functions: bad arguments are refused before any training."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from optuna_ext.hyperdyn import fit_hyperdyn
from optuna_ext.hyperdyn import make_task_functions
from optuna_ext.samplers import HyperdynSampler
from optuna_ext.tasks import build_model
from optuna_ext.tasks import make_teacher_data


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"optimizer": "nadam"}, "nadam"),
        # Hyperdyn sets the rate per epoch; hypergradient descent would move it within.
        ({"optimizer": "sgd_hd"}, "`optimizer` is 'sgd_hd', but Hyperdyn needs"),
        ({"optimizer": "adam_hd"}, "`optimizer` is 'adam_hd', but Hyperdyn needs"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "`epochs` is 0"),
        ({"window": 0}, "`window`"),
        ({"n_random_start": 0}, "`n_random_start`"),
        ({"max_switch_drop": -1.0}, "`max_switch_drop`"),
    ],
)
def test_bad_arguments_raise_before_any_trial(kwargs: dict[str, Any], match: str) -> None:
    data = make_teacher_data(n_samples=60)
    study = optuna.create_study(direction="maximize", sampler=HyperdynSampler(seed=0))
    with pytest.raises(ValueError, match=match):
        fit_hyperdyn(build_model("mlp-2-3-1", data=data), data, study=study, **kwargs)
    assert study.trials == []


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_make_task_functions_checks_the_batch_size(batch_size: Any) -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_task_functions(make_teacher_data(n_samples=60), batch_size=batch_size)
