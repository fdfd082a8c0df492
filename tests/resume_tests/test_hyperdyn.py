"""HyperdynTuner killed with SIGKILL and restarted: the same rate per epoch, accuracy, weights.

Six epochs of the tiny classifier of ``tests/hyperdyn_tests/_toy.py`` (3 Random-Start
candidates, then a proposal and the incumbent per epoch), checkpoints in a file-system artifact
store. The tuner works by ask-and-tell, so its trials get no heartbeat: a resumed tuner tells the
candidates of a committed epoch from the epoch's record and fails those of the unfinished one
(then trains that epoch again), itself. Killed inside a candidate's training, right after a
candidate was told (between the epoch's commit and its last tell), and from outside at a random
moment.
"""

from __future__ import annotations

import functools
from pathlib import Path
import tempfile
from typing import Any

import optuna
from optuna.trial import FrozenTrial
from optuna.trial import TrialState
import pytest
import torch

from optuna_ext.hyperdyn._tuner import EPOCH_KEY_PREFIX
from tests.resume_tests import _harness
from tests.resume_tests import _workers


pytestmark = pytest.mark.slow
optuna.logging.set_verbosity(optuna.logging.ERROR)


@functools.cache
def reference() -> tuple[optuna.Study, dict[str, torch.Tensor]]:
    with tempfile.TemporaryDirectory() as tmp:
        study = _workers.hyperdyn(optuna.storages.InMemoryStorage(), Path(tmp))
        weights = torch.load(Path(tmp) / "final-weights.pt", weights_only=True)
    return study, weights


def plans(name: str) -> list[_harness.Plan]:
    rng = _harness.kill_rng("hyperdyn", name)
    epochs = _workers.HYPERDYN_EPOCHS
    train_epoch = rng.randrange(0, 3)
    train_slot = rng.randrange(3 if train_epoch == 0 else 2)
    tell_epoch = rng.randrange(train_epoch + 1, epochs - 1)
    # Random-Start trains 3 candidates in epoch 0, later epochs 2 (Hyperdyn's n_trained).
    return [
        _harness.Hook(f"train:{train_epoch}:{train_slot}"),
        _harness.Hook(f"tell:{tell_epoch}:0"),  # the first of the two: one is left RUNNING
        _harness.External(
            finished=rng.randint(3 + 2 * tell_epoch, 3 + 2 * (epochs - 2)),
            delay=rng.uniform(0, 0.1),
        ),
    ]


def records(study: optuna.Study) -> list[tuple[Any, ...]]:
    """Per epoch: the rate (and momentum) kept, its accuracy, the switch, the trend test's draw,
    and the role of the kept candidate."""
    attrs = study._storage.get_study_system_attrs(study._study_id)
    by_number = {t.number: t for t in study.trials}
    out = []
    for t in range(_workers.HYPERDYN_EPOCHS):
        r = attrs[f"{EPOCH_KEY_PREFIX}{t}"]
        kept = by_number[r["kept_trial"]]
        out.append(
            (r["params"], r["accuracy"], r["switched"], r["u"], kept.user_attrs["hyperdyn:role"])
        )
    return out


def candidates(trials: list[FrozenTrial]) -> list[tuple[Any, ...]]:
    """Every candidate that finished: its epoch, role, parameters, value and accuracy."""
    return [
        (
            t.user_attrs["hyperdyn:epoch"],
            t.user_attrs["hyperdyn:role"],
            t.params,
            t.value,
            t.user_attrs.get("hyperdyn:accuracy"),
            t.user_attrs.get("hyperdyn:kept"),
        )
        for t in trials
        if t.state == TrialState.COMPLETE
    ]


def test_hyperdyn_resumes_after_kills(storage: tuple[str, str], tmp_path: Path) -> None:
    name, url = storage
    ref, ref_weights = reference()
    artifacts = tmp_path / "artifacts"
    outcome = _harness.run_with_kills(
        ["hyperdyn", url, str(artifacts)],
        url,
        plans(name),
        tmp_path,
        consistent=None,
        heartbeat=False,
    )
    _harness.assert_no_finished_trial_lost(outcome)
    study = optuna.load_study(study_name=_workers.STUDY, storage=url)
    assert records(study) == records(ref)
    assert any(switched for _, _, switched, _, _ in records(ref)[1:])  # decisions vary
    assert candidates(outcome.trials) == candidates(ref.trials)
    weights = torch.load(artifacts / "final-weights.pt", weights_only=True)
    assert weights.keys() == ref_weights.keys()
    for key, value in ref_weights.items():
        assert torch.equal(weights[key], value), key
    # What each kill left RUNNING ended as the epoch's commit says: told if the epoch had
    # been committed, failed (and the epoch trained again) if not.
    final = {t.number: t for t in outcome.trials}
    assert outcome.kills[0].running and outcome.kills[1].running
    for kill in outcome.kills:
        committed = {
            int(k[len(EPOCH_KEY_PREFIX) :])
            for k in kill.study_system_attrs
            if k.startswith(EPOCH_KEY_PREFIX)
        }
        for t in kill.running:
            expected = (
                TrialState.COMPLETE
                if t.user_attrs["hyperdyn:epoch"] in committed
                else TrialState.FAIL
            )
            assert final[t.number].state == expected, (kill.plan, t.number)
    # The kill after a tell hit a committed epoch: its other candidate was told, not failed.
    assert any(final[t.number].state == TrialState.COMPLETE for t in outcome.kills[1].running)
