"""The report in a real browser: no console or page errors, every figure decodes, a screenshot.

Needs Debian's chromium (`apt-get install -y chromium`) and Playwright for Python; skips otherwise,
unless HARNESS_REQUIRE_BROWSER=1 (as in CI), where a missing browser fails. With
REPORT_HTML=reports/collapse.html it also checks that page (CI: the default study's report).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from harness.aggregate import aggregate
from harness.report.page import render
from tests.test_aggregate import make_runs, make_study, realistic_special

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync"]

pytestmark = pytest.mark.browser


def _unavailable(reason: str):
    if os.environ.get("HARNESS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"HARNESS_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("playwright for Python is not installed")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield browser
        browser.close()


def check_in_browser(browser, html: Path, n_figures: int, screenshot: Path, smoke: bool = True) -> None:
    """Open ``html`` from disk: no console or page errors, nothing fetched, every figure decoded, the
    smoke banner shown when the study is a smoke study."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    problems = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(html.as_uri(), wait_until="load")

    images = page.eval_on_selector_all(
        "img", "els => els.map(e => ({alt: e.alt, complete: e.complete, w: e.naturalWidth, h: e.naturalHeight}))")
    assert len(images) == n_figures, images
    for image in images:
        assert image["complete"] and image["w"] > 0 and image["h"] > 0, image
    assert page.locator("#smoke-banner").is_visible() == smoke
    assert page.locator("section#claims table").count() >= 1
    assert requests == [html.as_uri()]  # self-contained: nothing fetched beyond the page itself
    # nothing widens the page past the window: wide tables scroll inside their own box
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    assert problems == []

    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000
    page.close()


def test_report_opens_cleanly_with_every_figure_decoded(browser, tmp_path):
    study = make_study(published="seed-enwik8-70m")
    run_dirs = make_runs(tmp_path / "results", study, realistic_special(study))
    aggregate(run_dirs, tmp_path / "agg", study)
    html = tmp_path / "report.html"
    render(tmp_path / "agg", html)
    check_in_browser(browser, html, 5, Path(os.environ.get("REPORT_SCREENSHOT", tmp_path / "report.png")))


@pytest.mark.skipif(not os.environ.get("REPORT_HTML"), reason="set REPORT_HTML to check a rendered report")
def test_a_given_report_opens_cleanly(browser, tmp_path):
    """A rendered report (CI: the default smoke study's; by hand: any, e.g. the stability study's)."""
    html = Path(os.environ["REPORT_HTML"]).resolve()
    text = html.read_text()
    figures = text.count("<figure ")  # the page's own figures (the study decides which it has)
    assert figures >= 5
    check_in_browser(browser, html, figures, html.with_suffix(".png"), smoke='id="smoke-banner"' in text)
