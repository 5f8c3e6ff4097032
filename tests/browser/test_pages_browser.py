"""The server's pages read in a real browser (headless chromium, script disabled) as a person
would: a real `patchguard server` on SQLite, the ledger made with the real CLI and imported
the way the server takes it, a real host process sending heartbeats. Screenshots of each page
at phone width (390 px) and desktop width go to $PATCHGUARD_ARTIFACTS."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.wait import WebDriverWait
from support.synthetic_ledger import MANIFEST

VENDOR = "<script>alert(1)</script> <b>Corp</b>"
HOST_NAME = "<b>edge-1</b>"
PHONE, DESKTOP = (390, 844), (1280, 900)
CLI = (sys.executable, "-m", "patchguard.cli")


def cli(*args: str) -> str:
    """One real `patchguard` command; its stdout."""
    done = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"patchguard {' '.join(args)}: {done.stderr}"
    return done.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    url: str
    db: str
    workdir: Path


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`patchguard server` on SQLite in tmp_path, on a free loopback port; a host is silent
    after 2 missed heartbeats, looked for every half second."""
    db, port = f"sqlite:///{tmp_path / 'server.db'}", _free_port()
    argv = [*CLI, "server", "--db", db, "--listen", f"127.0.0.1:{port}"]
    argv += ["--key", str(tmp_path / "server.key"), "--missed-heartbeats", "2"]
    argv += ["--silence-check", "0.5"]
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until(lambda: _answers(url), 30, f"the server at {url} did not start")
        yield Served(url, db, tmp_path)
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def _answers(url: str) -> bool:
    with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/api/v1/health", timeout=1):
        return True
    return False


def _wait_until(ready: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not ready():
        assert time.monotonic() < deadline, what
        time.sleep(0.25)


def shoot(driver: webdriver.Chrome, artifacts: Path, name: str, size: tuple[int, int]) -> Path:
    """A screenshot of the whole page at this viewport width (a phone's is a mobile one);
    nothing on the page may be wider than the window."""
    width, height = size
    metrics = {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600}
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    layout = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    full = min(int(layout["cssContentSize"]["height"]) + 1, 4000)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {**metrics, "height": full})
    path = artifacts / f"{name}-{width}.png"
    assert driver.save_screenshot(str(path))
    too_wide = _too_wide(driver, width)
    driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    assert not too_wide, f"{name} ({path}) is wider than {width} px: {too_wide[:5]}"
    return path


def _too_wide(driver: webdriver.Chrome, width: int) -> list[str]:
    """What on the page reaches past the right edge of a `width` wide window."""
    found = []
    for e in driver.find_elements(By.CSS_SELECTOR, "header *, main *"):
        right = e.rect["x"] + e.rect["width"]
        if right > width + 0.5 and e.is_displayed():
            found.append(f"<{e.tag_name} class={e.get_attribute('class')!r}> to {right:.0f} px")
    return found


@dataclass
class Ledger:
    path: Path
    keys: Path

    def key(self, name: str) -> str:
        return str(self.keys / f"{name}.key")

    def run(self, *args: str) -> str:
        return cli(*args, "--ledger", str(self.path))


def _public_key(path: str) -> str:
    shown = cli("ledger", "key-show", "--key", path, "--create")
    return shown.split("public key ")[1].strip()


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    """A ledger made with the CLI: the owner, a review board that approves, and a vendor
    whose name is markup, which has requested an exception (#4)."""
    made = Ledger(tmp_path / "ledger.db", tmp_path / "keys")
    made.keys.mkdir()
    board, vendor = _public_key(made.key("board")), _public_key(made.key("vendor"))
    _public_key(made.key("owner"))
    made.run("ledger", "init", "--key", made.key("owner"), "--owner", "Host Owner")
    made.run(
        "ledger",
        "key-add",
        board,
        "--owner",
        "Review Board",
        "--role",
        "approve",
        "--key",
        made.key("owner"),
    )
    made.run("ledger", "key-add", vendor, "--owner", VENDOR, "--key", made.key("owner"))
    manifest = tmp_path / "vendor.toml"
    text = MANIFEST.read_text().replace("Debian (bpftrace packaging)", VENDOR.replace('"', '\\"'))
    manifest.write_text(text)
    expires = (datetime.now(UTC) + timedelta(days=30)).date().isoformat()
    made.run(
        "exceptions", "request", str(manifest), "--expires", expires, "--key", made.key("vendor")
    )
    return made


def follow(driver: webdriver.Chrome, element: WebElement) -> None:
    """Click a link or a form's button and wait for the page it leads to."""
    element.click()
    WebDriverWait(driver, 15).until(staleness_of(element))


def _entries(driver: webdriver.Chrome) -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, "#ledger ol.ledger > li")


def _vendor_row(driver: webdriver.Chrome) -> dict[str, str]:
    """The fairness row of VENDOR: its cells by label, the vendor cell as `vendor`."""
    for row in driver.find_elements(By.CSS_SELECTOR, "#fairness tbody tr"):
        cells = row.find_elements(By.TAG_NAME, "td")
        if cells[0].text.startswith(VENDOR):
            assert cells[0].find_elements(By.CSS_SELECTOR, "*") == []  # no element: text
            values = {c.get_attribute("data-label") or "": c.text for c in cells[1:]}
            return {"vendor": cells[0].text, **values}
    raise AssertionError("the vendor is not in the fairness report")


