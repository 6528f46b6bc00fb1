"""A real headless Chromium for the page checks: the Debian package, installed on first use where
missing (CI machines are fresh); tests that need it skip, with the reason, only if it cannot be had."""

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome")
PACKAGES = ("chromium", "chromium-driver")  # Debian's browser and its WebDriver, installed together
# no network: a page that tries to load anything from outside fails to render, as it would offline
OFFLINE = "--host-resolver-rules=MAP * ~NOTFOUND"


def _installed(names: tuple[str, ...], package: str) -> str:
    """The path of the first of `names` on PATH, installing Debian's `package` with apt-get if needed; skips
    the test if impossible."""
    found = next((p for p in map(shutil.which, names) if p), None)
    if found:
        return found
    if shutil.which("apt-get") and os.geteuid() == 0:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        # both packages at once, one test worker at a time (two xdist workers may both need them); apt waits
        # for a dpkg lock held by anything else
        with open(Path("/tmp") / "mlpl-browser-install.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not next((p for p in map(shutil.which, names) if p), None):
                subprocess.run("apt-get -o DPkg::Lock::Timeout=600 update -qq && apt-get -o DPkg::Lock::Timeout=600 "
                               f"install -y -qq {' '.join(PACKAGES)}", shell=True, env=env, capture_output=True,
                               timeout=900)
        found = next((p for p in map(shutil.which, names) if p), None)
        if found:
            return found
    pytest.skip(f"{package} is not installed and cannot be installed here (apt-get as root)")


def chromium() -> str:
    """The browser's path (Debian's `chromium`)."""
    return _installed(NAMES, "chromium")


def webdriver_chromium(width: int = 1100, height: int = 900):
    """A Selenium WebDriver on headless Chromium through Debian's `chromium-driver` (given by path, so that
    Selenium never tries to download a driver)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(_installed(("chromedriver",), "chromium-driver")), options=options)


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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_review(root: Path, port: int, answers: Path | None = None, logs: Path | None = None) -> subprocess.Popen:
    """`mlpl review --port port [--answers answers]` in the built project `root`, once it answers; its output
    goes to review-<port>.log in `logs` (default: root)."""
    log_path = Path(logs or root) / f"review-{port}.log"
    log = open(log_path, "ab")  # noqa: SIM115 (the server's, closed with the process)
    extra = ["--answers", str(Path(answers).resolve())] if answers is not None else []
    proc = subprocess.Popen([str(Path(sys.executable).parent / "mlpl"), "review", "--port", str(port), *extra],
                            cwd=root, stdout=log, stderr=log)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/queue?limit=1", timeout=2)
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    tail = log_path.read_text()[-2000:]
    raise AssertionError(f"the review server did not come up:\n{tail}")
