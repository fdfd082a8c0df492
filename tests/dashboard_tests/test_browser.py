"""The demo's studies in optuna-dashboard, in a real browser (Debian's Chromium, Playwright).

What a user looks for, page by page: every study in the list; the trials table with each
trial's parameters; the intermediate-values plot of a study whose trials reported steps; the
figures the package saves to the study (autoHyper's Z(lr), Hyperdyn's rate per epoch, PBT's
lineage and schedule), read off the rendered plotly SVG, and fully inside their card; and the
checkpoints listed as trial and study artifacts, downloadable and loadable with
``weights_only=True``. Every check saves a screenshot (see ``conftest.py`` for where).
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any
from typing import TYPE_CHECKING

import pytest
import torch

from optuna_ext.hyperdyn import PLOT_ID as HYPERDYN_PLOT_ID
from optuna_ext.pbt import LINEAGE_PLOT_ID
from optuna_ext.pbt import SCHEDULE_PLOT_ID
from optuna_ext.samplers._autohyper.sampler import PLOT_ID as AUTOHYPER_PLOT_ID
from tests.dashboard_tests.conftest import Dashboard
from tests.dashboard_tests.conftest import DemoStorage


if TYPE_CHECKING:
    from playwright.sync_api import Page


pytestmark = pytest.mark.slow

METHODS = ["autohyper", "tpe", "sha", "morl", "hyperdyn", "pbt"]
"""The demo's studies (``demo-<method>``): ``sha`` is Optuna's successive halving beside MORL."""

ROWS_PER_PAGE = 50
"""optuna-dashboard 0.21's trials table shows 50 rows a page."""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A figure the package saves to a study, as a user should see it on the study page."""

    plot_id: str
    title: str
    labels: tuple[str, ...]


FIGURES: dict[str, list[Figure]] = {
    "autohyper": [Figure(AUTOHYPER_PLOT_ID, "autoHyper: Z(lr)", ("lr", "Z"))],
    "hyperdyn": [
        Figure(
            HYPERDYN_PLOT_ID, "Hyperdyn: chosen lr per epoch", ("lr", "validation metric", "epoch")
        )
    ],
    "pbt": [
        Figure(LINEAGE_PLOT_ID, "PBT lineage: members over generations", ("generation", "member")),
        Figure(
            SCHEDULE_PLOT_ID,
            "Best member's hyper-parameter schedule",
            ("lr", "momentum", "weight_decay", "score", "generation"),
        ),
    ],
}

_PLOT_JS = """(selector) => {
    const root = document.querySelector(selector);
    if (root === null) return null;
    const box = (e) => {
        const b = e.getBoundingClientRect();
        return {x: b.x, y: b.y, w: b.width, h: b.height};
    };
    const legend = root.querySelector('g.legend');
    return {
        box: box(root),
        texts: Array.from(root.querySelectorAll('svg text')).map(
            (e) => ({cls: e.getAttribute('class') || '', text: e.textContent, box: box(e)})),
        legend: legend === null ? null : box(legend),
        colorbars: Array.from(root.querySelectorAll('g.colorbar')).map(box),
        points: root.querySelectorAll('g.trace path.point').length,
    };
}"""


_TABLE_JS = """(table) => [
    Array.from(table.querySelectorAll('thead th')).map(
        (th) => th.innerText.split('\\n')[0].trim()),
    Array.from(table.querySelectorAll('tbody tr')).map(
        (tr) => Array.from(tr.querySelectorAll('td')).map((td) => td.innerText.trim())),
]"""


def _goto(page: Page, dashboard: Dashboard, path: str) -> None:
    response = page.goto(f"{dashboard.url}/dashboard{path}")
    assert response is not None and response.status == 200, path


_HAS_TEXTS_JS = """([selector, exact, prefixes]) => {
    const texts = Array.from(document.querySelectorAll(selector + ' svg text'))
        .map((e) => e.textContent.trim());
    return exact.every((s) => texts.includes(s))
        && prefixes.every((p) => texts.some((t) => t.startsWith(p)));
}"""


