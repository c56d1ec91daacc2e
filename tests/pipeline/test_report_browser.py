"""The report as a person sees it: rendered by headless Chromium, each figure screenshotted and checked.

The report is built from files only (event log, watch history; the registry's versions are injected, the one
part that needs MLflow), so no service runs. Chromium lays the page out once to say where each figure is
(``--dump-dom`` after a small layout probe), then screenshots the whole page at that height; each figure is
cropped from it and must be non-blank, with the colours of its distinct series present in the pixels.
Any console message (an error, an uncaught exception) fails the test: the report has no scripts of its own.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.report
from pipeline import figures
from pipeline.history import history_store
from pipeline.report import collect_inputs, render_report
from tests.pipeline import report_fixture

INSTALL = "apt-get install -y chromium (CI installs it through .ci/run)"
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--enable-logging=stderr",
    "--v=0",
)
WIDTH = 1280
# Records every figure's box into the DOM once the page has loaded, for --dump-dom to hand back.
LAYOUT_PROBE = (
    "<script>addEventListener('load',()=>{const f=[...document.querySelectorAll('figure')].map(e=>{"
    "const b=e.getBoundingClientRect();return {id:e.id,x:b.left+scrollX,y:b.top+scrollY,w:b.width,h:b.height}});"
    "const p=document.createElement('pre');p.id='layout';"
    "p.textContent=JSON.stringify({height:document.documentElement.scrollHeight,figures:f});"
    "document.body.appendChild(p);});</script>"
)


def chromium() -> str:
    """The Chromium binary; the test fails (never skips) without it, saying what to install."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"headless Chromium is needed to check the report as a person sees it: {INSTALL}")


def run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One headless Chromium run with a fresh profile, bounded in time."""
    return subprocess.run(
        [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def console_messages(stderr: str) -> list[str]:
    """The page's console lines in Chromium's log (console.error, uncaught exceptions, warnings)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def layout(binary: str, page: Path, work: Path) -> tuple[dict, list[str]]:
    """Each figure's box and the page height, as Chromium lays the page out; and the console lines."""
    probe = work / "probe.html"
    probe.write_text(page.read_text().replace("</body>", LAYOUT_PROBE + "</body>"))
    done = run_chromium(
        binary,
        work / "profile-layout",
        f"--window-size={WIDTH},1000",
        "--virtual-time-budget=5000",
        "--dump-dom",
        probe.as_uri(),
    )
    assert done.returncode == 0, f"chromium --dump-dom failed: {done.stderr[-2000:]}"
    found = re.search(r'<pre id="layout">([^<]*)</pre>', done.stdout)
    assert found, "expected the layout probe's record in the dumped DOM"
    return json.loads(found.group(1)), console_messages(done.stderr)


def screenshot(binary: str, page: Path, height: int, out: Path) -> list[str]:
    """The whole page as one PNG; returns the console lines."""
    done = run_chromium(
        binary,
        out.parent / "profile-shot",
        f"--window-size={WIDTH},{height}",
        f"--screenshot={out}",
        page.as_uri(),
    )
    assert done.returncode == 0 and out.is_file(), f"chromium --screenshot failed: {done.stderr[-2000:]}"
    return console_messages(done.stderr)


