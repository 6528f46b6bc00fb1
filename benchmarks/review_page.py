"""The review page's speed in a real headless Chromium: time to first paint and until its cards (up to 1,000
images with their labels) are painted, and how long an answer takes to be on disk.

    python benchmarks/review_page.py [--project .] [--answers FILE] [--screenshot docs/review.png]

Runs in a built project (`dvc repro` done: the refined labels and the manifest's images). Starts `mlpl
review` on a free port with a scratch answers file (the project's data/answers.parquet is not touched
unless --answers names it), opens the page through Selenium, answers 20 cards with the `c` key and reads
the file after each; `--screenshot` saves the page as first shown (the README's docs/review.png, from the
default project after `make repro`). Ends with one JSON line: {"cards", "first_paint_s", "cards_painted_s",
"webdriver_ready_s", "answer_on_disk_s": {"mean", "max"}, "answers_on_disk"}: first_paint_s and cards_painted_s
are the browser's own clock from the start of navigation to its first contentful paint and to the frame that
shows the cards (the page's `cards-painted` mark); webdriver_ready_s is the wall time from `driver.get` until
Selenium sees the page ready, polled every 5 ms, so it adds the WebDriver's round trips.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.browser import free_port, serve_review, webdriver_chromium  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=Path("."), help="a built project")
    ap.add_argument("--answers", type=Path, help="answers file the server writes (default: a scratch file)")
    ap.add_argument("--screenshot", type=Path, help="save the page as first shown here (PNG)")
    args = ap.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    answers = args.answers or Path(tempfile.mkdtemp(prefix="mlpl-review-")) / "answers.parquet"
    port = free_port()
    server = serve_review(args.project, port, answers, logs=answers.parent)
    driver = None
    try:
        driver = webdriver_chromium()
        start = time.perf_counter()
        driver.get(f"http://127.0.0.1:{port}/")
        WebDriverWait(driver, 30, poll_frequency=0.005).until(
            lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
        ready = time.perf_counter() - start
        paint, painted = driver.execute_script("return ['first-contentful-paint', 'cards-painted'].map("
                                               "n => performance.getEntriesByName(n)[0].startTime)")
        cards = driver.find_elements(By.CSS_SELECTOR, ".card")
        if args.screenshot is not None:
            driver.save_screenshot(str(args.screenshot))
        body, status = driver.find_element(By.TAG_NAME, "body"), driver.find_element(By.ID, "status")
        waits = []
        for k in range(min(20, len(cards) - 1)):
            t = time.perf_counter()
            body.send_keys("c")
            WebDriverWait(driver, 10, poll_frequency=0.005).until(
                lambda d, k=k: status.text.startswith(f"{k + 1} entries answered"))
            waits.append(time.perf_counter() - t)  # the page says so only once the server has written it
            assert pq.read_table(answers).num_rows == k + 1
        print(json.dumps({"cards": len(cards), "first_paint_s": round(paint / 1000, 3),
                          "cards_painted_s": round(painted / 1000, 3), "webdriver_ready_s": round(ready, 3),
                          "answer_on_disk_s": {"mean": round(statistics.fmean(waits), 4), "max": round(max(waits), 4)},
                          "answers_on_disk": pq.read_table(answers).num_rows}))
    finally:
        if driver is not None:
            driver.quit()
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()
