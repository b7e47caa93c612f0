"""The report in a real browser: no console or page errors, every figure decodes, a screenshot.

Needs Debian's chromium (`apt-get install -y chromium`) and Playwright for Python; skips otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.aggregate import aggregate
from harness.report import render
from tests.test_aggregate import make_runs, make_study, realistic_special

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright for Python is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def test_report_opens_cleanly_with_every_figure_decoded(browser, tmp_path):
    study = make_study(published="seed-enwik8-70m")
    run_dirs = make_runs(tmp_path / "results", study, realistic_special(study))
    aggregate(run_dirs, tmp_path / "agg", study)
    html = tmp_path / "report.html"
    render(tmp_path / "agg", html)

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri(), wait_until="load")

    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({alt: e.alt, complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
    assert len(images) == 5, images
    for image in images:
        assert image["complete"] and image["w"] > 0 and image["h"] > 0, image
    assert page.locator("#smoke-banner").is_visible()
    assert page.locator("section#claims table").count() >= 1
    assert requests == [html.as_uri()]  # self-contained: nothing fetched beyond the page itself
    assert problems == []

    shot = Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "report.png"))
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()
