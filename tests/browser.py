"""A real headless Chromium for the page checks: the Debian package, installed on first use where
missing (CI machines are fresh); tests that need it skip, with the reason, only if it cannot be had."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
# no network: a page that tries to load anything from outside fails to render, as it would offline
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"


def chromium() -> str:
    """The browser's path, installing Debian's `chromium` with apt-get if needed; skips if impossible."""
    found = next((p for p in map(shutil.which, NAMES) if p), None)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run("apt-get update -qq && apt-get install -y -qq chromium", shell=True, env=env,
                       capture_output=True, timeout=900)
        found = next((p for p in map(shutil.which, NAMES) if p), None)
        if found:
            return found
    pytest.skip("headless Chromium is not installed and cannot be installed here (apt-get as root)")


def _run(args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", OFFLINE, *args],
                          capture_output=True, text=True, timeout=timeout)


def rendered_dom(page: Path) -> str:
    """The page's DOM after its scripts ran (up to 15 s of virtual time)."""
    r = _run(["--virtual-time-budget=15000", "--dump-dom", page.resolve().as_uri()])
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


def screenshot(page: Path, out: Path, width: int = 1100, height: int = 1800) -> None:
    r = _run(["--virtual-time-budget=15000", "--hide-scrollbars", f"--window-size={width},{height}",
              f"--screenshot={out.resolve()}", page.resolve().as_uri()])
    assert r.returncode == 0 and out.is_file(), r.stderr[-2000:]
