"""Tests of plots.py: every figure drawn from a small results dict (evaluate.py's layout, and the toy
run's built by compare.toy_summary itself): the PNG exists, has the figure's size, is not blank, and a
dict missing a field is refused with the field's name."""

import json

import pytest
from matplotlib.image import imread

import compare
import plots


def evaluation_results():
    bucket = {"episodes": "1-2", "traces": 2, "prefix_tokens": [0.0, 10.0, 20.0],
              "maj": {"1": [0.1, 0.5, 0.9], "2": [0.1, 0.6, 0.9]}, "direct_pass@k": {"1": 0.1, "2": 0.2}}
    rows = [{"K": 1, "total_tokens": 20.0, "maj@K": 0.4}, {"K": 2, "total_tokens": 40.0, "maj@K": 0.6}]
    return {"config": {"model": "runs/a/seed_0/checkpoints/step_5"},
            "benchmarks": {"b": {"episodes": {"buckets": [bucket, dict(bucket, episodes="3-4", traces=0)]},
                                 "efficiency": rows,
                                 "regret": {"normalized_regret_by_tokens": {"10": 0.9, "20": 0.6}},
                                 "extrapolate": {"normalized_regret": {"20": 0.6, "40": 0.5}},
                                 "parallel": rows, "linearized": [dict(r, total_tokens=r["total_tokens"] * 0.8) for r in rows],
                                 "progress-hist": {"n": 3, "edges": [-1.0, 0.0, 1.0], "counts": [1, 2]}}}}


def toy_results():
    def run(seed, good):
        return {"pass@1": 0.3 + good + 0.01 * seed, "episodes_per_correct": 5.0 - good,
                "normalized_regret": {"48": 0.9 - good, "96": 0.8 - good}, "J_r": [0.1, 0.2 + good, 0.3],
                "uninformative_share": 0.2 - good / 2, "double_check_share": 0.05,
                "curve": [{"step": 0, "pass@1": 0.3, "uninformative_share": 0.2},
                          {"step": 10, "pass@1": 0.3 + good + 0.02 * seed, "uninformative_share": 0.2 - good / 2}]}
    per_method = {m: {s: run(s, g) for s in range(3)} for m, g in (("base", 0.0), ("grpo", 0.2), ("mrt-rl", 0.25))}
    return {"methods": {m: compare.toy_summary(runs) for m, runs in per_method.items()}}


def check_png(path, width, height):
    image = imread(path)
    assert image.shape[:2] == (height, width)
    assert image[..., :3].std() > 0.05          # not blank: lines, bars and text on white


def test_every_evaluation_figure_is_drawn(tmp_path):
    paths = plots.evaluation_figures(evaluation_results(), str(tmp_path / "r"))
    assert [p.rsplit(".", 2)[1] for p in paths] == ["fig3", "fig7", "fig9", "fig8", "fig16"]
    for p in paths[1:]:
        check_png(p, 700, 450)
    check_png(paths[0], 700, 450)              # one bucket with traces (the empty one is left out): two panels' width


def test_the_toy_figure_and_the_cli_redraw(tmp_path):
    path = tmp_path / "results.json"
    path.write_text(json.dumps(toy_results()))
    plots.main([str(path), "--out", str(tmp_path / "figs")])
    check_png(tmp_path / "figs" / "results.png", 2000, 850)
    (tmp_path / "eval.json").write_text(json.dumps(evaluation_results()))
    assert len(plots.draw(str(tmp_path / "eval.json"))) == 5
    assert plots.model_name("runs/a/seed_0/checkpoints/step_5") == "a/seed_0 step_5"


def test_missing_fields_and_bad_files_are_refused_by_name(tmp_path):
    results = evaluation_results()
    del results["benchmarks"]["b"]["regret"]["normalized_regret_by_tokens"]
    with pytest.raises(ValueError, match="missing field 'normalized_regret_by_tokens'"):
        plots.evaluation_figures(results, str(tmp_path / "r"))
    toy = toy_results()
    del toy["methods"]["grpo"]["uninformative_share"]
    with pytest.raises(ValueError, match="grpo: missing field 'uninformative_share'"):
        plots.toy_figure(toy, str(tmp_path / "t.png"))
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(SystemExit, match="x.json: not JSON"):
        plots.main([str(tmp_path / "x.json")])
    (tmp_path / "y.json").write_text("[]")
    with pytest.raises(SystemExit, match="neither a toy run"):
        plots.main([str(tmp_path / "y.json")])
    with pytest.raises(SystemExit, match="cannot read it"):
        plots.main([str(tmp_path / "missing.json")])
