"""Real-browser tests: Debian's Chromium driven by Playwright (never a downloaded browser)
against a gateway process that serves the admin with its collected static files.
A failing test leaves a screenshot in ``test-artifacts/screenshots/``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.proxy_fixtures import GATEWAY_PREFIX, _database_url

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"


def chromium_path() -> str | None:
    configured = os.environ.get("TOLLGATE_CHROMIUM")
    if configured:
        return configured
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture(scope="module")
def browser() -> Iterator:  # type: ignore[type-arg]
    """Module-scoped: Playwright's sync API runs an event loop in this thread while it is
    open, which later tests calling asyncio.run() must not inherit."""
    executable = chromium_path()
    if executable is None:
        pytest.skip("Chromium is not installed (make test installs Debian's chromium as root)")
    from playwright.sync_api import sync_playwright

    # Django's ORM sees that loop and would refuse the tests' plain synchronous queries.
    previous = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=executable, headless=True)
            yield browser
            browser.close()
    finally:
        if previous is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = previous


@pytest.fixture
def page(browser, request: pytest.FixtureRequest) -> Iterator:  # type: ignore[no-untyped-def]
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"{request.node.name}.png"), full_page=True)
    context.close()


@pytest.fixture(scope="session")
def static_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("static")
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
        check=True,
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "TOLLGATE_STATIC_ROOT": str(root)},
    )
    return root


@pytest.fixture
def admin_gateway(proxy, start_gateway, static_root: Path) -> str:  # type: ignore[no-untyped-def]
    """A gateway process like the session one, serving the admin's static files too."""
    return start_gateway(
        DATABASE_URL=_database_url(),
        TOLLGATE_REDIS_PREFIX=GATEWAY_PREFIX,
        TOLLGATE_STATIC_ROOT=str(static_root),
    )
