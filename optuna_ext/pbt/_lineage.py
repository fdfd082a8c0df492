"""A PBT study's lineage: the best member's ancestry, its schedule, and dashboard figures."""

from __future__ import annotations

import math
from typing import Any
from typing import TYPE_CHECKING

from optuna.distributions import FloatDistribution
from optuna.distributions import IntDistribution
from optuna.study import StudyDirection
from optuna.trial import TrialState

from optuna_ext.samplers._pbt._population import DECISION_KEY
from optuna_ext.samplers._pbt._population import GENERATION_KEY
from optuna_ext.samplers._pbt._population import is_member_trial
from optuna_ext.samplers._pbt._population import MEMBER_KEY
from optuna_ext.samplers._pbt._population import Population
from optuna_ext.samplers._pbt.sampler import PBTSampler


if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial
    import plotly.graph_objects as go


LINEAGE_PLOT_ID = "pbt-lineage"
"""The ``graph_object_id`` of the lineage figure saved to the study for optuna-dashboard."""
SCHEDULE_PLOT_ID = "pbt-schedule"
"""The ``graph_object_id`` of the best member's hyper-parameter schedule figure."""
DASHBOARD_PLOT_HEIGHT = 450
"""The height in pixels of the box optuna-dashboard (0.21) draws a saved figure in; a taller
figure is cut off there."""
_LEGEND_ABOVE_PLOT = {
    "orientation": "h",
    "yanchor": "bottom",
    "y": 1.02,
    "xanchor": "left",
    "x": 0,
}
"""A legend in one row between the title and the plot, clear of a colorbar on the right."""


def _population(study: optuna.Study) -> Population:
    trials = study.get_trials(deepcopy=False)
    if isinstance(study.sampler, PBTSampler):
        size = study.sampler.population_size
    else:
        size = 1 + max(
            (int(t.system_attrs[MEMBER_KEY]) for t in trials if is_member_trial(t)), default=-1
        )
    return Population(trials, max(size, 1))


def _generation(trial: FrozenTrial) -> int:
    return int(trial.system_attrs[GENERATION_KEY])


def _member(trial: FrozenTrial) -> int:
    return int(trial.system_attrs[MEMBER_KEY])


def best_member_trial(study: optuna.Study) -> FrozenTrial | None:
    """The best COMPLETE member segment of the latest generation that has finished.

    The latest generation whose every member has finished (complete or failed) is used, or,
    when none has, the latest generation with a complete segment. :obj:`None` when no segment
    has completed.

    Args:
        study:
            A study run with :class:`~optuna_ext.samplers.PBTSampler`.
    """
    population = _population(study)
    generations = sorted({g for g, _ in population.slots}, reverse=True)
    finished = [g for g in generations if population.is_finished(g)]
    with_complete = [g for g in generations if any(s.complete for s in population.generation(g))]
    candidates = finished[:1] if finished and finished[0] in with_complete else []
    candidates = candidates or with_complete[:1]
    if not candidates:
        return None
    done = [s.complete for s in population.generation(candidates[0]) if s.complete is not None]
    maximize = study.direction == StudyDirection.MAXIMIZE
    return (max if maximize else min)(done, key=lambda t: float(t.value))  # type: ignore[arg-type]


def lineage(study: optuna.Study, trial: FrozenTrial | None = None) -> list[FrozenTrial]:
    """The ancestry of a member segment, generation 0 first, ending with ``trial``.

    Each segment's parent is the trial whose checkpoint it started from: its own previous
    segment, or the top member it cloned.

    Args:
        study:
            A study run with :class:`~optuna_ext.samplers.PBTSampler`.
        trial:
            The segment; defaults to :func:`best_member_trial`.
    """
    trial = trial if trial is not None else best_member_trial(study)
    if trial is None:
        return []
    population = _population(study)
    chain = [trial]
    seen = {trial.number}
    while True:
        parent = population.parent(chain[-1])
        if parent is None or parent.number in seen:
            break
        chain.append(parent)
        seen.add(parent.number)
    return chain[::-1]


