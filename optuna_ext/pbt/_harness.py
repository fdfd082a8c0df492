from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence
from dataclasses import dataclass
import logging
import math
import random
import time
from typing import Any
from typing import Literal
from typing import TYPE_CHECKING
import warnings

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.trial import TrialState

from optuna_ext._checkpoint import CheckpointError
from optuna_ext._checkpoint import load_checkpoint
from optuna_ext._checkpoint import remove_checkpoint
from optuna_ext._checkpoint import save_checkpoint
from optuna_ext.pbt._lineage import best_member_trial
from optuna_ext.pbt._lineage import format_lineage
from optuna_ext.pbt._lineage import lineage
from optuna_ext.pbt._lineage import save_dashboard_plots
from optuna_ext.pbt._lineage import schedule
from optuna_ext.samplers._pbt._population import CHECKPOINT_KEY
from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import DUPLICATE_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import INTERRUPTED_KEY
from optuna_ext.samplers._pbt._population import is_member_trial
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from optuna_ext.samplers._pbt._population import needed_checkpoint_trials
from optuna_ext.samplers._pbt._population import Population
from optuna_ext.samplers._pbt.sampler import PBTSampler


if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore
    from optuna.trial import FrozenTrial


_logger = logging.getLogger(__name__)

SegmentFunction = Callable[[optuna.Trial, dict[str, Any]], float]
"""``train_segment(trial, model_state) -> score``; see :func:`run`."""

USER_RESTORED_FROM = "pbt:restored_from"
"""User attr: the trial whose checkpoint the segment loaded (:obj:`None`: from scratch)."""
USER_CHECKPOINT_ERROR = "pbt:checkpoint_error"
"""User attr: why the parent's checkpoint could not be loaded."""
USER_ERROR = "pbt:error"
"""User attr: the exception of a segment that failed."""

_CHECKPOINT_MODES = ("ancestor", "scratch", "fail")


class PopulationFailedError(RuntimeError):
    """Every member of a generation failed, so the population cannot go on."""


@dataclass(frozen=True)
class PBTResult:
    """What :func:`run` leaves behind, read back from the study.

    Args:
        study:
            The study.
        best_trial:
            The best member segment of the latest finished generation (see
            :func:`~optuna_ext.pbt.best_member_trial`), or :obj:`None`.
        lineage:
            ``best_trial``'s ancestry, generation 0 first.
        finished:
            Whether every member has finished the last generation.
        n_segments:
            The number of segments this call ran (other workers not counted).
        seconds:
            The wall-clock time of this call.
    """

    study: optuna.Study
    best_trial: FrozenTrial | None
    lineage: list[FrozenTrial]
    finished: bool
    n_segments: int
    seconds: float

    def schedule(self) -> list[dict[str, Any]]:
        """The best member's hyper-parameters per generation (see :func:`schedule`)."""
        return schedule(self.study, self.best_trial) if self.best_trial is not None else []

    def format_lineage(self) -> str:
        """The best member's lineage as a text table (see :func:`format_lineage`)."""
        if self.best_trial is None:
            return "(no complete segment yet)"
        return format_lineage(self.study, self.best_trial)


def _check_arguments(
    study: optuna.Study,
    n_generations: int,
    timeout: float | None,
    n_segments: int | None,
    poll_interval: float,
    on_checkpoint_error: str,
) -> PBTSampler:
    if not isinstance(study.sampler, PBTSampler):
        raise ValueError(
            f"The sampler of the study is {type(study.sampler).__name__}, but must be a "
            "`PBTSampler`."
        )
    if study._is_multi_objective():
        raise ValueError("The study has several objectives, but PBT needs exactly one.")
    if isinstance(n_generations, bool) or not isinstance(n_generations, int) or n_generations < 1:
        raise ValueError(
            f"The value of `n_generations` is {n_generations}, but must be `n_generations >= 1`."
        )
    if timeout is not None and not timeout > 0:
        raise ValueError(f"The value of `timeout` is {timeout}, but must be `timeout > 0`.")
    if n_segments is not None and (
        isinstance(n_segments, bool) or not isinstance(n_segments, int) or n_segments < 1
    ):
        raise ValueError(
            f"The value of `n_segments` is {n_segments}, but must be `n_segments >= 1`."
        )
    if not (math.isfinite(poll_interval) and poll_interval > 0):
        raise ValueError(
            f"The value of `poll_interval` is {poll_interval}, but must be `poll_interval > 0`."
        )
    if on_checkpoint_error not in _CHECKPOINT_MODES:
        raise ValueError(
            f"The value of `on_checkpoint_error` is {on_checkpoint_error!r}, but must be one of "
            f"{_CHECKPOINT_MODES}."
        )
    return study.sampler


