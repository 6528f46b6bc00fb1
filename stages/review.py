"""`mlpl review [--port N]`: the review page, a local web server (Flask, bound to 127.0.0.1) over the last
run's refined train labels. Each card is one (image, class) entry: the image, the class, the pseudo label
and its confidence; the entries whose answer helps most come first (pipeline.review). A person confirms
(`c`) or flips (`f`) the label with a click or a key; the answer is in data/answers.parquet before the next
card is shown, and `dvc exp run -S known=answers` (or `answers+random`) makes the answers known labels.

Routes: `/` the page; `/api/queue?class=NAME&limit=N` the next entries as JSON; `/api/answer` (POST
{"image_id", "class", "label"}) saves one answer; `/image/<image_id>` the image file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from flask import Flask, abort, jsonify, request, send_file

from pipeline.masking import REVIEW_BATCH
from pipeline.review import AnswerBook, confidences, queue_length, review_queue
from pipeline.storage import DataError, Table, manifest_paths
from stages.common import ANSWERS, MANIFEST, REFINED

PAGE = Path(__file__).with_name("review.html")
RANKING = ("the answer that helps most first: per class the refined logits are shifted so that the class's median "
           "train entry sits at −1, your answers so far recalibrate that into P(present), and the entries with the "
           "largest p(1 − p) over their class's share of positives come first (the least sure, a rare class's "
           "first), the classes sharing the queue as seats by D'Hondt's rule (a class's k-th answer counts 1/k); "
           f"the rest is ranked again every {REVIEW_BATCH} answers")


def create_app(answers: Path = ANSWERS, limit: int = 1000) -> Flask:
    """The review app over the refined labels and manifest of the project in the working directory."""
    for path in (REFINED, MANIFEST):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} is missing: run `dvc repro` (or `dvc pull`) before a review")
    refined, manifest = Table(REFINED), Table(MANIFEST)
    image_ids = list(refined.column("image_id"))
    classes = list(refined.classes)
    logits = refined.column("refined").astype(np.float32)
    p = confidences(logits)
    path_of = dict(zip(manifest.column("image_id"), manifest_paths(manifest), strict=True))
    book = AnswerBook(answers, image_ids, classes)
    app = Flask(__name__)

    @app.get("/")
    def page():
        return send_file(PAGE, mimetype="text/html")

    @app.get("/api/queue")
    def queue():
        name = request.args.get("class") or None
        if name is not None and name not in classes:
            return jsonify(error=f"class {name!r} is not one of {classes}"), 400
        n = min(int(request.args.get("limit", limit)), limit)
        answered, labels = book.answers()
        class_index = None if name is None else classes.index(name)
        entries = review_queue(logits, answered, labels, class_index, limit=n)
        items = [{"image_id": image_ids[i], "class": classes[c], "p": round(float(p[i, c]), 3),
                  "label": int(p[i, c] >= 0.5)} for i, c in entries]
        return jsonify(classes=classes, ranking=RANKING, rerank_every=REVIEW_BATCH, items=items,
                       remaining=queue_length(answered, class_index),
                       answered=len(book.latest()), answers=str(answers))

    @app.post("/api/answer")
    def answer():
        body = request.get_json(silent=True) or {}
        try:
            answered = book.add(str(body.get("image_id")), str(body.get("class")), body.get("label"))
        except DataError as e:
            return jsonify(error=str(e)), 400
        return jsonify(answered=answered)

    @app.get("/image/<image_id>")
    def image(image_id: str):
        if image_id not in path_of:
            abort(404)
        return send_file(Path(path_of[image_id]).resolve())

    return app


def run(port: int, answers: Path = ANSWERS) -> None:
    app = create_app(answers)
    print(f"review page on http://127.0.0.1:{port}/ (answers → {answers}); Ctrl-C stops it", flush=True)
    app.run(host="127.0.0.1", port=port, threaded=True)
