"""A headless Debian Chromium driven by Selenium through the system chromedriver (nothing downloaded), signed
in to the console of the Postgres service."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import IN_CI

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "tests-artifacts" / "ui"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (CHROMEDRIVER.exists() and CHROMIUM.exists()):
        if IN_CI:
            pytest.fail("chromium and chromium-driver are not installed (make tools installs them)")
        pytest.skip("chromium and chromium-driver are not installed (make tools installs them)")
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never fetch a driver or a browser
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=DriverService(executable_path=str(CHROMEDRIVER)), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS
