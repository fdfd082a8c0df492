from __future__ import annotations

from collections.abc import Sequence
import copy
import logging
import math
from typing import Any
from typing import TYPE_CHECKING
import zlib

import numpy as np
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.samplers import BaseSampler
from optuna.samplers._lazy_random_state import LazyRandomState
from optuna.study import StudyDirection
from optuna.trial import create_trial
from optuna.trial import TrialState

from optuna_ext.samplers._pbt import _explore
from optuna_ext.samplers._pbt import _pb2
from optuna_ext.samplers._pbt._population import ACTION_CONTINUE
from optuna_ext.samplers._pbt._population import ACTION_EXPLOIT
from optuna_ext.samplers._pbt._population import ACTION_RETRY
from optuna_ext.samplers._pbt._population import ACTION_START
from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import DUPLICATE_KEY
from optuna_ext.samplers._pbt._population import FAILED_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import INTERRUPTED_KEY
from optuna_ext.samplers._pbt._population import is_member_trial
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from optuna_ext.samplers._pbt._population import Population
from optuna_ext.samplers._pbt._population import should_yield
from optuna_ext.samplers._pbt._population import signed
from optuna_ext.samplers._pbt._population import SURPLUS_KEY
from optuna_ext.samplers._pbt._population import USER_ACTION
from optuna_ext.samplers._pbt._population import USER_CLONED_MEMBER
from optuna_ext.samplers._pbt._population import USER_EXPLORE
from optuna_ext.samplers._pbt._population import USER_GENERATION
from optuna_ext.samplers._pbt._population import USER_MEMBER
from optuna_ext.samplers._pbt._population import USER_PARENT
from optuna_ext.samplers._storage_seeded import StorageSeededRandomSampler


if TYPE_CHECKING:
    from optuna.distributions import BaseDistribution
    from optuna.study import Study
    from optuna.trial import FrozenTrial


_logger = logging.getLogger(__name__)

Decision = dict[str, Any]


def _spec(distribution: BaseDistribution) -> _explore.ParamSpec | None:
    """The pure spec of an Optuna distribution, or :obj:`None` for an unknown kind."""
    if isinstance(distribution, FloatDistribution):
        return _explore.NumericSpec(
            low=distribution.low,
            high=distribution.high,
            log=distribution.log,
            step=distribution.step,
        )
    if isinstance(distribution, IntDistribution):
        return _explore.NumericSpec(
            low=distribution.low,
            high=distribution.high,
            log=distribution.log,
            step=distribution.step,
            is_int=True,
        )
    if isinstance(distribution, CategoricalDistribution):
        return _explore.CategoricalSpec(tuple(distribution.choices))
    return None


def _check_probability(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
        raise ValueError(f"The value of `{name}` is {value}, but must be `0 <= {name} <= 1`.")


class PBTSampler(BaseSampler):
    """Population-based training (PBT), and optionally PB2, as an Optuna sampler.

    Jaderberg et al., "Population Based Training of Neural Networks", arXiv 1711.09846 (2017);
    Parker-Holder et al., "Provably Efficient Online Hyperparameter Optimization with
    Population-Based Bandits", NeurIPS 2020 (``pb2=True``). The exploit/explore rules and the
    quantile arithmetic follow Ray Tune's ``PopulationBasedTraining`` and ``PB2``; the
    differences are listed in :mod:`optuna_ext.samplers._pbt._explore` and
    :mod:`optuna_ext.samplers._pbt._pb2`.

    One trial is one member's training segment. Its generation and member are in the trial's
    system attrs ``"PBTSampler:generation"`` and ``"PBTSampler:member"``; its decision in
    ``"PBTSampler:decision"``; and its lineage, readable in optuna-dashboard, in the user attrs
    ``pbt:generation``, ``pbt:member``, ``pbt:parent`` (the trial number whose checkpoint the
    segment starts from), ``pbt:action`` (``start``, ``continue``, ``exploit`` or ``retry``),
    ``pbt:cloned_member`` and ``pbt:explore`` (per parameter: ``kept``, ``multiplied by 1.2``,
    ``multiplied by 0.8``, ``resampled``, ``shifted +1``/``-1``, ``proposed by GP-UCB``, with
    ``(clipped)`` when a product was clipped to the distribution). The population is rebuilt
    from the trials on every decision; nothing else is stored.

    **Exploit and explore.** When generation ``g`` has finished, the members are ranked by
    score; the bottom ``quantile_fraction`` (Ray's ``ceil(n * q)``, capped at ``n // 2``)
    each take the parameters and checkpoint of a uniformly chosen member of the top quantile
    and explore them: each parameter is resampled from its distribution with probability
    ``resample_probability``, else multiplied by a uniform choice of ``perturbation_factors``
    (categoricals move to a neighbouring choice); values are clipped to the distribution and
    integers stay integers. The other members continue from their own checkpoint with their
    own parameters. A member whose segment failed (raised, returned NaN, was pruned) is
    replaced like a bottom member (by the best member when the top quantile is empty); when
    every member of a generation failed, each retries its segment. With
    ``quantile_fraction=0`` no member is exploited (Ray would checkpoint every member and
    exploit none: the same outcome).

    **Synchronous and asynchronous generations.** With ``synchronous=True`` generation
    ``g + 1`` starts when every member of generation ``g`` has finished, so all members are
    ranked on the same amount of training. With ``synchronous=False`` member ``m`` moves to
    generation ``g + 1`` as soon as its own segment of generation ``g`` and those of at least
    ``max(2, ceil(population_size / 2))`` members of generation ``g`` have finished, and it is
    ranked against the members that have reported generation ``g`` so far (Ray's default
    asynchronous PBT ranks against each member's latest score instead). Members never get
    more than one generation ahead of half the population.

    **PB2.** With ``pb2=True`` the explore step of an exploiting member proposes its numeric
    parameters by GP-UCB over (time, score before the segment, parameters), fitted on every
    finished segment of the study, with the proposals already made for the same generation
    as pending points (categoricals are explored as in PBT). Until two segments with a parent
    have finished, it resamples instead. Numeric parameters enter the GP mapped to ``[0, 1]``
    over their distribution, on the log scale for a log distribution (Ray's PB2 maps bounds
    linearly). With few segments whose gains are within their noise, GP-UCB's variance term
    dominates and the proposals go to the bounds of the distributions; a member sent to the
    lowest learning rate then hardly changes its score (the top member's that it cloned),
    so it tends to stay among the best (measured in
    ``benchmarks/results/pb2_lower_bound_notes.md``).

    **With the harness or alone.** :func:`optuna_ext.pbt.run` materializes each generation's
    slots as WAITING trials, claims them atomically, loads and saves checkpoints and handles
    crashed workers; use it for real training and for several workers. Under a plain
    ``study.optimize`` the sampler still works: each new trial takes the first free slot of
    the population (the decision is made then, from the trials, and stored in the trial).
    This is not atomic: when two processes take the same slot, one or both give it up and
    become *surplus* trials, marked ``"PBTSampler:surplus"``, sampled by the independent
    sampler and ignored by the population; so is a trial that finds every slot taken (a
    synchronous generation still running). While other member trials are running, a new
    trial takes a free slot at random rather than the first, so that workers asking at the
    same time rarely collide. Without checkpoints an exploit copies only the
    hyper-parameters; the objective may load ``pbt:parent``'s state itself.

    Parameters: the first generation, and any parameter that its parent did not have, are
    sampled from the distribution (seeded per slot, so that several workers draw the same
    population), or by ``independent_sampler`` when one is given. A planned value that lies
    outside the distribution suggested later (the search space changed) is resampled.

    Example:

        .. testcode::

            import optuna
            from optuna_ext.samplers import PBTSampler


            def objective(trial):
                lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
                return -((lr - 0.01) ** 2)


            sampler = PBTSampler(population_size=4, seed=0)
            study = optuna.create_study(sampler=sampler, direction="maximize")
            study.optimize(objective, n_trials=12)
            assert study.trials[-1].system_attrs["PBTSampler:generation"] == 2

    Args:
        population_size:
            The number of members, ``>= 2``.
        quantile_fraction:
            The share of members in each of the bottom and top quantiles, in ``[0, 0.5]``.
        resample_probability:
            The probability that explore resamples a parameter instead of perturbing it, in
            ``[0, 1]`` (numeric parameters ignore it with ``pb2=True``, as in Ray's PB2).
        perturbation_factors:
            The factors explore multiplies a numeric parameter by (one chosen uniformly), each
            finite and ``> 0``.
        synchronous:
            Whether a generation waits until the previous one has finished (see above).
        pb2:
            Whether the explore step proposes by GP-UCB, as PB2 does.
        seed:
            The seed of the decisions and of the first generation's parameters.
        independent_sampler:
            The sampler for the first generation, for parameters without a plan and for
            trials that are not members. Defaults to seeded sampling per slot (members) and
            a :class:`~optuna_ext.samplers.StorageSeededRandomSampler` with ``seed`` (other
            trials), so that a restart draws what an uninterrupted run would have.
    """

    def __init__(
        self,
        *,
        population_size: int = 8,
        quantile_fraction: float = 0.25,
        resample_probability: float = 0.25,
        perturbation_factors: Sequence[float] = (1.2, 0.8),
        synchronous: bool = True,
        pb2: bool = False,
        seed: int | None = None,
        independent_sampler: BaseSampler | None = None,
    ) -> None:
        if (
            isinstance(population_size, bool)
            or not isinstance(population_size, int)
            or population_size < 2
        ):
            raise ValueError(
                f"The value of `population_size` is {population_size}, but must be an integer "
                "`population_size >= 2`."
            )
        if not (isinstance(quantile_fraction, (int, float)) and 0.0 <= quantile_fraction <= 0.5):
            raise ValueError(
                f"The value of `quantile_fraction` is {quantile_fraction}, but must be "
                "`0 <= quantile_fraction <= 0.5`."
            )
        _check_probability("resample_probability", resample_probability)
        factors = tuple(perturbation_factors)
        if len(factors) == 0:
            raise ValueError(
                "The value of `perturbation_factors` is empty, but must hold at least one factor."
            )
        for f in factors:
            if (
                isinstance(f, bool)
                or not isinstance(f, (int, float))
                or not (math.isfinite(f) and f > 0)
            ):
                raise ValueError(
                    f"The value of `perturbation_factors` is {perturbation_factors}, but every "
                    "factor must be finite and `> 0`."
                )
        self._population_size = population_size
        self._quantile_fraction = float(quantile_fraction)
        self._resample_probability = float(resample_probability)
        self._perturbation_factors = tuple(float(f) for f in factors)
        self._synchronous = bool(synchronous)
        self._pb2 = bool(pb2)
        self._seed = seed
        self._rng = LazyRandomState(seed)
        self._custom_independent = independent_sampler is not None
        self._independent_sampler = independent_sampler or StorageSeededRandomSampler(seed=seed)

    @property
    def population_size(self) -> int:
        """The number of members."""
        return self._population_size

    @property
    def synchronous(self) -> bool:
        """Whether generations are synchronous."""
        return self._synchronous

    @property
    def async_min_reports(self) -> int:
        """In asynchronous mode, how many members of a generation must have finished it."""
        return max(2, math.ceil(self._population_size / 2))

    def reseed_rng(self) -> None:
        self._rng.rng.seed()
        self._independent_sampler.reseed_rng()

    # ---------------------------------------------------------------------------------------
    # BaseSampler interface.

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        self._raise_error_if_multi_objective(study)
        return {}

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        self._raise_error_if_multi_objective(study)
        attrs = trial.system_attrs
        spec = _spec(param_distribution)
        if (
            GENERATION_KEY not in attrs
            or SURPLUS_KEY in attrs
            or DUPLICATE_KEY in attrs
            or spec is None
        ):
            return self._independent_sampler.sample_independent(
                study, trial, param_name, param_distribution
            )
        planned = (attrs.get(DECISION_KEY) or {}).get("params", {})
        if param_name in planned and _explore.contains(planned[param_name], spec):
            return planned[param_name]
        if self._custom_independent:
            return self._independent_sampler.sample_independent(
                study, trial, param_name, param_distribution
            )
        g, m = int(attrs[GENERATION_KEY]), int(attrs[MEMBER_KEY])
        return _explore.sample(spec, self._slot_rng(g, m, param_name))

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        if study._is_multi_objective():
            return
        trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
        if GENERATION_KEY in trial.system_attrs:
            # A materialized slot (popped WAITING trial): give it up if the slot is taken.
            if DUPLICATE_KEY not in trial.system_attrs:
                population = Population(trials, self._population_size)
                current = population.by_number.get(trial.number, trial)
                if should_yield(population, current):
                    self._mark_duplicate(study, trial._trial_id)
            return
        self._claim(study, trial, trials)

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        if state not in (TrialState.FAIL, TrialState.PRUNED):
            return
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if (
            GENERATION_KEY in attrs
            and DUPLICATE_KEY not in attrs
            and SURPLUS_KEY not in attrs
            and INTERRUPTED_KEY not in attrs
        ):
            study._storage.set_trial_system_attr(trial._trial_id, FAILED_KEY, True)

    # ---------------------------------------------------------------------------------------
    # Slots.

    def _slot_rng(self, generation: int, member: int, salt: str = "") -> np.random.RandomState:
        if self._seed is None:
            return self._rng.rng
        entropy = [int(self._seed) & 0xFFFFFFFF, generation, member, zlib.crc32(salt.encode())]
        return np.random.RandomState(np.random.SeedSequence(entropy).generate_state(4))

    def _openable(
        self, population: Population, n_generations: int | None
    ) -> list[tuple[int, int]]:
        """The slots that should have a trial now but have none live, finished or planned."""
        n = self._population_size

        def allowed(g: int) -> bool:
            return n_generations is None or g < n_generations

        result: list[tuple[int, int]] = []
        if self._synchronous:
            g = population.latest_generation
            if g < 0:
                return [(0, m) for m in range(n)] if allowed(0) else []
            result = [(g, s.member) for s in population.generation(g) if s.lost]
            if not result and population.is_finished(g) and allowed(g + 1):
                result = [(g + 1, m) for m in range(n)]
            return result
        for m in range(n):
            g = population.member_generation(m)
            if g < 0:
                if allowed(0):
                    result.append((0, m))
                continue
            slot = population.slot(g, m)
            if slot.lost:
                result.append((g, m))
            elif (
                slot.finished
                and population.n_finished(g) >= self.async_min_reports
                and allowed(g + 1)
            ):
                result.append((g + 1, m))
        return sorted(result)

    def _decide(
        self,
        population: Population,
        generation: int,
        member: int,
        maximize: bool,
        pending: list[Decision],
    ) -> Decision:
        """The decision for a slot: reuse a lost slot's, or make one from the generation before."""
        previous = population.slot(generation, member).decision
        if previous is not None:
            return copy.deepcopy(previous)
        if generation == 0:
            return {"action": ACTION_START, "parent": None, "clone_member": None}
        rng = self._slot_rng(generation, member)
        before = population.generation(generation - 1)
        done = [s for s in before if s.complete is not None]
        own = population.slot(generation - 1, member)
        scores = [signed(float(s.complete.value), maximize) for s in done]  # type: ignore[union-attr, arg-type]
        lower, upper = _explore.quantiles(scores, self._quantile_fraction)
        lower_members = {done[i].member for i in lower}
        own_trial = own.complete
        if own_trial is not None and own.member not in lower_members:
            return {
                "action": ACTION_CONTINUE,
                "parent": own_trial.number,
                "clone_member": None,
                "params": dict(own_trial.params),
                "ops": {name: _explore.KEPT for name in own_trial.params},
            }
        if not done:
            # Every member of the generation failed: retry the segment as it was planned.
            planned = own.decision or {}
            return {
                "action": ACTION_RETRY,
                "parent": planned.get("parent"),
                "clone_member": planned.get("clone_member"),
                "params": dict(planned.get("params", {})),
                "ops": {name: _explore.KEPT for name in planned.get("params", {})},
            }
        if upper:
            choice = done[upper[int(rng.randint(len(upper)))]]
        else:
            choice = done[int(np.argmax(scores))]
        source = choice.complete
        assert source is not None
        params, ops = self._explore_params(population, source, generation, maximize, pending, rng)
        return {
            "action": ACTION_EXPLOIT,
            "parent": source.number,
            "clone_member": choice.member,
            "params": params,
            "ops": ops,
        }

    def _explore_params(
        self,
        population: Population,
        source: FrozenTrial,
        generation: int,
        maximize: bool,
        pending: list[Decision],
        rng: np.random.RandomState,
    ) -> tuple[dict[str, Any], dict[str, str]]:
        params: dict[str, Any] = {}
        ops: dict[str, str] = {}
        numeric: list[str] = []
        for name, value in source.params.items():
            spec = _spec(source.distributions[name])
            if spec is None or (isinstance(spec, _explore.NumericSpec) and spec.low == spec.high):
                params[name], ops[name] = value, _explore.KEPT
            elif self._pb2 and isinstance(spec, _explore.NumericSpec):
                numeric.append(name)
            else:
                params[name], ops[name] = _explore.explore(
                    value,
                    spec,
                    rng,
                    resample_probability=self._resample_probability,
                    perturbation_factors=self._perturbation_factors,
                )
        if numeric:
            proposal = self._pb2_propose(
                population, source, numeric, generation, maximize, pending, rng
            )
            for name in numeric:
                spec = _spec(source.distributions[name])
                assert isinstance(spec, _explore.NumericSpec)
                if proposal is None:
                    params[name], ops[name] = _explore.sample(spec, rng), _explore.RESAMPLED
                else:
                    params[name] = _explore.from_unit(proposal[name], spec)
                    ops[name] = _explore.PROPOSED
        return params, ops

    def _pb2_propose(
        self,
        population: Population,
        source: FrozenTrial,
        names: list[str],
        generation: int,
        maximize: bool,
        pending: list[Decision],
        rng: np.random.RandomState,
    ) -> dict[str, float] | None:
        specs: dict[str, _explore.NumericSpec] = {}
        for name in names:
            spec = _spec(source.distributions[name])
            assert isinstance(spec, _explore.NumericSpec)
            specs[name] = spec

        def unit(params: dict[str, Any]) -> list[float] | None:
            out = []
            for name, spec in specs.items():
                value = params.get(name)
                if value is None or not _explore.contains(value, spec):
                    return None
                out.append(_explore.to_unit(float(value), spec))
            return out

        rows_x: list[list[float]] = []
        rows_y: list[float] = []
        for (g, _), slot in sorted(population.slots.items()):
            trial = slot.complete
            if trial is None:
                continue
            parent = population.parent(trial)
            if parent is None or parent.state != TrialState.COMPLETE:
                continue
            h = unit(trial.params)
            if h is None:
                continue
            before = signed(float(parent.value), maximize)  # type: ignore[arg-type]
            rows_x.append([float(g), before, *h])
            rows_y.append(signed(float(trial.value), maximize) - before)  # type: ignore[arg-type]
        if len(rows_x) < 2:
            return None
        fixed = [float(generation), signed(float(source.value), maximize)]  # type: ignore[arg-type]
        pending_rows = []
        for decision in pending:
            h = unit(decision.get("params", {}))
            parent = population.by_number.get(decision.get("parent", -1))
            if h is None or parent is None or parent.value is None:
                continue
            pending_rows.append([float(generation), signed(float(parent.value), maximize), *h])
        proposal = _pb2.propose(rows_x, rows_y, fixed, rng, pending=pending_rows)
        return {name: float(u) for name, u in zip(specs, proposal, strict=True)}

    @staticmethod
    def _attrs(
        generation: int, member: int, decision: Decision
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        system_attrs: dict[str, Any] = {
            GENERATION_KEY: generation,
            MEMBER_KEY: member,
            DECISION_KEY: decision,
        }
        user_attrs: dict[str, Any] = {
            USER_GENERATION: generation,
            USER_MEMBER: member,
            USER_PARENT: decision.get("parent"),
            USER_ACTION: decision["action"],
        }
        if decision.get("clone_member") is not None:
            user_attrs[USER_CLONED_MEMBER] = decision["clone_member"]
        if decision.get("ops"):
            user_attrs[USER_EXPLORE] = decision["ops"]
        return system_attrs, user_attrs

    def _pending(self, population: Population, generation: int) -> list[Decision]:
        out = []
        for s in population.generation(generation):
            decision = s.decision
            if decision is not None and decision.get("action") == ACTION_EXPLOIT:
                out.append(decision)
        return out

    def _mark_duplicate(self, study: Study, trial_id: int) -> None:
        study._storage.set_trial_system_attr(trial_id, DUPLICATE_KEY, True)

    def _claim(self, study: Study, trial: FrozenTrial, trials: list[FrozenTrial]) -> None:
        """Plain ``optimize``: make a fresh trial take the first free slot, or be surplus."""
        population = Population(trials, self._population_size)
        openable = self._openable(population, None)
        storage = study._storage
        if not openable:
            storage.set_trial_system_attr(trial._trial_id, SURPLUS_KEY, True)
            return
        g, m = openable[0]
        others_running = any(
            t.state == TrialState.RUNNING and t.number != trial.number and is_member_trial(t)
            for t in trials
        )
        if others_running and len(openable) > 1:
            # Other workers are claiming slots too: take one at random rather than the first,
            # which every worker would take at once (and then all give up).
            g, m = openable[int(self._rng.rng.randint(len(openable)))]
        maximize = study.direction == StudyDirection.MAXIMIZE
        decision = self._decide(population, g, m, maximize, self._pending(population, g))
        system_attrs, user_attrs = self._attrs(g, m, decision)
        for key, value in system_attrs.items():
            storage.set_trial_system_attr(trial._trial_id, key, value)
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial._trial_id, key, value)
        # Only the slot's trials matter for the re-check (cheaper than the whole population).
        slot_trials = [
            t
            for t in storage.get_all_trials(study._study_id, deepcopy=False)
            if t.system_attrs.get(GENERATION_KEY) == g and t.system_attrs.get(MEMBER_KEY) == m
        ]
        population = Population(slot_trials, self._population_size)
        current = population.by_number[trial.number]
        if should_yield(population, current):
            storage.set_trial_system_attr(trial._trial_id, SURPLUS_KEY, True)

    def open_slots(self, study: Study, *, n_generations: int | None = None) -> list[int]:
        """Materialize the slots that can start now as WAITING trials; return their ids.

        :func:`optuna_ext.pbt.run` calls this before claiming a trial. Two processes that
        open the same slot at the same time both create a WAITING trial for it; then the
        higher-numbered one is cancelled (claimed and set FAIL with
        ``"PBTSampler:duplicate"``) here, or gives the slot up when it is claimed (see
        :meth:`before_trial`).

        Args:
            study:
                The study of this sampler.
            n_generations:
                No slot of this generation or later is opened; :obj:`None` for no limit.
        """
        return self._open_slots(study, n_generations)[0]

    def _open_slots(
        self, study: Study, n_generations: int | None
    ) -> tuple[list[int], list[FrozenTrial]]:
        """:meth:`open_slots`, also returning the study's trials as last read."""
        storage = study._storage
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        population = Population(trials, self._population_size)
        openable = self._openable(population, n_generations)
        if not openable:
            return [], trials
        maximize = study.direction == StudyDirection.MAXIMIZE
        created: list[int] = []
        pending: dict[int, list[Decision]] = {}
        for g, m in openable:
            batch = pending.setdefault(g, self._pending(population, g))
            decision = self._decide(population, g, m, maximize, batch)
            if decision["action"] == ACTION_EXPLOIT:
                batch.append(decision)
            system_attrs, user_attrs = self._attrs(g, m, decision)
            template = create_trial(
                state=TrialState.WAITING, system_attrs=system_attrs, user_attrs=user_attrs
            )
            created.append(storage.create_new_trial(study._study_id, template_trial=template))
            if (
                len(created) == 1
                and len(openable) > 1
                and not self._opens_first(study, g, m, created[0])
            ):
                # Another worker is opening the same slots (its trial of the first one has a
                # lower number): leave the rest to it rather than make a copy of each.
                break
        return created, self._cancel_duplicates(study)

    def _opens_first(self, study: Study, generation: int, member: int, trial_id: int) -> bool:
        """Whether the new trial ``trial_id`` is its slot's lowest-numbered live trial."""
        population = Population(
            study._storage.get_all_trials(study._study_id, deepcopy=False), self._population_size
        )
        live = [
            t
            for t in population.slot(generation, member).trials
            if t.state in (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)
        ]
        return min(live, key=lambda t: t.number)._trial_id == trial_id

    def _cancel_duplicates(self, study: Study) -> list[FrozenTrial]:
        """Cancel WAITING trials of slots that another trial holds; return the trials read."""
        storage = study._storage
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        population = Population(trials, self._population_size)
        for slot in population.slots.values():
            if len(slot.trials) < 2:
                continue
            for trial in slot.trials:
                if trial.state != TrialState.WAITING or not should_yield(population, trial):
                    continue
                # Claim it first, so that a trial another worker has just popped is left alone.
                try:
                    claimed = storage.set_trial_state_values(
                        trial._trial_id, state=TrialState.RUNNING
                    )
                except UpdateFinishedTrialError:
                    continue
                if claimed:
                    storage.set_trial_system_attr(trial._trial_id, DUPLICATE_KEY, True)
                    storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        return trials