def _is_done(population: Population, n_generations: int) -> bool:
    last = n_generations - 1
    return all(population.slot(last, m).finished for m in range(population.population_size))


def _failed_generations(population: Population) -> list[int]:
    """The generations whose every member failed."""
    return [
        g
        for g in sorted({g for g, _ in population.slots})
        if all(s.failed for s in population.generation(g))
    ]


def _check_not_all_failed(population: Population, known: set[int]) -> None:
    for g in _failed_generations(population):
        if g in known:
            continue
        slots = population.generation(g)
        errors = [str(s.latest.user_attrs.get(USER_ERROR, "?")) for s in slots if s.latest]
        raise PopulationFailedError(
            f"Every member of generation {g} failed, so the population cannot go on; the "
            f"first error: {errors[0] if errors else '?'}. Once the cause is fixed, call "
            "`run` again: each member then retries its segment."
        )


def _pop(study: optuna.Study, trials: Sequence[FrozenTrial]) -> int | None:
    """Claim a WAITING member trial (lowest generation, then member) atomically."""
    waiting = [t for t in trials if t.state == TrialState.WAITING and is_member_trial(t)]
    waiting.sort(
        key=lambda t: (
            int(t.system_attrs[GENERATION_KEY]),
            int(t.system_attrs[MEMBER_KEY]),
            t.number,
        )
    )
    storage = study._storage
    for t in waiting:
        try:
            if storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                if isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage):
                    # At once, so that a worker killed before its heartbeat thread starts
                    # still leaves a trial that becomes stale.
                    storage.record_heartbeat(t._trial_id)
                return t._trial_id
        except UpdateFinishedTrialError:
            continue
    return None


def _load_parent_state(
    population: Population,
    trial_id: int,
    parent: int | None,
    artifact_store: ArtifactStore,
    mode: str,
    storage: optuna.storages.BaseStorage,
) -> tuple[dict[str, Any], int | None]:
    """Load the parent's checkpoint; on error fall back to an ancestor or to scratch."""
    errors = []
    number = parent
    while number is not None:
        source = population.by_number.get(number)
        if source is None:
            errors.append(f"trial {number} is not in the study")
            break
        artifact_id = source.system_attrs.get(CHECKPOINT_KEY)
        try:
            if artifact_id is None:
                raise CheckpointError(f"Trial {number} has no checkpoint artifact.")
            state = load_checkpoint(artifact_store=artifact_store, artifact_id=str(artifact_id))
        except CheckpointError as e:
            message = f"{e} (checkpoint of trial {number})"
            errors.append(message)
            _logger.warning(
                f"Cannot load the checkpoint of trial {number} for trial "
                f"{storage.get_trial_number_from_id(trial_id)}: {message}"
            )
            if mode == "fail":
                storage.set_trial_user_attr(trial_id, USER_CHECKPOINT_ERROR, "; ".join(errors))
                raise
            if mode == "scratch":
                break
            grandparent = population.parent(source)
            number = grandparent.number if grandparent is not None else None
            continue
        if errors:
            storage.set_trial_user_attr(trial_id, USER_CHECKPOINT_ERROR, "; ".join(errors))
        storage.set_trial_user_attr(trial_id, USER_RESTORED_FROM, number)
        return state, number
    if errors:
        storage.set_trial_user_attr(trial_id, USER_CHECKPOINT_ERROR, "; ".join(errors))
    storage.set_trial_user_attr(trial_id, USER_RESTORED_FROM, None)
    return {}, None


