"""The PBT figures: the schedule's layout and the figures as saved for optuna-dashboard."""

from __future__ import annotations

import json
from pathlib import Path

from optuna.artifacts import FileSystemArtifactStore
from optuna_dashboard._custom_plot_data import get_plotly_graph_objects
import pytest

import optuna_ext.pbt
from optuna_ext.pbt._lineage import DASHBOARD_PLOT_HEIGHT
from tests.pbt_tests.test_harness import _study
from tests.pbt_tests.test_harness import linear_segment


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory):
    study = _study()
    store = FileSystemArtifactStore(str(tmp_path_factory.mktemp("artifacts")))
    optuna_ext.pbt.run(study, linear_segment(), n_generations=3, artifact_store=store)
    return study


def _x_domains(layout: dict) -> set[tuple[float, float]]:
    return {tuple(v["domain"]) for k, v in layout.items() if k.startswith("xaxis")}


def test_schedule_is_one_column_of_panels_by_default(study) -> None:
    figure = optuna_ext.pbt.plot_schedule(study).to_plotly_json()
    layout = figure["layout"]
    # One panel per parameter (lr) and one for the score, stacked, 220 px each.
    assert len(figure["data"]) == 2
    assert len(_x_domains(layout)) == 1
    assert layout["height"] == 2 * 220
    titles = [a["text"] for a in layout["annotations"]]
    assert titles == ["lr", "score"]


def test_schedule_in_columns_and_given_height(study) -> None:
    figure = optuna_ext.pbt.plot_schedule(study, columns=2, height=300).to_plotly_json()
    assert len(_x_domains(figure["layout"])) == 2
    assert figure["layout"]["height"] == 300
    # More columns than panels: one row of all the panels.
    wide = optuna_ext.pbt.plot_schedule(study, columns=5).to_plotly_json()
    assert len(_x_domains(wide["layout"])) == 2 and wide["layout"]["height"] == 220


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"columns": 0}, ValueError, "`columns` is 0, but must be `columns >= 1`"),
        ({"columns": "2"}, TypeError, "`columns` is '2'"),
        ({"columns": True}, TypeError, "`columns` is True"),
        ({"height": 50}, ValueError, "`height` is 50, but must be `height >= 100`"),
        ({"height": 300.0}, TypeError, "`height` is 300.0"),
    ],
)
def test_schedule_rejects_bad_layout(study, kwargs: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        optuna_ext.pbt.plot_schedule(study, **kwargs)


def test_saved_figures_fit_the_dashboard_box(study, tmp_path: Path) -> None:
    figures = get_plotly_graph_objects(study._storage.get_study_system_attrs(study._study_id))
    schedule = json.loads(figures[optuna_ext.pbt.SCHEDULE_PLOT_ID])
    # optuna-dashboard 0.21 draws a saved figure in a 450 px box and cuts off the rest.
    assert schedule["layout"]["height"] <= DASHBOARD_PLOT_HEIGHT == 450
    assert len(_x_domains(schedule["layout"])) == 2
    lineage = json.loads(figures[optuna_ext.pbt.LINEAGE_PLOT_ID])
    assert "height" not in lineage["layout"]  # fills the box
    # The legend is one row above the plot: on the right it would cover the score colorbar.
    legend = lineage["layout"]["legend"]
    assert legend["orientation"] == "h" and legend["y"] > 1 and legend["yanchor"] == "bottom"
    assert any(t.get("marker", {}).get("showscale") for t in lineage["data"])
