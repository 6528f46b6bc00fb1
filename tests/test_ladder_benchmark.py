from benchmarks.ladder import HELD_OUT_SEEDS, TUNING_SEEDS, checks, parser, summarise


def test_the_ladder_reports_on_seeds_never_used_to_choose_a_default():
    args = parser().parse_args([])
    assert args.seeds == list(HELD_OUT_SEEDS) and not set(args.seeds) & set(TUNING_SEEDS)
    assert parser().parse_args(["--seeds", "0", "1", "2"]).seeds == list(TUNING_SEEDS)


def _seed(corrected: float, refined: float, student: float, gap: float) -> dict[str, float]:
    return {"labels.z0": 0.67, "labels.cut": 0.95, "labels.corrected": corrected, "labels.refined": refined,
            "test.student": student, "gap_closure": gap}


def test_ladder_checks_ask_for_a_margin_above_the_seeds_spread_and_every_seeds_gap_closure():
    # refined − corrected: +0.012, +0.013, +0.011 → margin 0.002 against an sd of 0.001: holds
    per_seed = {10: _seed(0.950, 0.962, 0.955, 0.91), 11: _seed(0.951, 0.964, 0.958, 0.92),
                12: _seed(0.952, 0.963, 0.957, 0.905)}
    c = checks(summarise(per_seed), per_seed)
    assert c["refined_ge_corrected_plus_0.01"]["holds"] and c["gap_closure_mean_ge_0.90"]
    assert c["gap_closure_every_seed_ge_0.87"] and c["student_ge_refined_minus_0.01"]["holds"]
    # the same mean difference, spread wider than its margin: not "by a hair"
    per_seed[11]["labels.refined"], per_seed[12]["labels.refined"] = 0.968, 0.959
    assert not checks(summarise(per_seed), per_seed)["refined_ge_corrected_plus_0.01"]["holds"]
    # one seed below 0.87 fails the every-seed check even where the mean holds
    per_seed[12]["gap_closure"] = 0.86
    per_seed[10]["gap_closure"] = 0.96
    c = checks(summarise(per_seed), per_seed)
    assert c["gap_closure_mean_ge_0.90"] and not c["gap_closure_every_seed_ge_0.87"]
