"""Headless Chromium through Selenium, with Debian's `/usr/bin/chromium` and
`/usr/bin/chromedriver`: never Selenium Manager (there is no network to download a driver or a
browser; ``SE_OFFLINE=true`` makes sure it would not try).

`accept_consent` drives the consent page of the consent policy like a person: open the link,
screenshot, click the accept button, wait for the success page, screenshot.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

log = logging.getLogger("mxpolicy_e2e.browser")

CHROMIUM = os.environ.get("MXPOLICY_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MXPOLICY_CHROMEDRIVER", "/usr/bin/chromedriver")

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1024,768",
)

#: The accept form of the consent page (policies/consent/src/pages.rs, `accept_form`).
ACCEPT_BUTTON = 'form[method="post"] button[type="submit"]'
#: The status paragraph of the success page.
STATUS = 'p.status[role="status"]'

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class BrowserError(RuntimeError):
    pass


@contextmanager
def chromium(timeout_s: float = 30.0) -> Iterator[webdriver.Chrome]:
    """A headless Chromium with a fresh profile, quit (and its profile removed) afterwards."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            raise BrowserError(f"{path} is missing: install Debian's chromium and chromium-driver")
    os.environ["SE_OFFLINE"] = "true"
    with tempfile.TemporaryDirectory(prefix="mxpolicy-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--user-data-dir={profile}")
        service = Service(executable_path=CHROMEDRIVER)
        driver = webdriver.Chrome(service=service, options=options)
        try:
            driver.set_page_load_timeout(timeout_s)
            yield driver
        finally:
            driver.quit()


def screenshot(driver: webdriver.Chrome, path: Path) -> Path:
    """Save a PNG screenshot of the page to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not driver.save_screenshot(str(path)):
        raise BrowserError(f"could not save a screenshot to {path}")
    log.info("screenshot %s (%d bytes)", path, path.stat().st_size)
    return path


@dataclass(frozen=True)
class ConsentResult:
    before: Path
    after: Path
    text: str
    """The success page's text (its status paragraph)."""


def accept_consent(consent_uri: str, artifacts: Path, prefix: str = "consent",
                   timeout_s: float = 30.0) -> ConsentResult:
    """Open `consent_uri`, screenshot (``<prefix>-page.png``), click the accept button, wait
    for the success page, screenshot (``<prefix>-accepted.png``): the success text."""
    with chromium(timeout_s) as driver:
        log.info("chromium: open %s", consent_uri)
        driver.get(consent_uri)
        wait = WebDriverWait(driver, timeout_s)
        try:
            button = wait.until(expected_conditions.element_to_be_clickable(
                (By.CSS_SELECTOR, ACCEPT_BUTTON)))
        except TimeoutException as e:
            raise _page_error(driver, artifacts / f"{prefix}-failed.png",
                              "no accept button on the consent page") from e
        before = screenshot(driver, artifacts / f"{prefix}-page.png")
        log.info("chromium: click %r", button.text)
        button.click()
        # While the form posts and the next page loads, chromedriver may answer a lookup with
        # a stale-element error or, racing the navigation, with a generic "node does not
        # belong to the document" one: both mean "not there yet", so the wait ignores every
        # WebDriverException and asks again.
        navigating = WebDriverWait(driver, timeout_s, ignored_exceptions=(WebDriverException,))
        try:
            status = navigating.until(_success_page)
        except TimeoutException as e:
            raise _page_error(driver, artifacts / f"{prefix}-failed.png",
                              "no success page after the click") from e
        text = status.text
        after = screenshot(driver, artifacts / f"{prefix}-accepted.png")
        log.info("chromium: %s", text)
        return ConsentResult(before, after, text)


def _success_page(driver: webdriver.Chrome) -> WebElement | Literal[False]:
    """The success page's status paragraph, or False while the page shown is not it: a page
    with the accept form (the consent page itself, or the "policy changed" answer) is not."""
    if driver.find_elements(By.CSS_SELECTOR, ACCEPT_BUTTON):
        return False
    found = driver.find_elements(By.CSS_SELECTOR, STATUS)
    return found[0] if found and found[0].is_displayed() else False


def _page_error(driver: webdriver.Chrome, path: Path, what: str) -> BrowserError:
    """A `BrowserError` naming the page shown (URL, title, text) and its screenshot."""
    shot = screenshot(driver, path)
    body = " ".join(driver.find_element(By.TAG_NAME, "body").text.split())[:500]
    return BrowserError(f"{what}: {driver.current_url} shows {driver.title!r}: {body!r} "
                        f"(screenshot {shot})")
