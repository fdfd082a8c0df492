"""Rung bookkeeping shared by :class:`MORLPruner` and :class:`MORLHyperbandPruner`.

Modelled on Optuna's ``pruners/_successive_halving.py``: a trial's progress is the run of
consecutive trial system attrs ``"{prefix}:completed_rung_{k}"``, each holding the value the
trial had at the end of rung ``k``, so any process sharing the storage sees it.
"""

from __future__ import annotations

from bisect import bisect_left
import math
import numbers
import threading
from typing import Any
from typing import Literal
from typing import TYPE_CHECKING
from typing import TypeAlias
import weakref

from optuna.study import StudyDirection

from optuna_ext.samplers._storage_seeded import RETRIED_FROM_KEY
from optuna_ext.samplers._storage_seeded import RETRY_HISTORY_KEY


if TYPE_CHECKING:
    from collections.abc import Sequence

    import optuna


LastRung: TypeAlias = Literal["separate", "stretched"]
"""Where the last rung ends when ``max_resource`` is not a rung end of the geometric ladder."""

LAST_RUNG_CHOICES: tuple[str, ...] = ("separate", "stretched")


def check_int(name: str, value: Any, minimum: int) -> int:
    """Check that ``value`` is an integer (not a bool) and ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"The value of `{name}` is {value!r}, but must be an integer.")
    if value < minimum:
        raise ValueError(f"The value of `{name}` is {value}, but must be `{name} >= {minimum}`.")
    return int(value)


def rung_ends(
    first_end: int, reduction_factor: int, max_resource: int, last_rung: LastRung
) -> tuple[int, ...]:
    """Return the rung ends ``first_end * reduction_factor**k``, the last one ``max_resource``.

    The ends grow by ``reduction_factor`` while they stay ``<= max_resource``. When the last of
    them falls short of ``max_resource``, ``last_rung="separate"`` adds ``max_resource`` as a
    rung of its own and ``last_rung="stretched"`` moves the last end to ``max_resource`` (the
    MORL paper's Algorithm 1, where the round with exponent ``floor(log_eta r)`` ends at ``r``).

    Args:
        first_end:
            The end of the first rung, ``>= 1``.
        reduction_factor:
            The growth factor ``eta`` of the rung ends, ``>= 2``.
        max_resource:
            The end of the last rung, ``>= first_end``.
        last_rung:
            ``"separate"`` or ``"stretched"``.

    Returns:
        The strictly increasing rung ends, the last one ``max_resource``.
    """
    if max_resource < first_end:
        raise ValueError(
            f"The value of `max_resource` is {max_resource}, but must be at least the end of "
            f"the first rung ({first_end}): `max_resource >= {first_end}`."
        )
    ends = [first_end]
    while ends[-1] * reduction_factor <= max_resource:
        ends.append(ends[-1] * reduction_factor)
    if ends[-1] < max_resource:
        if last_rung == "separate":
            ends.append(max_resource)
        else:
            ends[-1] = max_resource
    return tuple(ends)


def check_single_objective(study: optuna.study.Study) -> None:
    """Raise the error Optuna raises for pruning a multi-objective study."""
    if len(study.directions) > 1:
        raise NotImplementedError(
            "Trial.should_prune is not supported for multi-objective optimization: "
            "MORL pruners compare one intermediate value per trial."
        )


def check_step(pruner_name: str, trial: optuna.trial.FrozenTrial, max_resource: int) -> None:
    """Raise a ``ValueError`` when a trial reported a step past ``max_resource``."""
    step = trial.last_step
    if step is not None and step > max_resource:
        raise ValueError(
            f"Trial {trial.number} reported step {step}, but {pruner_name} has "
            f"max_resource={max_resource}: steps are the number of epochs completed (report "
            f"with `step=epoch + 1`) and must be `step <= max_resource`."
        )


def completed_rung_key(prefix: str, rung: int) -> str:
    """Return the trial system attr key recording the value at the end of ``rung``."""
    return f"{prefix}:completed_rung_{rung}"


def recorded_by_key(prefix: str) -> str:
    """Return the trial system attr key of a retry's own rung records.

    Optuna's ``RetryHeartbeatStaleTrialCallback`` re-enqueues a killed trial as a copy that
    inherits all its system attrs, rung records included. A copy keeps here
    ``[its number, the number of rungs it has recorded itself]``, so that it tells its own
    records from the inherited ones (ordinary trials do not write it).
    """
    return f"{prefix}:rungs_recorded_by"


def retried_trial_numbers(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """The numbers of the trials that a retry copy of Optuna's retry callback replaces."""
    return {
        int(n)
        for t in trials
        for n in t.system_attrs.get(RETRY_HISTORY_KEY, ())
        if isinstance(n, int) and not isinstance(n, bool)
    }


def _own_rungs(trial: optuna.trial.FrozenTrial, prefix: str) -> int | None:
    """How many rungs a retry copy has recorded itself; :obj:`None` for an ordinary trial."""
    if RETRIED_FROM_KEY not in trial.system_attrs:
        return None
    owner = trial.system_attrs.get(recorded_by_key(prefix))
    if isinstance(owner, list) and len(owner) == 2 and owner[0] == trial.number:
        return int(owner[1])
    return 0  # everything it holds was inherited (from the original, or an earlier copy)


def get_current_rung(trial: optuna.trial.FrozenTrial, prefix: str) -> int:
    """Return the number of rungs the trial has completed (consecutive recorded keys)."""
    rung = 0
    while completed_rung_key(prefix, rung) in trial.system_attrs:
        rung += 1
    return rung


def value_at_rung_end(trial: optuna.trial.FrozenTrial, rung_end: int) -> float:
    """Return the value the trial reported at the first reported step ``>= rung_end``.

    With a report every epoch this is the value at the rung end itself, where the recurring
    schedule has annealed; it never is a value from after a later report.
    """
    steps = sorted(trial.intermediate_values)
    return float(trial.intermediate_values[steps[bisect_left(steps, rung_end)]])


def is_promotable(
    value: float,
    competing_values: list[float],
    reduction_factor: int,
    direction: StudyDirection,
) -> bool:
    """Return whether ``value`` is within the top ``1 / reduction_factor`` of the competitors.

    ``competing_values`` includes ``value``. As in Optuna's successive halving, the top
    ``len(competing_values) // reduction_factor`` values are promoted, and only the best one
    when there are fewer than ``reduction_factor`` competitors (Optuna cannot suspend a trial
    and resume it later). Ties at the cut-off are all promoted.
    """
    n_promoted = max(len(competing_values) // reduction_factor, 1)
    ranked = sorted(competing_values, reverse=direction == StudyDirection.MAXIMIZE)
    cutoff = ranked[n_promoted - 1]
    if direction == StudyDirection.MAXIMIZE:
        return value >= cutoff
    return value <= cutoff


def prune_at_rung_ends(
    study: optuna.study.Study,
    trial: optuna.trial.FrozenTrial,
    boundaries: Sequence[int],
    reduction_factor: int,
    bootstrap_count: int,
    prefix: str,
) -> bool:
    """Record the rung ends the trial has reached and decide whether to prune it.

    For every rung end ``b_k`` reached (``step >= b_k``) and not yet recorded: a non-finite value
    prunes the trial (and is not recorded, so it never competes); the value is recorded in
    ``"{prefix}:completed_rung_{k}"``; at the last rung end the trial is done and never pruned;
    otherwise the trial continues only if at least ``bootstrap_count + 1`` trials completed the
    rung and its value is promotable (:func:`is_promotable`) among them.

    Retries of killed trials (Optuna's ``RetryHeartbeatStaleTrialCallback``): the copy inherits
    the original's system attrs, so its rung records are not its own (it counts those it wrote
    itself in ``"{prefix}:rungs_recorded_by"``); the copy is judged again at every rung end,
    as the original was (the original may have been killed between recording a rung and being
    pruned there). The records of a trial that a copy retries do not compete:
    the copy's stand for them, so the trial is counted once.

    Args:
        study:
            The study, or the bracket study whose trials compete.
        trial:
            The trial to judge, with its latest intermediate values and system attrs.
        boundaries:
            The rung ends of the trial.
        reduction_factor:
            ``eta``: the top ``1 / eta`` are promoted.
        bootstrap_count:
            The number of other trials that must have completed a rung before any is promoted.
        prefix:
            The namespace of the trial system attrs.

    Returns:
        Whether the trial should be pruned.
    """
    step = trial.last_step
    if step is None:
        return False
    own = _own_rungs(trial, prefix)
    rung = get_current_rung(trial, prefix) if own is None else own
    trials: list[optuna.trial.FrozenTrial] | None = None
    retried: set[int] = set()
    while rung < len(boundaries):
        rung_end = boundaries[rung]
        if step < rung_end:
            return False
        value = value_at_rung_end(trial, rung_end)
        if not math.isfinite(value):
            return True
        key = completed_rung_key(prefix, rung)
        if trials is None:
            trials = study.get_trials(deepcopy=False)
            retried = retried_trial_numbers(trials)
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
        if own is not None:
            own = rung + 1
            study._storage.set_trial_system_attr(
                trial._trial_id, recorded_by_key(prefix), [trial.number, own]
            )
        if rung == len(boundaries) - 1:
            return False
        # One pass, one attribute read per trial: this runs over every trial of the study. A
        # killed trial whose retry competes in its place does not compete itself.
        competing = []
        trial_id = trial._trial_id
        for t in trials:
            recorded = t.system_attrs.get(key)
            if (
                recorded is not None
                and t._trial_id != trial_id
                and t.number not in retried
                and math.isfinite(recorded)
            ):
                competing.append(float(recorded))
        competing.append(value)
        # `competing` includes this trial, hence `<=`.
        if len(competing) <= bootstrap_count:
            return True
        if not is_promotable(value, competing, reduction_factor, study.direction):
            return True
        rung += 1
    return False


class LayoutRecord:
    """Persist a pruner's resolved layout in a study system attr and check it on reuse.

    The layout is written on first use; afterwards every process and every resumed run must
    hold the same layout, or :meth:`ensure` raises a ``ValueError``. A successful check is
    cached per storage object and study id: the stored layout never changes once written, so
    the cache only saves the storage round trip.
    """

    def __init__(self, key: str, layout: list[Any], owner: str) -> None:
        self.key = key
        self.layout = layout
        self.owner = owner
        self._lock = threading.Lock()
        self._checked: weakref.WeakKeyDictionary[Any, set[int]] = weakref.WeakKeyDictionary()

    def ensure(self, study: optuna.study.Study) -> None:
        """Write the layout to ``study`` if absent, else check that it is the same."""
        storage = study._storage
        study_id = study._study_id
        with self._lock:
            if study_id in self._checked.get(storage, ()):
                return
        stored = storage.get_study_system_attrs(study_id).get(self.key)
        if stored is None:
            storage.set_study_system_attr(study_id, self.key, self.layout)
            # Read back: a process that wrote first wins, and a different layout must not pass.
            stored = storage.get_study_system_attrs(study_id).get(self.key)
        if stored != self.layout:
            raise ValueError(
                f"The study {study.study_name!r} was run with the rung layout {stored} (study "
                f"system attr {self.key!r}), but this {self.owner} has {self.layout}. The "
                "pruner's arguments differ from those the study started with: use the same "
                "arguments in every process and every resumed run, or start a new study."
            )
        with self._lock:
            self._checked.setdefault(storage, set()).add(study_id)

    def __getstate__(self) -> dict[str, Any]:
        return {"key": self.key, "layout": self.layout, "owner": self.owner}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["key"], state["layout"], state["owner"])  # type: ignore[misc]


def first_rung_end(
    reduction_factor: int,
    min_exponent: int | None,
    min_resource: int | None,
    unit: str,
    max_resource: int,
) -> int:
    """The end of the first rung (or round): ``min_resource``, else ``eta**min_exponent``.

    ``min_exponent`` defaults to 2 (the paper's s_min); giving both is a ``ValueError``.
    ``unit`` names what ends there in the message ("rung" or "round"). The first end must not
    pass ``max_resource`` (the rule of :func:`rung_ends`); for ``min_exponent`` this is checked
    without computing a power past ``max_resource``, so a huge exponent is refused at once.
    """
    if min_exponent is not None and min_resource is not None:
        raise ValueError(
            f"The values of `min_exponent` and `min_resource` are {min_exponent} and "
            f"{min_resource}, but only one may be given: the first {unit} ends at "
            "`reduction_factor**min_exponent` or at `min_resource`."
        )
    if min_resource is not None:
        return check_int("min_resource", min_resource, 1)
    exponent = check_int("min_exponent", 2 if min_exponent is None else min_exponent, 0)
    # eta >= 2, so eta**k > max_resource once k >= max_resource.bit_length(): the loop below
    # multiplies at most that many times and never past max_resource * eta.
    end = 1
    for _ in range(min(exponent, max_resource.bit_length())):
        end *= reduction_factor
        if end > max_resource:
            break
    if end > max_resource:
        largest = 0
        power = reduction_factor
        while power <= max_resource:
            largest += 1
            power *= reduction_factor
        default = " (the default)" if min_exponent is None else ""
        raise ValueError(
            f"The value of `min_exponent` is {exponent}{default}, but the first {unit} would "
            f"end at `reduction_factor**min_exponent` = {reduction_factor}**{exponent} epochs, "
            f"past `max_resource` ({max_resource}): must be `reduction_factor**min_exponent <= "
            f"max_resource`, i.e. `min_exponent <= {largest}` here (or give `min_resource`)."
        )
    return end
