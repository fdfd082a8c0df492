from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from typing import Any
from typing import TYPE_CHECKING

import plotly.graph_objects as go
from plotly.subplots import make_subplots


if TYPE_CHECKING:
    from optuna.trial import FrozenTrial


def plot_chosen_params(
    records: Sequence[Mapping[str, Any]],
    trials: Sequence[FrozenTrial],
    time_param: str,
    names: Sequence[str],
) -> go.Figure:
    """Plot the kept hyper-parameter per epoch and the metric of the kept weights.

    Paper 002, Figure 2(a) (the learning rate Hyperdyn chooses at each epoch). The top panel
    shows the kept value of the first tuned parameter (``lr`` when tuned) per epoch as a line,
    every evaluated candidate as a faint marker and the epochs where the rate switched as
    diamonds; the bottom panel shows the validation metric of the kept weights.

    Args:
        records: The epoch records of :class:`~optuna_ext.hyperdyn.HyperdynTuner`.
        trials: The study's trials (for the candidates).
        time_param: The name of the epoch parameter.
        names: The tuned parameter names.
    """
    name = "lr" if "lr" in names else names[0]
    epochs = [int(r["epoch"]) for r in records]
    chosen = [float(r["params"][name]) for r in records]
    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08)
    candidates = [
        t for t in trials if time_param in t.params and name in t.params and t.values is not None
    ]
    figure.add_trace(
        go.Scatter(
            x=[t.params[time_param] for t in candidates],
            y=[t.params[name] for t in candidates],
            mode="markers",
            marker={"size": 6, "opacity": 0.35, "color": "gray"},
            name="candidates",
            text=[f"trial {t.number}, acc_diff {t.values[0]:.3g}" for t in candidates],
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Scatter(x=epochs, y=chosen, mode="lines+markers", name=f"chosen {name}"),
        row=1,
        col=1,
    )
    switches = [(e, v) for e, v, r in zip(epochs, chosen, records, strict=True) if r["switched"]]
    figure.add_trace(
        go.Scatter(
            x=[e for e, _ in switches],
            y=[v for _, v in switches],
            mode="markers",
            marker={"symbol": "diamond", "size": 10},
            name="switch",
        ),
        row=1,
        col=1,
    )
    figure.add_trace(
        go.Scatter(
            x=epochs,
            y=[float(r["accuracy"]) for r in records],
            mode="lines+markers",
            name="validation metric",
        ),
        row=2,
        col=1,
    )
    if all(v > 0 for v in chosen):
        figure.update_yaxes(type="log", row=1, col=1)
    figure.update_yaxes(title_text=name, row=1, col=1)
    figure.update_yaxes(title_text="validation metric", row=2, col=1)
    figure.update_xaxes(title_text="epoch", row=2, col=1)
    figure.update_layout(title=f"Hyperdyn: chosen {name} per epoch")
    return figure