def schedule(study: optuna.Study, trial: FrozenTrial | None = None) -> list[dict[str, Any]]:
    """The hyper-parameters of each segment of a lineage (see :func:`lineage`).

    Returns:
        One dict per segment: ``generation``, ``member``, ``trial`` (number), ``value``,
        ``action`` and ``params``.
    """
    out = []
    for t in lineage(study, trial):
        decision = t.system_attrs.get(DECISION_KEY) or {}
        out.append(
            {
                "generation": _generation(t),
                "member": _member(t),
                "trial": t.number,
                "value": t.value,
                "action": decision.get("action"),
                "params": dict(t.params),
            }
        )
    return out


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_lineage(study: optuna.Study, trial: FrozenTrial | None = None) -> str:
    """A text table of a lineage: one line per segment with its score, parameters and action.

    Example:

        .. testcode::

            import optuna
            from optuna_ext.pbt import format_lineage
            from optuna_ext.samplers import PBTSampler

            study = optuna.create_study(sampler=PBTSampler(population_size=2, seed=0))
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=4)
            print(format_lineage(study).splitlines()[0].split())

        .. testoutput::

            ['gen', 'member', 'trial', 'score', 'params', 'action']

    Args:
        study:
            A study run with :class:`~optuna_ext.samplers.PBTSampler`.
        trial:
            The last segment; defaults to :func:`best_member_trial`.
    """
    lines = ["gen  member  trial   score      params  action"]
    for t in lineage(study, trial):
        decision = t.system_attrs.get(DECISION_KEY) or {}
        action = str(decision.get("action", "?"))
        if action == "exploit":
            ops = decision.get("ops") or {}
            action += (
                f" member {decision.get('clone_member')} (trial {decision.get('parent')}): "
                + ", ".join(f"{k} {v}" for k, v in ops.items())
            )
        params = " ".join(f"{k}={_format_value(v)}" for k, v in t.params.items())
        score = _format_value(t.value) if t.value is not None else "-"
        lines.append(
            f"{_generation(t):>3}  {_member(t):>6}  {t.number:>5}  {score:>7}  {params}  {action}"
        )
    return "\n".join(lines)


def plot_lineage(study: optuna.Study) -> go.Figure:
    """Members over generations, coloured by score, with continue and exploit edges.

    Each complete segment is a marker at (generation, member); a grey line joins it to the
    segment it continued, a red one to the member it cloned (exploit); the best member's
    lineage is drawn thick. Failed segments are grey crosses.

    Args:
        study:
            A study run with :class:`~optuna_ext.samplers.PBTSampler`.
    """
    import plotly.graph_objects as go

    population = _population(study)
    fig = go.Figure()
    edges: dict[str, tuple[list[float | None], list[float | None]]] = {
        "continue": ([], []),
        "exploit": ([], []),
    }
    for slot in population.slots.values():
        trial = slot.complete
        if trial is None:
            continue
        parent = population.parent(trial)
        if parent is None or not is_member_trial(parent):
            continue
        decision = trial.system_attrs.get(DECISION_KEY) or {}
        kind = "exploit" if decision.get("action") == "exploit" else "continue"
        xs, ys = edges[kind]
        xs += [_generation(parent), _generation(trial), None]
        ys += [_member(parent), _member(trial), None]
    for kind, color, width in (("continue", "#bbbbbb", 1), ("exploit", "#d62728", 1.5)):
        xs, ys = edges[kind]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line={"color": color, "width": width},
                name=kind,
                hoverinfo="skip",
            )
        )
    best = lineage(study)
    if best:
        fig.add_trace(
            go.Scatter(
                x=[_generation(t) for t in best],
                y=[_member(t) for t in best],
                mode="lines",
                line={"color": "#1f77b4", "width": 4},
                name="best member's lineage",
                hoverinfo="skip",
            )
        )
    complete = [s.complete for s in population.slots.values() if s.complete is not None]
    complete.sort(key=lambda t: t.number)
    fig.add_trace(
        go.Scatter(
            x=[_generation(t) for t in complete],
            y=[_member(t) for t in complete],
            mode="markers",
            marker={
                "color": [t.value for t in complete],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": "score"},
                "size": 11,
                "line": {"width": 0.5, "color": "black"},
            },
            text=[
                f"trial {t.number}<br>score {t.value:.4g}<br>"
                + "<br>".join(f"{k}={_format_value(v)}" for k, v in t.params.items())
                for t in complete
            ],
            hoverinfo="text",
            name="segment",
        )
    )
    failed = [s.latest for s in population.slots.values() if s.failed and s.latest is not None]
    if failed:
        fig.add_trace(
            go.Scatter(
                x=[_generation(t) for t in failed],
                y=[_member(t) for t in failed],
                mode="markers",
                marker={"symbol": "x", "color": "grey", "size": 10},
                text=[f"trial {t.number} failed" for t in failed],
                hoverinfo="text",
                name="failed",
            )
        )
    fig.update_layout(
        title="PBT lineage: members over generations",
        xaxis_title="generation",
        yaxis_title="member",
        yaxis={"dtick": 1},
        legend=_LEGEND_ABOVE_PLOT,
        template="plotly_white",
    )
    return fig


