"""A real headless Chromium (Debian's ``/usr/bin/chromium``) driven with the ``playwright`` package.

Playwright's wheel ships its own driver; it is never asked to download a browser
(``playwright install`` is not needed and must not be run): it launches the system Chromium via
``executable_path``. A missing Chromium or playwright fails the test with the command to fix it;
nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

CHROMIUM = os.environ.get("RTX_CHROMIUM", "/usr/bin/chromium")
# flags for this sandbox: no setuid sandbox, no GPU, no network chatter of its own
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def require_chromium() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: install it with `apt-get install chromium` "
            "(or point RTX_CHROMIUM at a Chromium binary)",
            pytrace=False,
        )
    return path


class Browser:
    """One Chromium with a fresh profile in ``user_data_dir``; ``page`` is its first tab."""

    def __init__(self, user_data_dir: Path, *, width: int = 1440, height: int = 1000) -> None:
        executable = require_chromium()
        try:
            from playwright.sync_api import sync_playwright
        except ImportError:
            pytest.fail(
                "the `playwright` Python package is missing: pip install playwright "
                "(its wheel has the driver; do not run `playwright install`, the system Chromium is used)",
                pytrace=False,
            )
        user_data_dir.mkdir(parents=True, exist_ok=True)
        self._playwright = sync_playwright().start()
        try:
            self.context = self._playwright.chromium.launch_persistent_context(
                str(user_data_dir),
                executable_path=executable,
                headless=True,
                args=FLAGS,
                viewport={"width": width, "height": height},
                timeout=60_000,
            )
        except Exception:
            self._playwright.stop()
            raise
        self.context.set_default_timeout(20_000)
        self.page = self.context.pages[0] if self.context.pages else self.context.new_page()
        self.console: list[str] = []
        self.page.on("console", lambda msg: self.console.append(f"{msg.type}: {msg.text}"))
        self.page.on("pageerror", lambda exc: self.console.append(f"pageerror: {exc}"))

    def login(self, base_url: str, username: str, password: str, next_path: str = "/") -> None:
        """Log in through the simple auth manager's own login form, like a person would."""
        page = self.page
        page.goto(f"{base_url}/auth/login/?next={quote(next_path)}")
        page.locator('input[name="username"]').fill(username)
        page.locator('input[name="password"]').fill(password)
        page.locator('button[type="submit"]').click()
        page.wait_for_url(lambda url: "/auth/login" not in url)
        page.wait_for_url(f"{base_url}{next_path}**")
        if not any(c["name"] == "_token" for c in self.context.cookies(base_url)):
            raise AssertionError("the login form did not set the _token cookie")

    def screenshot(self, path: Path, **kwargs: Any) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path), **kwargs)
        return path

    def close(self) -> None:
        try:
            self.context.close()
        finally:
            self._playwright.stop()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