def test_a_ledger_entry_appears_after_exceptions_approve(
    served: Served, ledger: Ledger, browser: webdriver.Chrome, artifacts: Path
) -> None:
    cli("server", "ledger", "import", str(ledger.path), "--db", served.db)
    browser.get(served.url + "/")
    newest = _entries(browser)[0]
    assert newest.get_attribute("id") == "entry-4"
    assert f"exception #4 requested for {VENDOR}" in newest.text
    assert _vendor_row(browser)["pending"] == "1"

    ledger.run(
        "exceptions",
        "approve",
        "4",
        "--reason",
        "hooks reviewed <ok>",
        "--key",
        ledger.key("board"),
    )
    cli("server", "ledger", "import", str(ledger.path), "--db", served.db)
    browser.refresh()
    newest = _entries(browser)[0]
    assert newest.get_attribute("id") == "entry-5"
    assert f"exception #4 approved for {VENDOR}: hooks reviewed <ok>" in newest.text
    assert "\u2713 verified" in newest.text
    assert "All 5 entries verify" in browser.find_element(By.ID, "ledger").text
    row = _vendor_row(browser)
    assert (row["requests"], row["approved"], row["pending"]) == ("1", "1", "0")
    assert browser.find_elements(By.TAG_NAME, "script") == []  # the vendor's name added none
    shoot(browser, artifacts, "public", PHONE)
    shoot(browser, artifacts, "public", DESKTOP)

    follow(browser, newest.find_element(By.LINK_TEXT, "#5"))
    assert browser.current_url == f"{served.url}/ledger/5"
    page = browser.find_element(By.TAG_NAME, "main").text
    assert "the signature verifies with the actor's key" in page
    assert "replayed from entry 1 under the ledger's rules" in page
    shoot(browser, artifacts, "entry", PHONE)
    follow(browser, browser.find_element(By.LINK_TEXT, "#4"))  # the request it decides
    assert browser.current_url == f"{served.url}/ledger/4"
    assert VENDOR in browser.find_element(By.TAG_NAME, "pre").text


@pytest.fixture
def heartbeats(served: Served, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """An enrolled host whose process sends a real signed heartbeat about every second
    (`patchguard report --heartbeat 3` in a loop; 2 missed, and it is silent 6 s after the
    last); killed by the test, or at the end."""
    token = cli("server", "token", "create", "--role", "enrol", "--db", served.db).strip()
    host = tmp_path / "host"
    common = ["--key", str(host / "host.key"), "--state-dir", str(host / "state")]
    cli("enrol", served.url, "--token", token, "--name", HOST_NAME, *common)
    beat = [*CLI, "report", "--heartbeat", "3", "--baseline", str(host / "none.zip"), *common]
    loop = f"while :; do {shlex.join(beat)} >/dev/null; sleep 0.3; done"
    process = subprocess.Popen(["bash", "-c", loop], start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def _host_status(driver: webdriver.Chrome) -> str:
    driver.refresh()
    cells = driver.find_elements(By.CSS_SELECTOR, 'td[data-label="status"]')
    return cells[0].text if cells else ""


def test_a_host_goes_silent_when_its_heartbeats_stop(
    served: Served,
    heartbeats: subprocess.Popen[bytes],
    browser: webdriver.Chrome,
    artifacts: Path,
) -> None:
    token = cli("server", "token", "create", "--role", "operator", "--db", served.db).strip()
    browser.get(served.url + "/operator")
    browser.find_element(By.ID, "token").send_keys(token)
    follow(browser, browser.find_element(By.CSS_SELECTOR, "input[type=submit]"))
    cookie = browser.get_cookie("patchguard_operator")
    assert cookie is not None and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    _wait_until(lambda: _host_status(browser) == "reporting", 30, "the host never reported")
    name = browser.find_element(By.CSS_SELECTOR, "tbody td a")
    assert name.text == HOST_NAME and name.find_elements(By.TAG_NAME, "b") == []

    os.killpg(heartbeats.pid, signal.SIGKILL)  # the host's process dies: no more heartbeats
    _wait_until(lambda: _host_status(browser) == "silent", 30, "the host never went silent")
    shoot(browser, artifacts, "operator-hosts", PHONE)
    shoot(browser, artifacts, "operator-hosts", DESKTOP)
    browser.get(served.url + "/")
    health = browser.find_element(By.CSS_SELECTOR, "#health .stats").text
    assert "1\nenrolled" in health and "1\nsilent" in health and "0\nreporting" in health

    browser.get(served.url + "/operator")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "tbody td a"))
    _wait_until(
        lambda: "silent" in _alerts_after_refresh(browser), 30, "no silent alert was raised"
    )
    shoot(browser, artifacts, "operator-host", PHONE)
    follow(browser, browser.find_element(By.CSS_SELECTOR, "button.danger"))
    assert "revoked" in browser.find_element(By.CSS_SELECTOR, "h2 .tag").text
    assert browser.find_elements(By.CSS_SELECTOR, "button.danger") == []


def _alerts_after_refresh(driver: webdriver.Chrome) -> str:
    driver.refresh()
    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".finding b"))