def plot_schedule(
    study: optuna.Study,
    trial: FrozenTrial | None = None,
    *,
    columns: int = 1,
    height: int | None = None,
) -> go.Figure:
    """The best member's hyper-parameter schedule: each parameter and the score per generation.

    Args:
        study:
            A study run with :class:`~optuna_ext.samplers.PBTSampler`.
        trial:
            The last segment of the lineage; defaults to :func:`best_member_trial`.
        columns:
            Panels per row (one panel per parameter, and one for the score).
        height:
            The figure's height in pixels; defaults to 220 per row of panels.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if isinstance(columns, bool) or not isinstance(columns, int):
        raise TypeError(f"The value of `columns` is {columns!r}, but must be an int.")
    if columns < 1:
        raise ValueError(f"The value of `columns` is {columns}, but must be `columns >= 1`.")
    if height is not None and (isinstance(height, bool) or not isinstance(height, int)):
        raise TypeError(f"The value of `height` is {height!r}, but must be an int or None.")
    if height is not None and height < 100:
        raise ValueError(f"The value of `height` is {height}, but must be `height >= 100`.")
    chain = lineage(study, trial)
    names: list[str] = []
    for t in chain:
        names += [n for n in t.params if n not in names]
    panels = len(names) + 1
    columns = min(columns, panels)
    rows = math.ceil(panels / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        shared_xaxes=True,
        subplot_titles=names + ["score"],
    )
    generations = [_generation(t) for t in chain]

    def cell(i: int) -> dict[str, int]:
        return {"row": i // columns + 1, "col": i % columns + 1}

    for i, name in enumerate(names):
        values = [t.params.get(name) for t in chain]
        fig.add_trace(
            go.Scatter(x=generations, y=values, mode="lines+markers", line_shape="hv", name=name),
            **cell(i),
        )
        dist = next((t.distributions[name] for t in chain if name in t.distributions), None)
        if isinstance(dist, (FloatDistribution, IntDistribution)) and dist.log:
            fig.update_yaxes(type="log", **cell(i))
    fig.add_trace(
        go.Scatter(
            x=generations,
            y=[t.value if t.value is not None else math.nan for t in chain],
            mode="lines+markers",
            name="score",
        ),
        **cell(panels - 1),
    )
    for i in range(panels):
        # The bottom panel of each column carries the x axis title.
        if i + columns >= panels:
            fig.update_xaxes(title_text="generation", **cell(i))
    fig.update_layout(
        title="Best member's hyper-parameter schedule",
        height=220 * rows if height is None else height,
        showlegend=False,
        template="plotly_white",
    )
    return fig


def save_dashboard_plots(study: optuna.Study) -> None:
    """Save :func:`plot_lineage` and :func:`plot_schedule` to the study for optuna-dashboard.

    They are stored under the fixed ids :data:`LINEAGE_PLOT_ID` and :data:`SCHEDULE_PLOT_ID`,
    so saving again replaces them; several workers may save them at once
    (:func:`optuna_ext._storage.save_dashboard_figure`). The schedule is laid out two panels a
    row to fit the dashboard's box (:data:`DASHBOARD_PLOT_HEIGHT` pixels high).
    """
    from optuna_ext._storage import save_dashboard_figure

    if not any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        return
    # Every worker of `optuna_ext.pbt.run` saves them when the population is done, at the same
    # time: the save is safe against concurrent writers.
    save_dashboard_figure(study, plot_lineage(study), graph_object_id=LINEAGE_PLOT_ID)
    save_dashboard_figure(
        study,
        plot_schedule(study, columns=2, height=DASHBOARD_PLOT_HEIGHT),
        graph_object_id=SCHEDULE_PLOT_ID,
    )
