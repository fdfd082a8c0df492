"""The problems every method of the comparison is run on (the benchmark definitions).

A :class:`Problem` is a data set, a model, a search space, a hand-tuned baseline configuration,
a target validation accuracy and one :class:`Budget` per budget level (``tiny``, ``small``,
``full``). Every method gets the same problem and the same budget; see ``benchmarks/README.md``.

Add a problem with :func:`register_problem`::

    register_problem(
        Problem(
            name="digits_vgg",
            description="scikit-learn's 8x8 digits, SmallVGG",
            model="vgg",
            load=load_digits,
            ...,
        )
    )
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Mapping
import dataclasses
import functools
import math
from typing import Any
from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution


if TYPE_CHECKING:
    import optuna
    from torch import nn

    from optuna_ext.tasks import DatasetSplit


BUDGET_NAMES = ("tiny", "small", "full")
"""The budget levels: ``tiny`` (seconds per run: tests, CI notebooks), ``small`` (a quick
look), ``full`` (the documented comparison)."""


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much one run (one method, problem and seed) may train.

    Args:
        epochs:
            ``E``, the epochs of one full training run: the length of every search trial, of
            the final training of a chosen configuration and of an online method's run.
        runs:
            The budget in full runs: a run may train ``runs * epochs`` epochs in all, counted
            the same way for every method (one pass over the training set is one epoch,
            whichever model, trial, candidate or population member it trains).
        first_rung:
            The first rung (epochs) of successive halving, Hyperband and MORL (``eta = 3``).
        population:
            The population of PBT and PB2.
        search_epochs:
            The epochs of one autoHyper search trial (the paper's 5 at the full budget).
        random_start:
            Hyperdyn's Random-Start candidates (the paper's 5 at the full budget).
        pbt_interval:
            The epochs of one PBT generation (between two exploit/explore steps): PBT and
            PB2 train ``runs * epochs // (population * pbt_interval)`` generations.
    """

    epochs: int
    runs: int
    first_rung: int
    population: int
    search_epochs: int
    random_start: int
    pbt_interval: int = 1

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"The value of `{field.name}` is {value!r}, but must be an int "
                    f"`{field.name} >= 1`."
                )
        if self.first_rung > self.epochs:
            raise ValueError(
                f"The value of `first_rung` is {self.first_rung}, but must be "
                f"`first_rung <= epochs` ({self.epochs})."
            )
        if self.population < 2 or self.population * self.pbt_interval > self.total:
            raise ValueError(
                f"The values of `population` and `pbt_interval` are {self.population} and "
                f"{self.pbt_interval}, but must be `population >= 2` with "
                f"`population * pbt_interval <= runs * epochs` ({self.total})."
            )

    @property
    def generations(self) -> int:
        """The generations of PBT and PB2 (the whole budget)."""
        return self.total // (self.population * self.pbt_interval)

    @property
    def total(self) -> int:
        """The epochs one run may train in all, ``runs * epochs``."""
        return self.runs * self.epochs

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Problem:
    """A data set and model with everything a method needs to be compared on it.

    Args:
        name:
            The registry key, used in study names (letters, digits and ``_``).
        description:
            One line for tables and ``python -m benchmarks list``.
        model:
            A name of :func:`optuna_ext.tasks.build_model`.
        load:
            Returns the data (called once per process; the split is the same for every seed).
        space:
            The search space of SGD's hyper-parameters: ``lr``, ``momentum`` and
            ``weight_decay`` (what the search methods tune; the online methods tune what
            they can of it).
        grid:
            The values of grid search, a subset of ``space``.
        baseline:
            The hand-tuned configuration (also the values of the hyper-parameters that a
            method does not tune, e.g. momentum and weight decay for autoHyper).
        batch_size:
            The training batch size of every method.
        target:
            The validation accuracy whose first reaching gives "epochs and time to target".
        budgets:
            One :class:`Budget` per name of :data:`BUDGET_NAMES`.
        model_kwargs:
            Further arguments of :func:`optuna_ext.tasks.build_model` (e.g. ``width``).
    """

    name: str
    description: str
    model: str
    load: Callable[[], DatasetSplit]
    space: Mapping[str, FloatDistribution]
    grid: Mapping[str, tuple[float, ...]]
    baseline: Mapping[str, float]
    batch_size: int
    target: float
    budgets: Mapping[str, Budget]
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name.replace("_", "").isalnum():
            raise ValueError(
                f"The value of `name` is {self.name!r}, but must hold only letters, digits "
                "and '_' (it is part of study names)."
            )
        if sorted(self.budgets) != sorted(BUDGET_NAMES):
            raise ValueError(
                f"The budgets of problem {self.name!r} are {sorted(self.budgets)}, but must be "
                f"exactly {list(BUDGET_NAMES)}."
            )
        if not 0.0 < self.target <= 1.0:
            raise ValueError(
                f"The value of `target` is {self.target}, but must be `0 < target <= 1`."
            )
        for label, config in (("baseline", self.baseline), ("grid", self.grid)):
            if set(config) != set(self.space):
                raise ValueError(
                    f"The {label} of problem {self.name!r} sets {sorted(config)}, but must set "
                    f"exactly the parameters of the space {sorted(self.space)}."
                )
        for name, distribution in self.space.items():
            values = list(self.grid[name]) + [self.baseline[name]]
            for value in values:
                if not distribution.low <= value <= distribution.high:
                    raise ValueError(
                        f"The value {value} of `{name}` (grid or baseline of problem "
                        f"{self.name!r}) is outside the search space [{distribution.low}, "
                        f"{distribution.high}]."
                    )

    def budget(self, name: str) -> Budget:
        """The budget of level ``name`` (one of :data:`BUDGET_NAMES`)."""
        if name not in self.budgets:
            raise ValueError(
                f"The value of `budget` is {name!r}, but must be one of {list(BUDGET_NAMES)}."
            )
        return self.budgets[name]

    @property
    def data(self) -> DatasetSplit:
        """The data, loaded once per process."""
        return _load(self.name)

    @property
    def has_conv(self) -> bool:
        """Whether the model has convolution layers (what autoHyper's rank measure needs)."""
        return not self.model.startswith("mlp-")

    def build_model(self, seed: int) -> nn.Module:
        """A fresh model, its initial weights drawn from ``seed``."""
        from optuna_ext.tasks import build_model

        return build_model(self.model, data=self.data, seed=seed, **self.model_kwargs)

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, float]:
        """Suggest every parameter of the space from ``trial``."""
        return {
            name: trial.suggest_float(name, d.low, d.high, log=d.log)
            for name, d in self.space.items()
        }

    def config(self, **overrides: float) -> dict[str, float]:
        """The baseline configuration with some values replaced."""
        unknown = sorted(set(overrides) - set(self.space))
        if unknown:
            raise ValueError(
                f"The parameters {unknown} are not in the space of problem {self.name!r} "
                f"({sorted(self.space)})."
            )
        return {**self.baseline, **overrides}

    @property
    def grid_size(self) -> int:
        return math.prod(len(v) for v in self.grid.values())