def _run_segment(
    study: optuna.Study,
    trial: optuna.Trial,
    population: Population,
    train_segment: SegmentFunction,
    artifact_store: ArtifactStore,
    catch: tuple[type[Exception], ...],
    on_checkpoint_error: str,
) -> None:
    storage = study._storage
    trial_id = trial._trial_id
    attrs = storage.get_trial_system_attrs(trial_id)
    g, m = int(attrs[GENERATION_KEY]), int(attrs[MEMBER_KEY])
    parent = (attrs.get(DECISION_KEY) or {}).get("parent")
    with get_heartbeat_thread(trial_id, storage):
        try:
            state, _ = _load_parent_state(
                population, trial_id, parent, artifact_store, on_checkpoint_error, storage
            )
            score = train_segment(trial, state)
            score = float(score)
            if not math.isfinite(score):
                raise ValueError(f"The segment returned {score}, but must return a finite score.")
            artifact_id = save_checkpoint(
                state,
                artifact_store=artifact_store,
                study_or_trial=trial,
                filename=f"pbt-gen{g}-member{m}.pt",
            )
        except optuna.TrialPruned:
            _finish(study, trial, lambda: study.tell(trial, state=TrialState.PRUNED))
            return
        except catch as e:
            _logger.warning(
                f"The segment of trial {trial.number} (generation {g}, member {m}) failed; "
                f"the member will be replaced: {type(e).__name__}: {e}",
                exc_info=True,
            )

            message = f"{type(e).__name__}: {e}"

            def fail() -> None:
                storage.set_trial_user_attr(trial_id, USER_ERROR, message)
                study.tell(trial, state=TrialState.FAIL)

            _finish(study, trial, fail)
            return
        except BaseException:
            # Interrupted (KeyboardInterrupt, SystemExit, an error outside `catch`): the slot
            # is run again by the next worker, not counted as the member's failure.
            def interrupt() -> None:
                storage.set_trial_system_attr(trial_id, INTERRUPTED_KEY, True)
                study.tell(trial, state=TrialState.FAIL)

            _finish(study, trial, interrupt)
            raise

    def complete() -> None:
        storage.set_trial_system_attr(trial_id, CHECKPOINT_KEY, artifact_id)
        study.tell(trial, score)

    _finish(study, trial, complete)


def _finish(study: optuna.Study, trial: optuna.Trial, tell: Callable[[], object]) -> None:
    """Record a segment's end, unless another process has already finished its trial."""
    try:
        tell()
    except (UpdateFinishedTrialError, ValueError) as e:
        if not study._storage.get_trial(trial._trial_id).state.is_finished():
            raise
        # Failed meanwhile as stale by another worker: the slot is run again.
        _logger.warning(
            f"Trial {trial.number} was finished by another process before this worker could "
            f"record its end ({e}); its slot will be run again."
        )


def _remove_unneeded(
    population: Population,
    artifact_store: ArtifactStore,
    removed: set[str],
) -> None:
    keep = needed_checkpoint_trials(population)
    for trial in population.by_number.values():
        artifact_id = trial.system_attrs.get(CHECKPOINT_KEY)
        if artifact_id is None or artifact_id in removed or not trial.state.is_finished():
            continue
        if trial.number in keep and trial.state == TrialState.COMPLETE:
            continue
        remove_checkpoint(artifact_store=artifact_store, artifact_id=str(artifact_id))
        removed.add(str(artifact_id))


