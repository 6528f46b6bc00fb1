from stages.compare import compare_table, experiment_rows, markdown


def _node(ratio, method, student=None):
    data = {"params": {"params.yaml": {"data": {"ratio": ratio, "correct": {"method": method, "beta": 1}}}}}
    if student is not None:
        data["metrics"] = {"reports/metrics.json": {"data": {"test": {"student": {"map": student, "cf1": 0.5}},
                                                             "labels": {"cut": {"map": 0.9, "inversions": 7}}}}}
    return data


def test_compare_shows_only_differing_params_and_the_ladder_figures():
    shown = [{"rev": "workspace", "name": None, "data": _node(0.0, "sqrt", 0.91), "experiments": None},
             {"rev": "a" * 40, "name": "main", "data": _node(0.0, "sqrt", 0.91),
              "experiments": [{"name": "ratio-10", "revs": [{"rev": "b" * 40, "data": _node(0.1, "sqrt", 0.93)}]},
                              {"name": None, "revs": [{"rev": "c" * 40, "data": _node(0.0, "hard")}]}]}]
    rows = experiment_rows(shown)
    assert [r[0] for r in rows] == ["workspace", "main", "ratio-10", "ccccccc"]
    header, body = compare_table(rows)
    assert header == ["experiment", "ratio", "correct.method", "labels.cut.map", "test.student.map"]
    assert body[2] == ["ratio-10", "0.1", "sqrt", "0.9000", "0.9300"]
    assert body[3] == ["ccccccc", "0.0", "hard", "", ""]  # a failed experiment: no metrics
    assert markdown(header, body).splitlines()[1] == "|---|---|---|---|---|"


def test_compare_says_same_params_and_shows_the_machine_where_only_it_differs():
    def node(student, precision, cpu):
        data = _node(0.0, "sqrt", student)
        data["metrics"]["reports/metrics.json"]["data"]["scores"] = {"precision": precision, "cpu": cpu}
        return data

    shown = [{"rev": "workspace", "name": None, "data": node(0.8755, "fp32", "x86_64 AVX2 kernels, no native bf16"),
              "experiments": None},
             {"rev": "a" * 40, "name": "main", "data": node(0.8918, "bf16", "x86_64 AVX512 kernels, native bf16"),
              "experiments": None}]
    header, body = compare_table(experiment_rows(shown))
    assert header == ["experiment", "params", "scores.precision", "scores.cpu", "labels.cut.map", "test.student.map"]
    assert body[0][:4] == ["workspace", "same params", "fp32", "x86_64 AVX2 kernels, no native bf16"]
    assert body[1][1:3] == ["same params", "bf16"]
