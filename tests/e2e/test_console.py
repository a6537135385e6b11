"""The console in a real browser: Debian's chromium driven by Playwright (never a
downloaded browser), against a real ``serve`` on the embedded transport. Signs in, then
clicks flows -> executions -> a failed execution -> its dead letter -> edit and replay,
and the compensated letter's override; a screenshot of each page goes to a temp dir
(``STREAMFLOW_CONSOLE_SHOTS=DIR`` keeps them there: docs/console/ is made that way).

Without chromium the test is skipped, except under CI=true, where it fails."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.consolekit import OPERATOR, SECRETS, VIEWER, Served, served

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--no-first-run", "--disable-quic",
]  # fmt: skip


def _browser_or_skip() -> Any:
    missing = ""
    if not os.path.exists(CHROMIUM):
        missing = f"{CHROMIUM} is missing (apt-get install -y --no-install-recommends chromium)"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = missing or "the playwright package is missing (pip install -e '.[dev]')"
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing + " (CI=true: the browser test must run)")
        pytest.skip(missing)
    return sync_playwright


@pytest.fixture
def srv(tmp_path: Path, unique: str) -> Iterator[Served]:
    with served(tmp_path, f"local://{tmp_path / 'broker'}", f"console-{unique}") as s:
        yield s


def test_console_in_a_real_browser(srv: Served, tmp_path: Path) -> None:
    sync_playwright = _browser_or_skip()
    shots = Path(os.environ.get("STREAMFLOW_CONSOLE_SHOTS") or tmp_path / "shots")
    shots.mkdir(parents=True, exist_ok=True)
    c, b = srv.ids["C-3"], srv.ids["B-2"]
    seen: list[str] = []  # every page's text and every API answer the browser got

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 860})
            page.on(
                "response",
                lambda r: seen.append(r.text()) if "/api/v1/" in r.url else None,
            )
            page.on("dialog", lambda d: d.accept())  # the override's confirmation
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))

            def shot(name: str) -> None:
                seen.append(page.inner_text("body"))
                page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

            # sign in: a viewer first (no replay button), then the operator
            page.goto(srv.base + "/console/")
            page.fill("#token", VIEWER)
            page.click("button[type=submit]")
            page.wait_for_selector("section[data-flow=orders] .plan")
            assert page.inner_text("#role") == "viewer"
            page.click("#signout")
            page.fill("#token", OPERATOR)
            page.click("button[type=submit]")
            page.wait_for_selector("section[data-flow=orders] .plan")
            assert page.inner_text("#role") == "operator"
            plan = page.inner_text("section[data-flow=orders] .plan")
            for step in ("manual", "stamp", "announce", "reserve", "ship", "undo: release"):
                assert step in plan
            shot("1-flows")

            # executions, filtered to failures
            page.click("a[data-nav=executions]")
            page.wait_for_selector(f"#executions tr[data-id='{c}']")
            page.select_option("select[name=status]", "failed")
            page.click("form.filters button[type=submit]")
            page.wait_for_url("**status=failed**")
            page.wait_for_selector(f"#executions tr[data-id='{c}']")
            assert page.locator("#executions tbody tr").count() == 1
            shot("2-executions")

            # the failed execution: its timeline, then its dead letter
            page.click(f"#executions tr[data-id='{c}'] a")
            page.wait_for_selector(".timeline li")
            assert "quantity out of range" in page.inner_text("main")
            page.click(".timeline li:nth-child(2) summary")  # the payload after `stamp`
            assert '"source": "shop"' in page.inner_text(".timeline li:nth-child(2) pre")
            shot("3-execution")
            page.click("#letters a")
            page.wait_for_selector("#payload")
            shot("4-dead-letter")

            # edit the payload and replay: the execution continues and completes
            text = page.input_value("#payload").replace('"qty": -5', '"qty": 2')
            assert '"qty": 2' in text
            page.fill("#payload", text)
            page.click("#replay")
            page.wait_for_selector("#replay-status .ok")
            srv.wait_status(c, "completed")
            shot("5-replayed")
            page.click("#replay-status a")
            page.wait_for_selector("main dd .badge.completed")  # (the page's CSP forbids eval)
            assert "replayed" in page.inner_text(".timeline")
            shot("6-execution-after-replay")

            # the compensated execution's letter: refused until the override is ticked
            page.goto(srv.base + "/console/#/dead-letters?flow=orders")
            page.wait_for_selector("#dead-letters tbody tr")
            row = page.locator("#dead-letters tbody tr", has_text=b)
            assert "compensated" in row.inner_text()
            row.locator("a").first.click()
            page.wait_for_selector("#compensated-warning")
            assert page.is_disabled("#replay")
            assert "Replay anyway" in page.inner_text("#compensated-warning")
            shot("7-compensated-dead-letter")
            page.check("#override")
            assert page.is_enabled("#replay")
            page.click("#replay")
            page.wait_for_selector("#replay-status .ok")

            # live updates: a new execution appears in the open list without a reload
            page.goto(srv.base + "/console/#/executions")
            page.wait_for_selector("#executions tbody tr")
            [new] = srv.produce([{"id": "D-4", "qty": 1}])
            page.wait_for_selector(f"#executions tr[data-id='{new}']", timeout=20_000)
            shot("8-executions-live")
            assert not errors, errors
        finally:
            browser.close()

    for secret in SECRETS:
        assert not [t for t in seen if secret in t], secret
    keep = os.environ.get("STREAMFLOW_CONSOLE_SHOTS")
    if keep is None:  # the test's own temp dir: show where they are
        print(f"screenshots in {shots}: {sorted(f.name for f in shots.iterdir())}")
    assert len(list(shots.glob("*.png"))) == 8
    shutil.rmtree(tmp_path / "broker", ignore_errors=True)
