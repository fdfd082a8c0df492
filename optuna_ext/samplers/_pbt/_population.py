"""The population of a PBT study, rebuilt from its trials on every read.

Every member segment is one trial. Its *slot* ``(generation, member)`` and the decision that
made it (start, continue, exploit, retry; its parent trial and what was done to each
parameter) are written into the trial's system attrs when the slot is materialized, so the
population needs no other state: no blobs in study system attrs (optuna#5762).

A slot is

* ``complete`` when one of its trials is COMPLETE;
* ``failed`` when its segment failed (a FAIL or PRUNED trial marked :data:`FAILED_KEY`: the
  segment raised, returned NaN, or was pruned) and no trial of it is live or complete;
* ``live`` while a trial of it is WAITING or RUNNING;
* ``lost`` otherwise: its only trials failed without running to the end (a worker that was
  killed, found stale by the heartbeat, or interrupted), or it has no trial yet. A lost slot
  is materialized again with the same decision.

Trials marked :data:`DUPLICATE_KEY` or :data:`SURPLUS_KEY` are not members and are ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from typing import Any
from typing import TYPE_CHECKING

from optuna.trial import TrialState


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


PREFIX = "PBTSampler:"
GENERATION_KEY = PREFIX + "generation"
"""Trial system attr: the generation of the trial's slot (an int from 0)."""
MEMBER_KEY = PREFIX + "member"
"""Trial system attr: the member of the trial's slot (an int in ``[0, population_size)``)."""
DECISION_KEY = PREFIX + "decision"
"""Trial system attr: ``{"action", "parent", "clone_member", "params", "ops"}``."""
FAILED_KEY = PREFIX + "failed"
"""Trial system attr: the segment of this trial failed (its member is replaced)."""
DUPLICATE_KEY = PREFIX + "duplicate"
"""Trial system attr: this trial was a second trial of a slot and was not run."""
SURPLUS_KEY = PREFIX + "surplus"
"""Trial system attr: a trial that found no free slot (plain ``optimize``); not a member."""
INTERRUPTED_KEY = PREFIX + "interrupted"
"""Trial system attr: the segment was interrupted (KeyboardInterrupt); the slot is re-run."""
CHECKPOINT_KEY = PREFIX + "checkpoint"
"""Trial system attr: the artifact id of the checkpoint saved after this trial's segment."""

USER_GENERATION = "pbt:generation"
USER_MEMBER = "pbt:member"
USER_PARENT = "pbt:parent"
USER_ACTION = "pbt:action"
USER_CLONED_MEMBER = "pbt:cloned_member"
USER_EXPLORE = "pbt:explore"

ACTION_START = "start"
ACTION_CONTINUE = "continue"
ACTION_EXPLOIT = "exploit"
ACTION_RETRY = "retry"


def is_member_trial(trial: FrozenTrial) -> bool:
    """Whether ``trial`` belongs to a slot (not a duplicate, surplus or foreign trial)."""
    attrs = trial.system_attrs
    return (
        GENERATION_KEY in attrs
        and MEMBER_KEY in attrs
        and DUPLICATE_KEY not in attrs
        and SURPLUS_KEY not in attrs
    )


@dataclass
class Slot:
    """The trials of one ``(generation, member)`` slot, by trial number."""

    generation: int
    member: int
    trials: list[FrozenTrial] = field(default_factory=list)

    @property
    def complete(self) -> FrozenTrial | None:
        """The slot's COMPLETE trial (the lowest-numbered one, should there be several)."""
        return next((t for t in self.trials if t.state == TrialState.COMPLETE), None)

    @property
    def live(self) -> bool:
        return any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in self.trials)

    @property
    def failed(self) -> bool:
        return (
            self.complete is None
            and not self.live
            and any(
                t.state in (TrialState.FAIL, TrialState.PRUNED) and FAILED_KEY in t.system_attrs
                for t in self.trials
            )
        )

    @property
    def finished(self) -> bool:
        return self.complete is not None or self.failed

    @property
    def lost(self) -> bool:
        return not self.finished and not self.live

    @property
    def decision(self) -> dict[str, Any] | None:
        """The decision of the slot (the same on every trial of it; the latest one's)."""
        for t in reversed(self.trials):
            decision = t.system_attrs.get(DECISION_KEY)
            if decision is not None:
                return decision
        return None

    @property
    def latest(self) -> FrozenTrial | None:
        return self.trials[-1] if self.trials else None


