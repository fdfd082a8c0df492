from __future__ import annotations

import dataclasses

import pytest

from benchmarks.__main__ import parse_seeds
from benchmarks.methods import METHODS
from benchmarks.methods import register
from benchmarks.problems import Budget
from benchmarks.problems import BUDGET_NAMES
from benchmarks.problems import Problem
from benchmarks.problems import PROBLEMS
from benchmarks.problems import register_problem
from benchmarks.runner import BenchmarkError
from benchmarks.runner import make_jobs


ISSUE_METHODS = {
    "grid",
    "random",
    "tpe",
    "gp",
    "sha",
    "hyperband",
    "morl",
    "morl_tpe",
    "autohyper",
    "lr_range_test",
    "hyperdyn",
    "sgd_hd",
    "adam_hd",
    "pbt",
    "pb2",
}
ISSUE_PROBLEMS = {"digits_cnn", "digits_resnet20", "linear", "teacher_2_3_1", "teacher_2_5_5_1"}


def test_every_method_and_problem_of_the_issue_is_registered() -> None:
    assert ISSUE_METHODS <= set(METHODS)
    assert set(METHODS) - ISSUE_METHODS == {"baseline"}
    assert set(PROBLEMS) == ISSUE_PROBLEMS


@pytest.mark.parametrize("name", list(PROBLEMS))
def test_problems_are_consistent(name: str) -> None:
    problem = PROBLEMS[name]
    assert problem.name == name
    assert set(problem.budgets) == set(BUDGET_NAMES)
    for budget in problem.budgets.values():
        assert budget.total == budget.runs * budget.epochs
        assert budget.total // budget.population >= 1
    # Budgets grow from tiny to full.
    totals = [problem.budget(b).total for b in BUDGET_NAMES]
    assert totals == sorted(totals) and totals[0] < totals[-1]
    assert set(problem.grid) == set(problem.space) == set(problem.baseline)
    assert problem.grid_size >= 2
    # The model fits its data.
    model = problem.build_model(0)
    inputs, _ = problem.data.train.tensors
    assert model(inputs[:3]).shape[0] == 3


@pytest.mark.parametrize("name", list(METHODS))
def test_methods_are_consistent(name: str) -> None:
    method = METHODS[name]
    assert method.name == name and method.label
    for problem in PROBLEMS.values():
        n = method.tunes(problem)
        assert 0 <= n <= len(problem.space)
    # Online methods restart from scratch when taken over (their state is not in the storage).
    if method.online:
        assert not method.resumable


def test_autohyper_is_left_out_where_there_is_no_convolution() -> None:
    jobs = make_jobs(["autohyper", "random"], list(PROBLEMS), [0])
    pairs = {(j.method, j.problem) for j in jobs}
    assert ("autohyper", "digits_cnn") in pairs
    assert ("autohyper", "digits_resnet20") in pairs
    assert ("autohyper", "linear") not in pairs
    assert all(("random", p) in pairs for p in PROBLEMS)


def test_jobs_are_named_by_problem_method_and_seed() -> None:
    jobs = make_jobs(["tpe"], ["linear"], [0, 2])
    assert [j.study_name() for j in jobs] == ["bench/linear/tpe/seed0", "bench/linear/tpe/seed2"]
    assert jobs[0].study_name("other") == "other/linear/tpe/seed0"


@pytest.mark.parametrize(
    ("methods", "problems", "seeds", "match"),
    [
        (["nope"], ["linear"], [0], "Unknown method"),
        (["tpe"], ["nope"], [0], "Unknown problem"),
        (["tpe"], ["linear"], [-1], "seeds"),
        (["tpe"], ["linear"], [], "seeds"),
    ],
)
def test_make_jobs_rejects_bad_selections(
    methods: list[str], problems: list[str], seeds: list[int], match: str
) -> None:
    with pytest.raises(BenchmarkError, match=match):
        make_jobs(methods, problems, seeds)


def test_parse_seeds() -> None:
    assert parse_seeds("0,1,2") == [0, 1, 2]
    assert parse_seeds("0-2,5") == [0, 1, 2, 5]
    with pytest.raises(BenchmarkError, match="seeds"):
        parse_seeds("a")


def test_budget_validation_names_the_value() -> None:
    with pytest.raises(ValueError, match="`epochs` is 0"):
        Budget(epochs=0, runs=1, first_rung=1, population=2, search_epochs=1, random_start=1)
    with pytest.raises(ValueError, match="`first_rung` is 5"):
        Budget(epochs=2, runs=3, first_rung=5, population=2, search_epochs=1, random_start=1)
    with pytest.raises(ValueError, match="`pbt_interval` are 9 and 1"):
        Budget(epochs=2, runs=3, first_rung=1, population=9, search_epochs=1, random_start=1)


def test_problem_validation_names_the_value() -> None:
    linear = PROBLEMS["linear"]
    with pytest.raises(ValueError, match="outside the search space"):
        dataclasses.replace(linear, baseline={**linear.baseline, "lr": 5.0})
    with pytest.raises(ValueError, match="must set exactly"):
        dataclasses.replace(linear, grid={"lr": (0.1,)})
    with pytest.raises(ValueError, match="letters, digits"):
        dataclasses.replace(linear, name="a/b")
    with pytest.raises(ValueError, match="already registered"):
        register_problem(linear)
    with pytest.raises(ValueError, match="already registered"):
        register("tpe", "again")
    assert isinstance(linear, Problem)
