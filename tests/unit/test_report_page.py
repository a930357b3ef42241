"""The scorecard's HTML page: one self-contained file with its four plots, checked in the page's
structure and, where Chromium is installed, in a headless render a person would look at."""

from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.unit.test_report_scorecard import _at, _history
from tuneline.report.page import FIGURE_IDS, render
from tuneline.report.scorecard import build_scorecard


class _Structure(HTMLParser):
    """The ids of the page's elements, its external references and its inline scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []
        self.external: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if values.get("id"):
            self.ids.append(str(values["id"]))
        if tag == "script":
            self.scripts += 1
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