class Population:
    """A read-only view of a PBT study's slots, rebuilt from a list of trials.

    Args:
        trials:
            All trials of the study (any order).
        population_size:
            The number of members; trials of members outside ``[0, population_size)`` are
            ignored.
    """

    def __init__(self, trials: Iterable[FrozenTrial], population_size: int) -> None:
        self.population_size = population_size
        self.by_number: dict[int, FrozenTrial] = {}
        self.slots: dict[tuple[int, int], Slot] = {}
        for t in sorted(trials, key=lambda t: t.number):
            self.by_number[t.number] = t
            if not is_member_trial(t):
                continue
            g = int(t.system_attrs[GENERATION_KEY])
            m = int(t.system_attrs[MEMBER_KEY])
            if not 0 <= m < population_size:
                continue
            self.slots.setdefault((g, m), Slot(g, m)).trials.append(t)

    @property
    def latest_generation(self) -> int:
        """The highest generation with a slot, or -1."""
        return max((g for g, _ in self.slots), default=-1)

    def slot(self, generation: int, member: int) -> Slot:
        """The slot, empty (lost) when it has no trial."""
        return self.slots.get((generation, member), Slot(generation, member))

    def generation(self, generation: int) -> list[Slot]:
        """The slots of a generation, by member."""
        return [self.slot(generation, m) for m in range(self.population_size)]

    def member_generation(self, member: int) -> int:
        """The highest generation with a slot for ``member``, or -1."""
        return max((g for g, m in self.slots if m == member), default=-1)

    def n_finished(self, generation: int) -> int:
        return sum(s.finished for s in self.generation(generation))

    def is_finished(self, generation: int) -> bool:
        """Whether every slot of the generation is complete or failed."""
        return self.n_finished(generation) == self.population_size

    def parent(self, trial: FrozenTrial) -> FrozenTrial | None:
        """The trial whose checkpoint ``trial`` started from, or :obj:`None`."""
        decision = trial.system_attrs.get(DECISION_KEY) or {}
        number = decision.get("parent")
        return self.by_number.get(number) if number is not None else None


def should_yield(population: Population, trial: FrozenTrial) -> bool:
    """Whether a just-claimed trial must give its slot up to another trial of the same slot.

    It yields when another trial of the slot is RUNNING or COMPLETE, or is WAITING with a
    lower number. Two claims that see each other both yield (the slot is then lost and
    materialized again); two claims never both keep a slot, because each checks after its own
    claim is stored, so at least one of them sees the other.
    """
    g = int(trial.system_attrs[GENERATION_KEY])
    m = int(trial.system_attrs[MEMBER_KEY])
    for other in population.slot(g, m).trials:
        if other.number == trial.number:
            continue
        if other.state in (TrialState.RUNNING, TrialState.COMPLETE):
            return True
        if other.state == TrialState.WAITING and other.number < trial.number:
            return True
    return False


def signed(value: float, maximize: bool) -> float:
    """A score where higher is better."""
    return value if maximize else -value


def needed_checkpoint_trials(population: Population) -> set[int]:
    """The numbers of the trials whose checkpoints some future segment may still load.

    Future decisions of member ``m`` clone from its latest generation ``g_m`` (or later), so
    every complete trial of a generation ``>= min_m g_m`` is kept, and so is the parent of
    every slot that is not finished (live, or lost and to be run again) and of every failed
    slot of those generations (a generation whose members all failed is retried from them).
    """
    if not population.slots:
        return set()
    oldest = min(population.member_generation(m) for m in range(population.population_size))
    keep = {
        s.complete.number
        for (g, _), s in population.slots.items()
        if g >= oldest and s.complete is not None
    }
    for (g, _), s in population.slots.items():
        if not s.finished or (s.failed and g >= oldest):
            decision = s.decision or {}
            if decision.get("parent") is not None:
                keep.add(int(decision["parent"]))
    return keep


def member_trials(trials: Sequence[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that belong to a slot, by number."""
    return sorted((t for t in trials if is_member_trial(t)), key=lambda t: t.number)
