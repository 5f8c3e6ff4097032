"""Fixtures for the browser tests: Debian's chromium, headless, driven by Selenium through
Debian's chromium-driver (`scripts/setup --dev` installs both), a fresh profile per test, and
the screenshot directory ($PATCHGUARD_ARTIFACTS, else a temp dir)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = Path("/usr/bin/chromium")
DRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in a container: the sandbox cannot start
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--window-size=1280,900",
)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go: CI keeps $PATCHGUARD_ARTIFACTS."""
    given = os.environ.get("PATCHGUARD_ARTIFACTS")
    path = Path(given) if given else Path(tempfile.mkdtemp(prefix="patchguard-artifacts-"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    for needed in (CHROMIUM, DRIVER):
        if not needed.exists():
            pytest.fail(f"{needed} missing: run scripts/setup --dev (chromium, chromium-driver)")
    profile = Path(tempfile.mkdtemp(prefix="patchguard-chromium-"))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(str(DRIVER)))
    try:
        # No script runs on these pages: prove they work without it.
        driver.execute_cdp_cmd("Emulation.setScriptExecutionDisabled", {"value": True})
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
