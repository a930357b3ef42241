"""The scorecard's HTML page: one self-contained file with its four plots, checked in the page's
structure and, where Chromium is installed, in a headless render a person would look at."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.unit.test_report_scorecard import _at, _history
from tuneline.report.page import FIGURE_IDS, render
from tuneline.report.scorecard import Budget, Estimate, Owner, build_scorecard


class _Structure(HTMLParser):
    """The ids of the page's elements, the external resources it would load, the links a reader
    may follow (the runbook) and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.external: list[str] = []
        self.links: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.append(str(values["id"]))
        if tag == "script":
            self.scripts += 1
        if tag == "a":  # followed by a reader, never loaded by the page
            self.links.append(str(values.get("href")))
            return
        for attribute in ("src", "href"):
            if (link := values.get(attribute)) and re.match(r"^(https?:)?//", link):
                self.external.append(link)


@pytest.fixture(scope="module")
def page_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    card = build_scorecard(_history(), start=_at(0), end=_at(60))
    path = tmp_path_factory.mktemp("report") / "scorecard.html"
    path.write_text(render(card), encoding="utf-8")
    return path


def test_the_page_holds_its_four_plots_and_needs_nothing_from_the_network(page_file: Path):
    text = page_file.read_text(encoding="utf-8")
    structure = _Structure()
    structure.feed(text)
    for figure_id in FIGURE_IDS:
        assert figure_id in structure.ids
        assert f"{figure_id}-plot" in structure.ids  # the plotly div inside it
    assert structure.external == []  # opens offline: no CDN, no remote stylesheet
    assert "Plotly.newPlot" in text
    assert len(text) > 1_000_000
    assert "a.step-10" in text
    assert "regression rate" in text


def test_headless_chromium_draws_every_plot(page_file: Path, tmp_path: Path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (apt-get install chromium) to render the page")
    run = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            page_file.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    # once plotly has drawn a figure, its div holds an <svg class="main-svg">
    drawn = re.findall(r'id="([a-z-]+)-plot"[^>]*class="[^"]*js-plotly-plot', run.stdout)
    drawn += re.findall(r'class="[^"]*js-plotly-plot[^"]*"[^>]*id="([a-z-]+)-plot"', run.stdout)
    assert sorted(set(drawn)) == sorted(FIGURE_IDS)
    assert run.stdout.count('class="main-svg"') >= len(FIGURE_IDS)


def test_the_page_names_the_owner_links_the_runbook_and_sets_each_estimate_beside_its_run():
    history = _history()
    runs = dict(history.runs)
    runs["trainingJobs/a"] = replace(
        runs["trainingJobs/a"], estimate=Estimate(1200, 36.0, 0.06, "USD")
    )
    history = replace(
        history,
        runs=runs,
        owner=Owner("support-ml", "#support-ml", "https://runbooks.example.com/sentiment"),
        budget=Budget(per_run=5.0, currency="USD"),
    )
    text = render(build_scorecard(history, start=_at(0), end=_at(60)))
    structure = _Structure()
    structure.feed(text)
    assert structure.links == ["https://runbooks.example.com/sentiment"]
    assert structure.external == []
    assert "owner support-ml · #support-ml" in text
    assert "USD 5.00 per run" in text
    assert "Runs: estimate and actual" in text
    assert "<td>0.0600</td><td>0.0500</td><td>+20%</td>" in text  # run a: estimate, cost, error
