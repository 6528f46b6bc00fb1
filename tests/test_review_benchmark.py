from pathlib import Path

import yaml

from benchmarks.review import checks, row_flags
from pipeline.masking import MaskSettings
from stages.common import Params

ROOT = Path(__file__).resolve().parents[1]


def _fig(mean: float, sd: float = 0.002) -> dict:
    return {"mean": mean, "sd": sd, "values": [mean]}


def test_each_row_is_the_known_labels_it_names(tmp_path):
    """The rows' overrides on params.yaml give the mask settings the table says: random draws at the budget and
    at the reference, a review of the budget (no random draw beside it) and nothing known."""
    built = {}
    for row, flags in row_flags(0.02, 0.1).items():
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        for flag in flags:
            key, value = flag.split("=")
            params[key] = yaml.safe_load(value)
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
        built[row] = Params.load(tmp_path / "params.yaml").build(MaskSettings)
    assert built["none"].ratio == 0 and built["none"].known == "random"
    assert (built["random"].known, built["random"].ratio) == ("random", 0.02)
    assert (built["uncertain"].known, built["uncertain"].budget, built["uncertain"].draws) == ("uncertain", 0.02, False)
    assert (built["reference"].known, built["reference"].ratio) == ("random", 0.1)


def test_checks_of_the_review_issue():
    rows = {"none": {"student": _fig(0.80)}, "random": {"student": _fig(0.81)},
            "uncertain": {"student": _fig(0.83)}, "reference": {"student": _fig(0.83)}}
    assert checks(rows) == {"uncertain_at_least_reference": True, "uncertain_beats_random_by_2sd": True}
    rows["uncertain"] = {"student": _fig(0.8129)}  # +1.45 sd over random: not enough, and below the reference
    assert checks(rows) == {"uncertain_at_least_reference": False, "uncertain_beats_random_by_2sd": False}
