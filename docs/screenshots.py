"""Refresh the README's screenshots from the built project: docs/report.png (reports/report.html) and
docs/dvc_plots.png (`dvc plots show`), taken in the same headless Chromium as the page tests (tests/browser.py;
Debian's package, installed on first use where missing), every network request refused.

    make screenshots        # after `make repro`; it also saves docs/review.png through
                            # `python benchmarks/review_page.py --screenshot docs/review.png`
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import screenshot  # noqa: E402

SHOTS = {"report.png": (1100, 2600), "dvc_plots.png": (1000, 760)}  # file under docs/ → window (width, height)


def main() -> None:
    report = ROOT / "reports" / "report.html"
    if not report.is_file():
        raise SystemExit(f"{report} not found: run `make repro` first")
    screenshot(report, ROOT / "docs" / "report.png", *SHOTS["report.png"])
    with tempfile.TemporaryDirectory() as tmp:
        r = subprocess.run(["dvc", "plots", "show", "-o", tmp], cwd=ROOT, capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"dvc plots show failed ({r.returncode}):\n{r.stderr[-2000:]}")
        screenshot(Path(tmp) / "index.html", ROOT / "docs" / "dvc_plots.png", *SHOTS["dvc_plots.png"])
    print("docs/report.png, docs/dvc_plots.png refreshed from reports/ and `dvc plots show`")


if __name__ == "__main__":
    main()