def _plot(
    page: Page, selector: str, exact: tuple[str, ...] = (), prefixes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The texts, legend and colorbar boxes of the plotly plot at ``selector``, once it shows
    every text of ``exact`` and a text starting with each of ``prefixes`` (plotly draws the
    axes first and the data when the study has been fetched)."""
    page.wait_for_selector(f"{selector} svg.main-svg")
    try:
        page.wait_for_function(_HAS_TEXTS_JS, arg=[selector, list(exact), list(prefixes)])
    except Exception as e:  # a timeout: report what the plot does show
        texts = page.evaluate(_PLOT_JS, selector)
        shown = [t["text"] for t in texts["texts"]] if texts else None
        raise AssertionError(f"{selector}: expected {exact} and {prefixes}, shows {shown}") from e
    plot = page.evaluate(_PLOT_JS, selector)
    assert plot is not None, selector
    return dict(plot)


def _inside(inner: dict[str, float], outer: dict[str, float]) -> bool:
    slack = 1.0
    return (
        inner["w"] > 0
        and inner["h"] > 0
        and inner["x"] >= outer["x"] - slack
        and inner["y"] >= outer["y"] - slack
        and inner["x"] + inner["w"] <= outer["x"] + outer["w"] + slack
        and inner["y"] + inner["h"] <= outer["y"] + outer["h"] + slack
    )


def _overlap(a: dict[str, float], b: dict[str, float]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _visible_texts(plot: dict[str, Any]) -> list[str]:
    """The texts of the plot that lie inside its container (the dashboard clips the rest)."""
    return [t["text"] for t in plot["texts"] if _inside(t["box"], plot["box"])]


def _shoot(page: Page, selector: str, path: Path, block: str = "center") -> None:
    """Scroll ``selector`` to the middle (or the top, below the app bar) of the 1280x800
    viewport and save a screenshot."""
    page.locator(selector).first.evaluate(
        "(e, block) => { e.style.scrollMarginTop = '80px'; e.scrollIntoView({block}); }", block
    )
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


def test_study_list_shows_every_method(
    page: Page, dashboard: Dashboard, demo_storage: DemoStorage, screenshot_dir: Path
) -> None:
    _goto(page, dashboard, "/")
    for method in METHODS:
        entry = f"{demo_storage.study_id(method)}. demo-{method}"
        page.get_by_text(entry, exact=True).wait_for()
    page.screenshot(path=str(screenshot_dir / "studies.png"))


@pytest.mark.parametrize("method", METHODS)
def test_trials_table_lists_trials_with_their_parameters(
    method: str,
    page: Page,
    dashboard: Dashboard,
    demo_storage: DemoStorage,
    screenshot_dir: Path,
) -> None:
    trials = demo_storage.load(method).get_trials(deepcopy=False)
    names = sorted({name for t in trials for name in t.params})
    assert "lr" in names
    _goto(page, dashboard, f"/studies/{demo_storage.study_id(method)}/smartSelection")
    table = page.locator("table").filter(has=page.locator("th", has_text="Param lr"))
    table.wait_for()
    shown = min(len(trials), ROWS_PER_PAGE)
    page.get_by_text(f"1–{shown} of {len(trials)}", exact=True).wait_for()
    headers, rows = table.evaluate(_TABLE_JS)
    for name in names:
        assert f"Param {name}" in headers, headers
    assert len(rows) == shown
    number_col = headers.index("Number")
    lr_col = headers.index("Param lr")
    by_number = {t.number: t for t in trials}
    assert len({row[number_col] for row in rows}) == shown
    for row in rows:
        trial = by_number[int(row[number_col])]
        if "lr" in trial.params:
            assert float(row[lr_col]) == trial.params["lr"], (trial.number, row)
    _shoot(page, "table", screenshot_dir / f"{method}-trials-table.png", block="start")


@pytest.mark.parametrize("method", METHODS)
def test_study_page_shows_intermediate_values_and_saved_figures(
    method: str,
    page: Page,
    dashboard: Dashboard,
    demo_storage: DemoStorage,
    screenshot_dir: Path,
) -> None:
    study = demo_storage.load(method)
    trials = study.get_trials(deepcopy=False)
    _goto(page, dashboard, f"/studies/{demo_storage.study_id(method)}")
    history = _plot(page, "#plot-history", exact=("Trial",))
    assert "Trial" in _visible_texts(history)

    figures = FIGURES.get(method, [])
    for figure in figures:
        selector = f'[id="user-defined-plot:{figure.plot_id}"]'
        plot = _plot(page, selector, exact=figure.labels, prefixes=(figure.title,))
        texts = _visible_texts(plot)
        titles = [t for t in texts if t.startswith(figure.title)]
        assert titles, (figure.plot_id, texts)
        for label in figure.labels:
            # Inside the 450 px box the dashboard gives a figure: a taller one is cut off.
            assert label in texts, (figure.plot_id, label, texts)
        if plot["legend"] is not None:
            for colorbar in plot["colorbars"]:
                assert not _overlap(plot["legend"], colorbar), (figure.plot_id, "legend")
    shown = page.evaluate(
        "() => Array.from(document.querySelectorAll('[id^=\"user-defined-plot:\"]'))"
        ".map((e) => e.id)"
    )
    assert sorted(shown) == sorted(f"user-defined-plot:{f.plot_id}" for f in figures)
    if figures:  # PBT's two figures stand side by side: one screenshot shows both
        first = f'[id="user-defined-plot:{figures[0].plot_id}"]'
        _shoot(page, first, screenshot_dir / f"{method}-figures.png")

    if method == "autohyper":
        # One marker per evaluated learning rate (the search's completed trials).
        plot = _plot(page, f'[id="user-defined-plot:{AUTOHYPER_PLOT_ID}"]')
        complete = [t for t in trials if t.state.name == "COMPLETE"]
        assert plot["points"] == len(complete)

    reported = [t for t in trials if t.intermediate_values]
    if reported:
        plot = _plot(page, "#graph-intermediate-values", exact=("Step", "Objective Value"))
        texts = _visible_texts(plot)
        assert "Step" in texts and "Objective Value" in texts, texts
        legend = {t["text"].strip() for t in plot["texts"] if t["cls"] == "legendtext"}
        assert legend == {f"trial #{t.number}" for t in reported}
        _shoot(
            page,
            "#graph-intermediate-values",
            screenshot_dir / f"{method}-intermediate-values.png",
        )
    else:
        # Hyperdyn's candidates are told once, with no steps: no plot to show.
        assert page.locator("#graph-intermediate-values").count() == 0

    # Checkpoints that belong to the study itself (Hyperdyn's initial state) are listed.
    system_attrs = study._storage.get_study_system_attrs(study._study_id)
    expected = sorted(
        json.loads(v)["filename"] for k, v in system_attrs.items() if k.startswith("artifacts:")
    )
    card = page.locator(".MuiCard-root").filter(
        has=page.get_by_text("Study Artifacts", exact=True)
    )
    card.get_by_text("Upload a New File").wait_for()
    listed = sorted(
        card.locator('a[aria-label="download artifact"]').evaluate_all(
            "(links) => links.map((a) => a.getAttribute('download'))"
        )
    )
    assert listed == expected
    if expected:
        _shoot(
            page,
            ".MuiCard-root:has-text('Study Artifacts')",
            screenshot_dir / f"{method}-study-artifacts.png",
        )


@pytest.mark.parametrize("method", ["pbt", "hyperdyn"])
def test_checkpoint_is_listed_and_downloadable_on_its_trial(
    method: str,
    page: Page,
    dashboard: Dashboard,
    demo_storage: DemoStorage,
    screenshot_dir: Path,
) -> None:
    study_id = demo_storage.study_id(method)
    trials = demo_storage.load(method).get_trials(deepcopy=False)
    with_checkpoints = [
        t for t in trials if any(k.startswith("artifacts:") for k in t.system_attrs)
    ]
    assert with_checkpoints, f"demo-{method} saved no checkpoint"
    trial = with_checkpoints[-1]
    artifacts = [
        json.loads(v) for k, v in trial.system_attrs.items() if k.startswith("artifacts:")
    ]
    _goto(page, dashboard, f"/studies/{study_id}/trials?numbers={trial.number}")
    page.get_by_text(f"Trial {trial.number} (trial_id={trial._trial_id})", exact=True).wait_for()
    page.get_by_role("heading", name="Artifacts", exact=True).wait_for()
    links = page.locator('a[aria-label="download artifact"]')
    links.first.wait_for()
    assert links.count() == len(artifacts)
    for meta in artifacts:
        link = page.locator(f'a[aria-label="download artifact"][download="{meta["filename"]}"]')
        href = link.get_attribute("href")
        assert href == f"/artifacts/{study_id}/{trial._trial_id}/{meta['artifact_id']}"
        page.get_by_text(meta["filename"], exact=True).wait_for()
        response = page.request.get(f"{dashboard.url}{href}")
        assert response.status == 200
        body = response.body()
        assert body == (demo_storage.artifact_dir / meta["artifact_id"]).read_bytes()
        state = torch.load(io.BytesIO(body), weights_only=True)
        assert isinstance(state, dict) and "model" in state and "optimizer" in state
    shot = screenshot_dir / f"{method}-trial-artifacts.png"
    _shoot(page, "h5:text-is('Artifacts')", shot, block="start")