PROBLEMS: dict[str, Problem] = {}
"""Every problem, by name, in the order they were registered."""


def register_problem(problem: Problem) -> Problem:
    """Add ``problem`` to :data:`PROBLEMS` (its name must be new)."""
    if problem.name in PROBLEMS:
        raise ValueError(f"A problem named {problem.name!r} is already registered.")
    PROBLEMS[problem.name] = problem
    return problem


@functools.cache
def _load(name: str) -> DatasetSplit:
    return PROBLEMS[name].load()


# --------------------------------------------------------------------------------------------
# The registered problems.

SGD_SPACE = {
    "lr": FloatDistribution(1e-3, 1.0, log=True),
    "momentum": FloatDistribution(0.0, 0.99),
    "weight_decay": FloatDistribution(1e-6, 1e-2, log=True),
}
"""SGD's learning rate, momentum and weight decay (the space of ``bench_pbt`` and the demo)."""

_GRID = {"lr": (0.01, 0.03, 0.1, 0.3), "momentum": (0.5, 0.9), "weight_decay": (1e-5, 1e-3)}

_TINY = Budget(epochs=2, runs=3, first_rung=1, population=2, search_epochs=1, random_start=2)
_SMALL = Budget(epochs=6, runs=6, first_rung=2, population=4, search_epochs=2, random_start=3)
_FULL = Budget(
    epochs=18, runs=16, first_rung=2, population=8, search_epochs=5, random_start=5, pbt_interval=3
)
"""18-epoch runs, 16 of them (288 epochs) per method; rungs at 2, 6 and 18 epochs; PBT: 8
members, 12 generations of 3 epochs."""

_FULL_RESNET = Budget(
    epochs=9, runs=8, first_rung=1, population=8, search_epochs=3, random_start=5
)
"""ResNet-20 costs about 9x the small CNN per epoch: 9-epoch runs, 8 of them; rungs 1, 3, 9."""


def _digits() -> DatasetSplit:
    from optuna_ext.tasks import load_digits

    return load_digits()


def _teacher(teacher: str) -> Callable[[], DatasetSplit]:
    """Paper 004's data set of ``teacher``: 12,000 points, 2,000 for validation, 2,000 for test."""

    def load() -> DatasetSplit:
        from optuna_ext.tasks import make_teacher_data

        return make_teacher_data(
            teacher=teacher, n_samples=12_000, valid_fraction=1 / 6, test_fraction=1 / 6, seed=0
        )

    return load


_BUDGETS = {"tiny": _TINY, "small": _SMALL, "full": _FULL}

register_problem(
    Problem(
        name="digits_cnn",
        description="scikit-learn's 8x8 digits (1079/359/359), the small CNN",
        model="cnn",
        load=_digits,
        space=SGD_SPACE,
        grid=_GRID,
        baseline={"lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
        batch_size=64,
        target=0.97,
        budgets=_BUDGETS,
    )
)
register_problem(
    Problem(
        name="digits_resnet20",
        description="scikit-learn's 8x8 digits, ResNet-20 (width 16)",
        model="resnet20",
        load=_digits,
        space=SGD_SPACE,
        grid={"lr": (0.01, 0.03, 0.1, 0.3), "momentum": (0.9,), "weight_decay": (1e-4, 1e-3)},
        baseline={"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4},
        batch_size=64,
        target=0.97,
        budgets={**_BUDGETS, "full": _FULL_RESNET},
    )
)
for _name, _teacher_name, _model, _target, _description in (
    ("linear", "linear", "mlp-2-1", 0.99, "linear teacher, logistic regression (2-1)"),
    ("teacher_2_3_1", "2-3-1", "mlp-2-3-1", 0.98, "2-3-1 teacher, the 2-3-1 network"),
    ("teacher_2_5_5_1", "2-5-5-1", "mlp-2-5-5-1", 0.97, "2-5-5-1 teacher, the 2-5-5-1 network"),
):
    register_problem(
        Problem(
            name=_name,
            description=f"paper 004: {_description}; 12,000 points (8000/2000/2000)",
            model=_model,
            load=_teacher(_teacher_name),
            space=SGD_SPACE,
            grid=_GRID,
            baseline={"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
            batch_size=128,
            target=_target,
            budgets=_BUDGETS,
        )
    )
