"""A real headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

No download of any kind: the driver and the browser are the system's. Each ``Browser`` has
its own profile directory (its own cookies) and logs the browser console, so a test can see
whether any script ran that should not have.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from .waiting import wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"


def available() -> str | None:
    """None when a browser can run here, else what is missing."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing:
        return f"{', '.join(missing)} missing: apt-get install chromium chromium-driver"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    return None


class Browser:
    """``Browser(width, height)``; ``close()`` when done (a context manager too)."""

    def __init__(self, width: int = 1280, height: int = 800, *, profile: Path | None = None,
                 mobile: bool = False) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self._own_profile = profile is None
        self.profile = profile or Path(tempfile.mkdtemp(prefix="edgemon-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                    "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--metrics-recording-only",
                    f"--user-data-dir={self.profile}", f"--window-size={width},{height}",
                    "--hide-scrollbars", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        if mobile:
            options.add_experimental_option("mobileEmulation", {
                "deviceMetrics": {"width": width, "height": height, "pixelRatio": 1},
                "userAgent": "Mozilla/5.0 (Linux; Android 14) Mobile"})
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        self.driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
        self.driver.set_page_load_timeout(30)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.driver.quit()
        finally:
            if self._own_profile:
                shutil.rmtree(self.profile, ignore_errors=True)

    def get(self, url: str) -> None:
        self.driver.get(url)

    @property
    def url(self) -> str:
        return str(self.driver.current_url)

    def js(self, script: str, *args: Any) -> Any:
        return self.driver.execute_script(script, *args)

    def js_async(self, script: str, *args: Any) -> Any:
        """``script`` gets a callback as its last argument (``arguments[arguments.length-1]``)."""
        return self.driver.execute_async_script(script, *args)

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Until the page marked itself ready (its first data drawn)."""
        wait_until(lambda: self.js("return document.body && document.body.dataset.ready") == "1",
                   timeout, f"page ready at {self.url}")

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str) -> list[Any]:
        from selenium.webdriver.common.by import By

        return list(self.driver.find_elements(By.CSS_SELECTOR, css))

    def console(self) -> list[dict[str, Any]]:
        return list(self.driver.get_log("browser"))

    def screenshot(self, path: Path, *, full_page: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        if full_page:
            self.js("window.scrollTo(0, 0)")
            height = int(self.js("return document.documentElement.scrollHeight"))
            width = int(self.js("return window.innerWidth"))
            self.driver.set_window_size(width, min(height + 120, 6000))
        self.driver.save_screenshot(str(path))

    def sign_in(self, base: str, token: str) -> None:
        self.get(f"{base}/login")
        wait_until(lambda: self.js("return document.body.dataset.ready") == "1" or
                   "/login" not in self.url, 15, "sign-in page")
        if "/login" not in self.url:
            return
        self.find("#token").send_keys(token)
        self.find("#sign-in button[type=submit]").click()
        wait_until(lambda: "/login" not in self.url, 15, "signed in")