def run(
    study: optuna.Study,
    train_segment: SegmentFunction,
    *,
    n_generations: int,
    artifact_store: ArtifactStore,
    timeout: float | None = None,
    n_segments: int | None = None,
    poll_interval: float = 0.5,
    catch: tuple[type[Exception], ...] = (Exception,),
    on_checkpoint_error: Literal["ancestor", "scratch", "fail"] = "ancestor",
    remove_checkpoints: bool = True,
    save_plots: bool = True,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
) -> PBTResult:
    """Train a population with PBT: run member segments until the last generation is done.

    The study's sampler must be a :class:`~optuna_ext.samplers.PBTSampler`. Each loop of
    this worker

    1. fails stale trials (when the storage has heartbeats, see below) and materializes the
       slots that can start now as WAITING trials (:meth:`PBTSampler.open_slots`);
    2. claims one WAITING member trial atomically (the storage's WAITING -> RUNNING update
       under a row lock, as :meth:`optuna.Study.ask` does), or waits ``poll_interval``
       seconds when none is free (a synchronous generation waits for its slowest member);
    3. loads the checkpoint of the trial's parent from ``artifact_store``
       (``torch.load(weights_only=True)``), calls ``train_segment(trial, model_state)``,
       saves ``model_state`` as an artifact of the trial (system attr
       ``"PBTSampler:checkpoint"``) and tells the score;
    4. removes the checkpoints that no future segment can load (with ``remove_checkpoints``):
       it keeps every complete segment of the oldest generation some member may still clone
       from onwards, and the parent of every segment that is not finished.

    It returns when every member has finished generation ``n_generations - 1`` (then it saves
    the lineage and schedule figures, see :func:`save_dashboard_plots`), or when ``timeout``
    or ``n_segments`` is reached. Start the same call in several processes on one
    PostgreSQL (or MySQL) storage to train the population in parallel, and again after every
    process was killed to resume: finished segments are never run again.

    **The segment function.** ``train_segment(trial, model_state)`` suggests its
    hyper-parameters with ``trial.suggest_*`` as usual (the sampler returns the member's
    values), restores its model from ``model_state`` (an empty dict for a member that starts
    from scratch, see :func:`load_training_state`), trains for one interval, writes what it
    needs next time back into the same dict (e.g. with :func:`store_training_state`: tensors,
    numbers, strings, lists and dicts only) and returns the score to rank members by (e.g.
    the validation accuracy). It may report intermediate values.

    **Failures.** A segment that raises an exception of ``catch``, returns NaN or raises
    :class:`optuna.TrialPruned` fails its trial; the member is replaced in the next
    generation by a clone of a top member, and the population goes on. When every member of a
    generation failed, :class:`PopulationFailedError` is raised; calling ``run`` again (after
    fixing the cause) retries each member's segment as a new generation, which counts
    towards ``n_generations``. A parent checkpoint that is
    missing or corrupt is logged as a warning naming the artifact and stored in the user attr
    ``pbt:checkpoint_error``; then, with ``on_checkpoint_error="ancestor"`` (default), the
    member restarts from the nearest ancestor whose checkpoint loads, or from scratch (an
    empty ``model_state``) when none does; with ``"scratch"`` it restarts from scratch; with
    ``"fail"`` the segment fails. The user attr ``pbt:restored_from`` names the trial whose
    checkpoint was loaded.

    **Crashed workers.** Open the storage with heartbeats, e.g.
    ``RDBStorage(url, heartbeat_interval=10, grace_period=30)``, optionally with
    ``heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback()``. This harness
    records the heartbeat of its running segment itself (Optuna only does inside
    ``study.optimize``), from the moment it claims the trial, and calls
    :func:`optuna.storages.fail_stale_trials` before each claim. A stale segment is failed
    and its slot is materialized again with the same decision (or the callback's WAITING
    copy is used), so it is run again, not lost; a ``KeyboardInterrupt`` does the same at
    once. Without heartbeats a killed worker's RUNNING trial holds its slot for ever and a
    synchronous population waits for it (fail that trial by hand to go on).

    **Residual races.** A worker that finds slots to open waits a random fraction of
    ``poll_interval`` first, so that one worker usually opens them and the others find them
    open. Two workers may still materialize the same slot at the same time; then
    both WAITING trials exist and all but one are cancelled (FAIL with
    ``"PBTSampler:duplicate"``), either right after creation or when claimed. Two claims of
    the same slot that see each other both give it up (it is then materialized again), so a
    slot is never trained twice at once. A worker killed between claiming a trial and
    recording its first heartbeat (one storage call later) leaves a RUNNING trial that never
    becomes stale; ``study.optimize`` has the same window.

    Example:

        .. testcode::

            import tempfile

            import optuna
            from optuna.artifacts import FileSystemArtifactStore
            import optuna_ext.pbt
            from optuna_ext.samplers import PBTSampler


            def train_segment(trial, model_state):
                lr = trial.suggest_float("lr", 1e-3, 1.0, log=True)
                progress = model_state.get("progress", 0.0) + lr * (1.0 - lr)
                model_state["progress"] = progress
                return progress


            study = optuna.create_study(
                sampler=PBTSampler(population_size=4, seed=0), direction="maximize"
            )
            with tempfile.TemporaryDirectory() as tmp:
                result = optuna_ext.pbt.run(
                    study,
                    train_segment,
                    n_generations=3,
                    artifact_store=FileSystemArtifactStore(tmp),
                    save_plots=False,
                )
            assert result.finished and len(result.lineage) == 3

    Args:
        study:
            A single-objective study whose sampler is a ``PBTSampler``.
        train_segment:
            The function that trains one member for one interval (see above).
        n_generations:
            The number of segments per member, ``>= 1``.
        artifact_store:
            Where checkpoints are stored, shared by every worker (e.g.
            :class:`optuna.artifacts.FileSystemArtifactStore` on a shared disk, or
            :class:`optuna.artifacts.Boto3ArtifactStore`).
        timeout:
            Stop claiming segments after this many seconds (the running one finishes).
        n_segments:
            Stop after this worker has run this many segments.
        poll_interval:
            Seconds to wait when no segment is free.
        catch:
            The exceptions of ``train_segment`` that fail the member instead of stopping this
            worker; any other exception (and ``KeyboardInterrupt``) stops the worker and
            leaves the segment to be run again.
        on_checkpoint_error:
            ``"ancestor"``, ``"scratch"`` or ``"fail"``: what a member does when its parent's
            checkpoint is missing or corrupt (see above).
        remove_checkpoints:
            Whether to remove the checkpoints no future segment can load.
        save_plots:
            Whether to save the lineage and schedule figures to the study at the end.
        callbacks:
            Functions called as ``callback(study, frozen_trial)`` after each segment this
            worker ran.
    """
    sampler = _check_arguments(
        study, n_generations, timeout, n_segments, poll_interval, on_checkpoint_error
    )
    storage = study._storage
    members = [
        int(t.system_attrs[MEMBER_KEY])
        for t in storage.get_all_trials(study._study_id, deepcopy=False)
        if is_member_trial(t)
    ]
    if members and max(members) >= sampler.population_size:
        raise ValueError(
            f"The study holds member {max(members)}, but the sampler's `population_size` is "
            f"{sampler.population_size}: resume with the population size it was started with."
        )
    heartbeat = is_heartbeat_enabled(storage)
    if not heartbeat:
        _logger.info(
            "The storage has no heartbeat: a killed worker's segment is not run again until "
            "its trial is failed by hand (see optuna_ext.pbt.run)."
        )
    start = time.monotonic()
    ran = 0
    removed: set[str] = set()
    stagger = random.Random()
    # Generations that had failed entirely before this call are retried, not reported again.
    known_failures = set(
        _failed_generations(
            Population(
                storage.get_all_trials(study._study_id, deepcopy=False), sampler.population_size
            )
        )
    )
    finished = False
    while True:
        if heartbeat:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        trials = storage.get_all_trials(study._study_id, deepcopy=False)
        if sampler._openable(Population(trials, sampler.population_size), n_generations):
            # Slots to open (a generation has just finished): every idle worker sees that
            # within one poll. A random pause lets one of them open the slots first and the
            # others see them, instead of each opening (and then cancelling) its own copies.
            time.sleep(stagger.uniform(0.0, poll_interval))
            _, trials = sampler._open_slots(study, n_generations)
        population = Population(trials, sampler.population_size)
        if remove_checkpoints:
            _remove_unneeded(population, artifact_store, removed)
        _check_not_all_failed(population, known_failures)
        if _is_done(population, n_generations):
            finished = True
            break
        if (timeout is not None and time.monotonic() - start >= timeout) or (
            n_segments is not None and ran >= n_segments
        ):
            break
        trial_id = _pop(study, trials)
        if trial_id is None:
            time.sleep(poll_interval)
            continue
        trial = optuna.Trial(study, trial_id)
        if DUPLICATE_KEY in storage.get_trial_system_attrs(trial_id):
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except UpdateFinishedTrialError:
                pass  # finished by another worker that took it too (SQLite has no row locks)
            continue
        _run_segment(
            study, trial, population, train_segment, artifact_store, catch, on_checkpoint_error
        )
        ran += 1
        if callbacks:
            frozen = storage.get_trial(trial_id)
            for callback in callbacks:
                callback(study, frozen)
    if finished and save_plots:
        save_dashboard_plots(study)
    best = best_member_trial(study)
    return PBTResult(
        study=study,
        best_trial=best,
        lineage=lineage(study, best) if best is not None else [],
        finished=finished,
        n_segments=ran,
        seconds=time.monotonic() - start,
    )