def colour_pixels(image: np.ndarray, colour: str, tolerance: int = 40) -> int:
    """How many pixels are within ``tolerance`` (per channel) of a ``#rrggbb`` colour."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
    return int((np.abs(image[:, :, :3].astype(int) - target).max(axis=2) <= tolerance).sum())


def distinct_hues(image: np.ndarray) -> int:
    """Saturated colours present in quantity (grey, black and white left out): how many series can be told apart."""
    rgb = image[:, :, :3].astype(int)
    saturated = rgb[(rgb.max(axis=2) - rgb.min(axis=2)) > 60]
    if saturated.size == 0:
        return 0
    buckets, counts = np.unique(saturated // 48, axis=0, return_counts=True)
    return int((counts >= 40).sum())


# What each figure of the fixture must show: the colour of each series that has to be there.
EXPECTED_COLOURS = {
    "stage-durations": figures.PALETTE[:2],
    "model-metrics": figures.PALETTE[:5],
    "gate-decision": (figures.PASS_COLOUR, figures.FAIL_COLOUR),
    "rollout-timeline": (figures.CANDIDATE_COLOUR, figures.CHAMPION_COLOUR, figures.FAIL_COLOUR),
    "rollout-timeline-2": (figures.CANDIDATE_COLOUR, figures.CHAMPION_COLOUR, figures.PASS_COLOUR),
    "serving": (
        *figures.PALETTE[:3],
        figures.MARKER_COLOURS["promotion"],
        figures.MARKER_COLOURS["rollback"],
    ),
    "drift-scores": figures.PALETTE[:5],
    "drift-histograms": (figures.CHAMPION_COLOUR, figures.CANDIDATE_COLOUR),
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict[str, np.ndarray], list[str]]:
    """The fixture's report in Chromium: its layout, each figure's pixels, and every console line."""
    binary = chromium()
    work = tmp_path_factory.mktemp("report")
    events_file, state = report_fixture.write_files(work)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.report, "registered_versions", lambda model_name: report_fixture.versions())
        inputs = collect_inputs(
            report_fixture.PIPELINE,
            report_fixture.MODEL,
            events_file,
            history_store(state, report_fixture.MODEL),
        )
    page = work / "report.html"
    page.write_text(render_report(inputs, generated_at=report_fixture.T0 + 4_000))
    boxes, console = layout(binary, page, work)
    shot = work / "report.png"
    console += screenshot(binary, page, int(boxes["height"]) + 20, shot)
    image = np.asarray(Image.open(shot).convert("RGB"))
    crops = {}
    for box in boxes["figures"]:
        top, left = int(box["y"]), int(box["x"])
        crops[box["id"]] = image[top : top + int(box["h"]), left : left + int(box["w"])]
        Image.fromarray(crops[box["id"]]).save(work / f"{box['id']}.png")
    return boxes, crops, console


def test_the_report_renders_without_console_messages(rendered) -> None:
    _, _, console = rendered
    assert console == [], f"expected a silent console, got {console}"


def test_every_figure_is_on_the_page_in_order(rendered) -> None:
    boxes, _, _ = rendered
    ids = [box["id"] for box in boxes["figures"]]
    assert ids == list(EXPECTED_COLOURS), f"expected the fixture's figures in order, got {ids}"
    assert all(box["h"] > 150 for box in boxes["figures"]), "every figure drawn with a real height"


@pytest.mark.parametrize("identifier", list(EXPECTED_COLOURS))
def test_each_figure_is_drawn_with_its_series_distinguishable(rendered, identifier: str) -> None:
    _, crops, _ = rendered
    crop = crops[identifier]
    # Not blank: a real share of the figure is ink, and it is not one flat colour.
    ink = (crop[:, :, :3].min(axis=2) < 200).mean()
    assert ink > 0.01 and crop.std() > 20, f"{identifier}: expected a drawn figure, {ink:.1%} ink"
    # Its series can be told apart: each expected colour is there, and as many distinct hues as series.
    missing = [c for c in EXPECTED_COLOURS[identifier] if colour_pixels(crop, c) < 30]
    assert not missing, f"{identifier}: expected pixels of colours {missing}"
    assert distinct_hues(crop) >= len(set(EXPECTED_COLOURS[identifier])), (
        f"{identifier}: too few distinct hues"
    )


def test_each_caption_sits_above_its_figure(rendered) -> None:
    _, crops, _ = rendered
    for identifier, crop in crops.items():
        rows_with_ink = np.flatnonzero((crop[:, :, :3].min(axis=2) < 120).any(axis=1))
        first_plot_row = next(
            (row for row in rows_with_ink if (crop[row, :, :3].min(axis=1) < 120).mean() > 0.3), None
        )
        assert rows_with_ink.size and first_plot_row is not None, f"{identifier}: expected text and a plot"
        assert rows_with_ink[0] < first_plot_row, f"{identifier}: expected the caption above the plot"


def test_the_console_scan_catches_a_page_error(tmp_path: Path) -> None:
    # Given a page that logs an error and throws, when Chromium renders it, then the scan reports both
    binary = chromium()
    page = tmp_path / "bad.html"
    page.write_text("<html><body><script>console.error('boom'); notDefined();</script></body></html>")
    done = run_chromium(
        binary, tmp_path / "profile", "--virtual-time-budget=2000", "--dump-dom", page.as_uri()
    )
    messages = console_messages(done.stderr)
    assert len(messages) == 2 and "notDefined" in messages[1], f"expected two console lines, got {messages}"
