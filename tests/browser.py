"""A headless Chromium driven by selenium, as the UI tests use it (tests/test_mlflow_ui.py,
tests/test_dashboard.py): Debian's `chromium` and `chromedriver` (`.ci/run` installs them), a fresh
profile each time, and a poll that fails with what the page shows."""

import shutil
import tempfile
import time

import pytest

CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_S = 60


def chromium(what: str = "the UI tests"):
    """A headless Chromium at 1600 x 900 with a fresh profile (no remembered UI mode or layout).
    Without Chromium, its driver or selenium the test fails, naming the fix; it never skips."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not (browser and driver):
        pytest.fail(f"Chromium and chromedriver are needed for {what} and were not found: install "
                    "them with `apt-get install chromium chromium-driver` (.ci/run does it)")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("selenium is not installed: pip install -e '.[test]' (scripts/install.sh does it)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in CHROME_FLAGS + [f"--user-data-dir={tempfile.mkdtemp(prefix='chromium-')}"]:
        opts.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=opts)
    chrome.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1600, "height": 900, "deviceScaleFactor": 1, "mobile": False})
    return chrome


def page_text(chrome) -> str:
    from selenium.webdriver.common.by import By

    return chrome.find_element(By.TAG_NAME, "body").text


def wait_for(chrome, ok, what: str, timeout_s: float = WAIT_S, where: str = "the page"):
    """Poll `ok(chrome)` until it is truthy and return it; fail with what the page shows."""
    from selenium.common.exceptions import WebDriverException

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            last = ok(chrome)
            if last:
                return last
        except WebDriverException:
            pass
        time.sleep(0.5)
    pytest.fail(f"{where} never showed {what} within {timeout_s}s; it shows:\n{page_text(chrome)[:2500]}")
