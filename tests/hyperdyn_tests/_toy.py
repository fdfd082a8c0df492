"""A tiny task for the tuner tests, also runnable as a script for the restart test.

``python -m tests.hyperdyn_tests._toy --storage URL --artifacts DIR --epochs N --out FILE``
runs (or resumes) a Hyperdyn run of a linear classifier and saves its final weights and chosen
hyper-parameters to ``FILE``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
import math
from typing import Any

import optuna
from optuna.artifacts import FileSystemArtifactStore
import torch
from torch import nn

from optuna_ext.hyperdyn import HyperdynTuner
from optuna_ext.samplers._hyperdyn import HyperdynSampler


N_TRAIN = 96
N_VALID = 64
BATCH = 16


def _data() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(123)
    w = torch.randn(4, generator=g)
    x = torch.randn(N_TRAIN + N_VALID, 4, generator=g)
    y = (x @ w + 0.3 * torch.randn(N_TRAIN + N_VALID, generator=g) > 0).long()
    return x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]


X_TRAIN, Y_TRAIN, X_VALID, Y_VALID = _data()


def make_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 2))


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.5)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int) -> float:
    order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(1000 + epoch))
    total = 0.0
    for i in range(0, N_TRAIN, BATCH):
        idx = order[i : i + BATCH]
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(X_TRAIN[idx]), Y_TRAIN[idx])
        loss.backward()
        optimizer.step()
        total += loss.item()
    return total


def evaluate(model: nn.Module) -> float:
    with torch.no_grad():
        return (model(X_VALID).argmax(1) == Y_VALID).float().mean().item()


def cheap_sampler(seed: int = 0) -> HyperdynSampler:
    return HyperdynSampler(
        seed=seed, n_startup_trials=3, n_candidates=32, n_local_search=1, n_gp_starts=1
    )


def make_tuner(
    study: optuna.Study,
    store: Any,
    model: nn.Module | None = None,
    *,
    train: Callable[[nn.Module, torch.optim.Optimizer, int], object] = train_epoch,
    evaluate_fn: Callable[[nn.Module], float] = evaluate,
    **kwargs: Any,
) -> tuple[HyperdynTuner, nn.Module, torch.optim.Optimizer]:
    model = make_model() if model is None else model
    optimizer = make_optimizer(model)
    settings: dict[str, Any] = dict(n_random_start=3, seed=0, plot=False)
    settings.update(kwargs)
    tuner = HyperdynTuner(
        study=study,
        model=model,
        optimizer=optimizer,
        train_epoch=train,
        evaluate=evaluate_fn,
        artifact_store=store,
        **settings,
    )
    return tuner, model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--storage", required=True)
    parser.add_argument("--artifacts", required=True)
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name="toy",
        storage=args.storage,
        direction="maximize",
        sampler=cheap_sampler(),
        load_if_exists=True,
    )
    tuner, model, _ = make_tuner(study, FileSystemArtifactStore(args.artifacts))
    result = tuner.run(epochs=args.epochs)
    torch.save(
        {
            "weights": model.state_dict(),
            "params": [[p[k] for k in sorted(p)] for p in result.params],
            "accuracy": result.accuracy,
            "switched": [float(s) for s in result.switched],
        },
        args.out,
    )
    assert all(math.isfinite(a) for a in result.accuracy)


if __name__ == "__main__":
    main()
