"""The review page (issue 27): the queue's order, answers on disk at once (a killed server loses none), the
Flask routes, and the page driven in a real headless Chromium."""

import datetime
import signal
import urllib.request
from json import dumps, loads

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.masking import MaskSettings, known_labels, read_answers, review_order
from pipeline.review import AnswerBook, review_queue
from pipeline.storage import DataError, write_table
from tests.browser import free_port, serve_review

# the third name has what the page must escape: a class name is data, not HTML
CLASSES = ["square", "disc", 'jack-o\'-lantern <&> "x"']
IDS = [f"img{i:03d}" for i in range(12)]


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder with what the review reads: the manifest (images on disk) and the refined labels."""
    rng = np.random.default_rng(0)
    (tmp_path / "data" / "prepared" / "images").mkdir(parents=True)
    (tmp_path / "data" / "labels").mkdir(parents=True)
    for i, image_id in enumerate(IDS):
        Image.fromarray(np.full((16, 16, 3), 20 * i, np.uint8)).save(tmp_path / f"data/prepared/images/{image_id}.png")
    truth = (rng.random((len(IDS), 3)) < 0.4).astype(np.int8)
    write_table(tmp_path / "data/prepared/manifest.parquet",
                {"image_id": IDS, "split": ["train"] * len(IDS), "path": [f"images/{i}.png" for i in IDS],
                 "labels": truth}, CLASSES, extra_metadata={"root": str(tmp_path / "data/prepared")})
    logits = rng.normal(0, 2, (len(IDS), 3)).astype(np.float32)
    write_table(tmp_path / "data/labels/refined.parquet", {"image_id": IDS, "split": ["train"] * len(IDS),
                                                           "refined": logits}, CLASSES)
    monkeypatch.chdir(tmp_path)
    return tmp_path, logits


def test_the_queue_is_the_review_order_less_what_was_answered():
    logits = np.random.default_rng(1).normal(0, 2, (10, 3)).astype(np.float32)
    none = np.zeros((10, 3), bool)
    order = [tuple(int(x) for x in np.unravel_index(k, logits.shape)) for k in review_order(logits, np.ones(10, bool))]
    assert review_queue(logits, none, none.astype(np.int8)) == order
    answered, labels = none.copy(), none.astype(np.int8)
    answered[order[0]] = answered[order[3]] = True
    labels[order[0]] = 1
    queue = review_queue(logits, answered, labels)
    assert sorted(queue) == sorted(e for k, e in enumerate(order) if k not in (0, 3))  # the answered left it
    assert queue == [tuple(int(x) for x in np.unravel_index(k, logits.shape))
                     for k in review_order(logits, np.ones(10, bool), answered, labels)]  # ranked with the answers
    assert review_queue(logits, answered, labels, class_index=2) == [e for e in queue if e[1] == 2]


def test_an_answer_re_ranks_its_class():
    """Answering that an entry the labels doubt is present raises P(present) below it: the class's next
    entries to ask about move down its ranking."""
    logits = np.tile(np.linspace(-5, 5, 21, dtype=np.float32)[:, None], (1, 2))
    none = np.zeros(logits.shape, bool)
    before = [e for e in review_queue(logits, none, none.astype(np.int8)) if e[1] == 0]
    answered, labels = none.copy(), none.astype(np.int8)
    for row in (9, 10, 11):  # the three least sure entries of class 0: all present
        answered[row, 0], labels[row, 0] = True, 1
    after = [e for e in review_queue(logits, answered, labels) if e[1] == 0]
    assert logits[after[0][0], 0] < logits[before[3][0], 0] and after[0][0] < 9


def test_an_answer_is_on_disk_when_add_returns_and_mask_reads_it(tmp_path):
    path = tmp_path / "answers.parquet"
    book = AnswerBook(path, IDS, CLASSES)
    t0 = datetime.datetime(2026, 12, 4, tzinfo=datetime.UTC)
    assert book.add("img003", "disc", 1, now=t0) == 1
    assert pq.read_table(path).num_rows == 1  # on disk, not only in memory
    assert book.add("img003", "disc", 0, now=t0 + datetime.timedelta(seconds=1)) == 1  # changed mind: latest wins
    assert book.add("img005", CLASSES[2], 1, now=t0) == 2
    assert AnswerBook(path, IDS, CLASSES).latest() == {("img003", "disc"): 0, ("img005", CLASSES[2]): 1}  # a restart
    for bad, match in ((("nope", "disc", 1), "not a train image"), (("img001", "hexagon", 1), "not one of"),
                       (("img001", "disc", 2), "an answer is 0 or 1")):
        with pytest.raises(DataError, match=match):
            book.add(*bad)
    # what `mask` makes of them with known: answers
    answered, labels = read_answers(path, IDS, CLASSES, np.ones(len(IDS), bool))
    known, values = known_labels(MaskSettings(known="answers"), None, np.ones(len(IDS), bool), (answered, labels))
    assert known.sum() == 2 and values[3, 1] == 0 and values[5, 2] == 1


def test_the_routes_rank_filter_save_and_serve(project):
    from stages.review import create_app

    root, logits = project
    client = create_app(root / "data" / "answers.parquet").test_client()
    assert b"Review the pseudo labels" in client.get("/").data
    body = client.get("/api/queue").get_json()
    first = review_queue(logits, np.zeros_like(logits, bool), np.zeros(logits.shape, np.int8))
    assert [(IDS.index(it["image_id"]), CLASSES.index(it["class"])) for it in body["items"]] == first
    assert body["remaining"] == logits.size and "helps most first" in body["ranking"]
    top = body["items"][0]
    assert top["label"] == int(top["p"] >= 0.5)
    r = client.post("/api/answer", json={"image_id": top["image_id"], "class": top["class"], "label": 1 - top["label"]})
    assert r.get_json() == {"answered": 1}
    after = client.get("/api/queue?class=" + top["class"]).get_json()
    assert {it["class"] for it in after["items"]} == {top["class"]} and after["answered"] == 1
    assert (top["image_id"], top["class"]) not in {(it["image_id"], it["class"]) for it in after["items"]}
    assert client.post("/api/answer", json={"image_id": "x", "class": "disc", "label": 1}).status_code == 400
    assert client.get("/api/queue?class=hexagon").status_code == 400
    assert client.get(f"/image/{IDS[2]}").data[:4] == b"\x89PNG" and client.get("/image/none").status_code == 404


def _post(port: int, body: dict) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/answer", data=dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    return loads(urllib.request.urlopen(req, timeout=10).read())


def test_a_killed_server_loses_no_answer(project):
    """Answers posted to a real server, which is then killed (SIGKILL) mid-session: every answer it
    acknowledged is in the answers file, and a restarted server takes up the queue after them."""
    root, logits = project
    port = free_port()
    proc = serve_review(root, port)
    try:
        items = loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/queue").read())["items"]
        for it in items[:5]:
            _post(port, {"image_id": it["image_id"], "class": it["class"], "label": it["label"]})
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    table = pq.read_table(root / "data" / "answers.parquet").to_pylist()
    assert [(r["image_id"], r["class"], r["label"]) for r in table] == [
        (it["image_id"], it["class"], it["label"]) for it in items[:5]]
    proc = serve_review(root, port)
    try:
        again = loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/queue").read())
        answered, labels = AnswerBook(root / "data" / "answers.parquet", IDS, CLASSES).answers()
        assert again["answered"] == 5 and answered.sum() == 5
        assert [(IDS.index(it["image_id"]), CLASSES.index(it["class"])) for it in again["items"]] == review_queue(
            logits, answered, labels)  # the rest, ranked again with the five answers
    finally:
        proc.terminate()
        proc.wait()


@pytest.mark.e2e
def test_the_page_in_a_real_browser(project):
    """Headless Chromium (WebDriver) clicks `confirm` on the first card, presses `f` on the second, reloads:
    both answers are in the file, and the page's queue is the rest ranked with them; after REVIEW_BATCH more
    answers the page ranks the rest again by itself."""
    from pipeline.masking import REVIEW_BATCH
    from tests.browser import webdriver_chromium

    root, logits = project
    port = free_port()
    proc = serve_review(root, port)
    driver = webdriver_chromium()
    try:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def ready():
            WebDriverWait(driver, 20).until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready"))
            return driver.find_elements(By.CSS_SELECTOR, ".card")

        driver.get(f"http://127.0.0.1:{port}/")
        cards = ready()
        entries = [(c.get_attribute("data-image-id"), c.get_attribute("data-class")) for c in cards[:3]]
        labels = [int("yes" in c.find_element(By.CLASS_NAME, "label").text) for c in cards[:2]]
        cards[0].find_element(By.CLASS_NAME, "confirm").click()
        WebDriverWait(driver, 10).until(lambda d: "current" in cards[1].get_attribute("class"))
        driver.find_element(By.TAG_NAME, "body").send_keys("f")
        WebDriverWait(driver, 10).until(lambda d: "current" in cards[2].get_attribute("class"))
        rows = pq.read_table(root / "data" / "answers.parquet").to_pylist()
        assert [(r["image_id"], r["class"], r["label"]) for r in rows] == [
            (*entries[0], labels[0]), (*entries[1], 1 - labels[1])]
        driver.refresh()
        shown = [(c.get_attribute("data-image-id"), c.get_attribute("data-class")) for c in ready()]
        answered, answers = AnswerBook(root / "data" / "answers.parquet", IDS, CLASSES).answers()
        assert shown == [(IDS[i], CLASSES[c]) for i, c in review_queue(logits, answered, answers)]
        assert entries[0] not in shown and entries[1] not in shown and len(shown) == logits.size - 2
        driver.save_screenshot(str(root / "review.png"))
        status = driver.find_element(By.ID, "status")
        for n in range(3, 3 + REVIEW_BATCH):  # one answer at a time: each waits for the last to be on disk
            driver.find_element(By.TAG_NAME, "body").send_keys("c")
            WebDriverWait(driver, 10).until(lambda d, n=n: status.text.startswith(f"{n} entries answered"))
        WebDriverWait(driver, 10).until(lambda d: "to go" in status.text)  # the page loaded the queue again
        left = driver.find_elements(By.CSS_SELECTOR, ".card")
        answered, answers = AnswerBook(root / "data" / "answers.parquet", IDS, CLASSES).answers()
        assert answered.sum() == 2 + REVIEW_BATCH and len(left) == logits.size - 2 - REVIEW_BATCH
        assert [(c.get_attribute("data-image-id"), c.get_attribute("data-class")) for c in left] == [
            (IDS[i], CLASSES[c]) for i, c in review_queue(logits, answered, answers)]
    finally:
        driver.quit()
        proc.terminate()
        proc.wait()
