"""Tests of evaluate.py: pass@k, maj@k, cumulative and normalized regret, the App. E comparator and
budget forcing by hand, the direct baseline, every analysis through the CLI on vLLM (the
backtracking analyses included), resume from partial files, flag checks and torchrun sharding.
Fixtures from conftest: tiny_model, tokenizer, chatml_model, vllm_engine.
"""

import itertools
import json
import math
import os
import types

import pytest

import evaluate
import prover
from conftest import FakeEngine, run_cli, run_torchrun
from episodes import FORCING_PHRASES


# ==============================================================================================
# evaluate.py: metrics by hand, the CLI end to end
# ==============================================================================================

def test_pass_at_k_equals_brute_force_enumeration():
    for n in range(1, 8):
        for c in range(n + 1):
            outcomes = [1] * c + [0] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(outcomes, k))
                brute = sum(any(s) for s in subsets) / math.comb(n, k)
                assert evaluate.pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)
    assert evaluate.pass_at_k(1000, 1, 1) == pytest.approx(0.001)
    assert 0.0 <= evaluate.pass_at_k(10000, 3, 5000) <= 1.0
    with pytest.raises(ValueError):
        evaluate.pass_at_k(5, 6, 1)


def test_maj_at_k_groups_equivalent_answers():
    # raw strings differ, answers agree: 1/2 three times beats 3 twice
    answers = ["\\frac{1}{2}", "0.5", "3", "3", "\\dfrac12"]
    assert evaluate.answer_clusters(answers) == [0, 0, 1, 1, 0]
    assert evaluate.maj_at_k(answers, "1/2", 5) == 1.0
    assert evaluate.maj_at_k(answers, "3", 5) == 0.0
    # maj@1 = mean accuracy; maj@k averaged over all k-subsets: by hand for k = 2:
    # 10 pairs; both from {0,1,4}: 3 pairs -> 1/2 wins; both 3s (2,3): 1 pair -> 3; the 6 mixed pairs
    # tie and the sample seen first wins: (0,2) (0,3) (1,2) (1,3) -> 1/2, (2,4) (3,4) -> 3.  So 7/10.
    assert evaluate.maj_at_k(answers, "1/2", 1) == pytest.approx(3 / 5)
    assert evaluate.maj_at_k(answers, "1/2", 2) == pytest.approx(7 / 10)
    # missing answers do not vote; all missing: wrong
    assert evaluate.maj_at_k([None, None, "7"], "7", 3) == 1.0
    assert evaluate.maj_at_k([None, None], "7", 2) == 0.0
    # more subsets than max_subsets: sampled with a fixed seed, deterministic
    many = ["1", "2"] * 10
    assert evaluate.maj_at_k(many, "1", 10, max_subsets=50) == evaluate.maj_at_k(many, "1", 10, max_subsets=50)


def test_cumulative_regret_definition_4_1_by_hand():
    assert evaluate.cumulative_regret([0.25, 0.5, 1.0]) == pytest.approx(0.75 + 0.5 + 0.0)
    assert evaluate.cumulative_regret([0.25, 0.5], oracle=[0.5, 0.5]) == pytest.approx(0.25)


def test_normalized_regret_is_the_area_of_a_step_curve():
    # curve: 0 until 100 tokens, 0.5 on [100, 300), 0.75 from 300 on; oracle 1
    tokens, acc = [100, 300], [0.5, 0.75]
    # C0 = 400: area = 100*1 + 200*0.5 + 100*0.25 = 225 -> 225/400
    assert evaluate.normalized_regret(tokens, acc, 400) == pytest.approx(225 / 400)
    # C0 = 200 cuts the second step: 100*1 + 100*0.5 = 150 -> 0.75
    assert evaluate.normalized_regret(tokens, acc, 200) == pytest.approx(0.75)
    # C0 = 50: all before the first point
    assert evaluate.normalized_regret(tokens, acc, 50) == pytest.approx(1.0)
    # a point at 0 tokens (the empty prefix) counts from the start
    assert evaluate.normalized_regret([0, 100], [0.5, 1.0], 200) == pytest.approx((100 * 0.5) / 200)
    with pytest.raises(ValueError):
        evaluate.normalized_regret([300, 100], [0.5, 0.75], 400)


def test_appendix_e_comparator_by_hand():
    # [maj@1]_j and [maj@2]_j for j = 0..3 episodes
    maj = {1: [0.0, 0.4, 0.5, 0.9], 2: [0.0, 0.6, 0.55, 0.95]}
    # b=1: comparator = max(0.4, none with 2*j' <= 1) = 0.4 -> 0
    # b=2: max(0.5, [maj@2]_1 = 0.6) -> 0.1
    # b=3: max(0.9, [maj@2]_1 = 0.6) -> 0
    assert evaluate.appendix_e_regret(maj, 1) == pytest.approx(0.0)
    assert evaluate.appendix_e_regret(maj, 2) == pytest.approx(0.1 / 2)
    assert evaluate.appendix_e_regret(maj, 3) == pytest.approx(0.1 / 3)


TRACE_A = "Try 1.\n\nNo.\n\nHmm.\n\nWait, try 2.\n\nYes 2.\n\nDone.\n\n</think>\n\n\\boxed{2}"  # 2 episodes


def forcing_respond(text, n, stop):
    """Budget forcing scripted. Problem "2?" (gold 2): mu answers 2 once the thought holds "try 2"
    and no "Alternatively" (the second forcing phrase talks it out of it). Problem "5?": mu is always
    right. Every extension writes one step and closes its thought."""
    thought = text.split("<think>\n", 1)[1]
    if text.endswith(prover.TIME_IS_UP):
        if "5?" in text:
            return ["\\boxed{5}"] * n
        return ["\\boxed{2}" if "try 2" in thought and "Alternatively" not in thought else "\\boxed{1}"] * n
    if thought == "":
        return [TRACE_A if "2?" in text else "Five.\n\n</think>\n\n\\boxed{5}"] * n
    assert stop == ["</think>"] and thought.endswith(tuple(FORCING_PHRASES))
    return [", one more step.\n\n"] * n


def test_extrapolation_continues_the_in_budget_curve_by_hand(tokenizer):
    cfg = types.SimpleNamespace(extrapolate_n=1, trace_temperature=0.7, top_p=1.0, max_tokens=64, seed=0,
                                forcings=[0, 2, 4], force_tokens=16, prover_max_tokens=16, prover_samples=2,
                                prover_temperature=0.7, group_size=1, episode_end=None)
    problems = [{"id": "a", "problem": "2?", "answer": "2"}, {"id": "b", "problem": "5?", "answer": "5"}]
    (ra, rb) = evaluate.budget_forcing(FakeEngine(tokenizer, forcing_respond), problems, cfg)
    a, b = ra["traces"][0], rb["traces"][0]
    # a: mu on z_{0:0}, z_{0:1}, z_{0:2} (the in-budget curve), then after 2 and after 4 extensions
    assert a["success_rates"] == [0.0, 0.0, 1.0, 0.0, 0.0] and a["forced_at"] == [2, 3, 4]
    assert b["success_rates"] == [1.0] * len(b["tokens"]) and b["forced_at"] == [1, 2, 3]
    # points sit at the tokens of each thought prefix (tokens actually spent)
    ids = tokenizer.encode(TRACE_A, add_special_tokens=False)
    t = a["tokens"]
    assert t[0] == 0 and t[2] == len(prover.prefix_token_ids(tokenizer, ids, TRACE_A.split("</think>")[0]))
    assert t[0] < t[1] < t[2] < t[3] < t[4]
    # normalized regret of a by hand: accuracy 0 on [0, t2), 1 on [t2, t3), 0 from t3 on; b has none
    c1, c2, c3 = t[2] // 2, (t[2] + t[3]) // 2, t[4] + 100
    cfg.budgets, cfg.extrapolate_budgets = [c1, c2], [c3]
    summary = evaluate.summarize_extrapolation([ra, rb], cfg)
    regret_a = {c1: 1.0, c2: t[2] / c2, c3: (c3 - (t[3] - t[2])) / c3}
    assert summary["normalized_regret"] == pytest.approx({str(c): v / 2 for c, v in regret_a.items()})
    assert summary["accuracy"] == {"0": 1.0, "2": 0.5, "4": 0.5}
    assert summary["nominal_budget"] == {"0": 64, "2": 96, "4": 128}
    # a trace right at every point has no regret at any budget, however long it is
    assert all(evaluate.normalized_regret(b["tokens"], b["success_rates"], c) == 0.0 for c in (c1, c2, c3))


def test_direct_baseline_uses_its_own_template_without_thought(tokenizer, tiny_model, chatml_model):
    from transformers import AutoTokenizer
    args = evaluate.parse_args(["--model", tiny_model, "--direct-model", chatml_model, "--analysis", "episodes"])
    assert args.direct_thinking is False and args.direct_max_tokens == 8192  # App. D: the traces' settings
    assert evaluate.parse_args(["--model", tiny_model]).direct_thinking is True  # empty-thought baseline
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    trace = FakeEngine(tokenizer, lambda text, n, stop: ["\\boxed{1}" if text.endswith(prover.TIME_IS_UP)
                                                         else "Hmm.\n\n</think>\n\n\\boxed{1}"] * n)
    direct = FakeEngine(chatml, lambda text, n, stop: ["So the answer is $\\boxed{4}$."] * n)
    cfg = types.SimpleNamespace(traces=1, trace_temperature=0.7, top_p=1.0, max_tokens=32, seed=0, group_size=1,
                                prover_samples=2, prover_temperature=0.7, prover_max_tokens=8, maj_p=[1, 2], thinking=True,
                                direct_thinking=False, direct_n=2, direct_max_tokens=8,
                                episode_end=None)
    (record,) = evaluate.score_episodes(trace, direct, [{"id": "q", "problem": "2+2?", "answer": "4"}], cfg)
    assert direct.prompts == [chatml.decode(prover.build_prompt(chatml, "2+2?", thinking=False))]
    assert "think>" not in direct.prompts[0] and record["direct_correct"] == [True, True]


def test_cli_every_analysis_on_tiny_model_with_vllm(tiny_model, vllm_engine, tmp_path):
    out = str(tmp_path / "results.json")
    argv = ["--model", tiny_model, "--benchmarks", "aime24", "--limit", "3", "--out", out, "--no-plots",
            "--analysis", ",".join(a for a in evaluate.ANALYSES if a not in evaluate.BACKTRACK_ANALYSES), "--num-samples", "4", "--max-tokens", "48", "--traces", "2",
            "--prover-samples", "2", "--prover-max-tokens", "8", "--maj-p", "1,2", "--direct-n", "2", "--direct-max-tokens", "8",
            "--budgets", "16,32,64", "--forcings", "0,2", "--force-tokens", "8", "--extrapolate-n", "1",
            "--extrapolate-budgets", "64,80", "--group-size", "1", "--buckets", "1-1,2-100", "--chunk-size", "2"]
    results = evaluate.run(evaluate.parse_args(argv), engine=vllm_engine)
    with open(out) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    b = saved["benchmarks"]["aime24"]
    assert b["num_problems"] == 3 and saved["config"]["limit"] == 3
    acc = b["accuracy"]
    assert set(acc) >= {"pass@1", "pass@2", "pass@4", "maj@1", "maj@4", "mean_response_tokens", "fraction_truncated"}
    assert 0 < acc["mean_response_tokens"] <= 48 and 0 <= acc["pass@1"] <= acc["pass@4"] <= 1
    assert [r["K"] for r in b["efficiency"]] == [1, 2, 3, 4]
    ep = b["episodes"]
    assert ep["traces"] == 6 and ep["buckets"][-1]["episodes"] == "all" and ep["buckets"][-1]["traces"] == 6
    assert set(ep["buckets"][-1]["maj"]) == {"1", "2"}
    assert set(b["regret"]["normalized_regret_by_tokens"]) == {"16", "32", "64"}
    assert all(0 <= v <= 1 for v in b["regret"]["normalized_regret_by_tokens"].values())
    x = b["extrapolate"]
    assert x["forcings"] == [0, 2] and set(x["normalized_regret"]) == {"16", "32", "64", "80"}
    # the in-budget points of the continued curve are the regret analysis's kind of number
    assert all(0 <= v <= 1 for v in x["normalized_regret"].values())
    assert ep["direct_baseline"]["kind"].startswith("empty thought") and ep["direct_baseline"]["max_tokens"] == 8
    assert not [p for p in os.listdir(tmp_path) if "partial" in p or p.endswith(".done")]


def test_backtrack_analyses_on_tiny_model_with_vllm(tiny_model, vllm_engine, tmp_path):
    out = str(tmp_path / "bt.json")
    argv = ["--model", tiny_model, "--benchmarks", "aime24", "--limit", "2", "--out", out, "--no-plots", "--thinking", "off",
            "--analysis", "parallel,linearized,progress-hist", "--backtrack-n", "3", "--window", "32", "--max-tokens", "12",
            "--prover-samples", "2", "--prover-max-tokens", "4"]
    results = evaluate.run(evaluate.parse_args(argv), engine=vllm_engine)
    b = results["benchmarks"]["aime24"]
    assert [r["K"] for r in b["parallel"]] == [1, 2, 3] and [r["K"] for r in b["linearized"]] == [1, 2, 3, 4]
    assert all(r["total_tokens"] > 0 and 0 <= r["maj@K"] <= 1 for r in b["parallel"] + b["linearized"])
    h = b["progress-hist"]
    assert len(h["edges"]) == 9 and sum(h["counts"]) == h["n"] <= 6
    with pytest.raises(SystemExit):   # the setting has no thought block
        evaluate.parse_args(argv[:argv.index("--thinking")] + argv[argv.index("--thinking") + 2:])


def test_progress_histogram_and_majority_by_hand():
    h = evaluate.progress_histogram([-1.0, -0.25, 0.0, 0.5, 0.75, 1.0], bins=4)
    assert h["edges"] == [-1.0, -0.5, 0.0, 0.5, 1.0] and h["counts"] == [1, 1, 1, 3]
    assert h["mean"] == pytest.approx(1 / 6) and h["fraction_positive"] == pytest.approx(0.5)
    problems = [{"answer": "2"}]
    records = [{"answers": ["1", "2", "2", None], "tokens": [10, 20, 30, 40]}]
    linear = evaluate.summarize_majority_by_tokens(problems, records, sequential=True)
    # first K answers: [1] wrong; [1, 2] tie -> first seen (1) wrong; [1, 2, 2] right; + None: right
    assert [(r["total_tokens"], r["maj@K"]) for r in linear] == [(10, 0.0), (30, 0.0), (60, 1.0), (100, 1.0)]
    parallel = evaluate.summarize_majority_by_tokens(problems, records, sequential=False)
    assert [r["total_tokens"] for r in parallel] == [25, 50, 75, 100] and parallel[0]["maj@K"] == pytest.approx(0.5)


def test_cli_resumes_from_partial_file(tiny_model, vllm_engine, tmp_path):
    out = str(tmp_path / "r.json")
    argv = ["--model", tiny_model, "--benchmarks", "amc23", "--limit", "3", "--out", out, "--no-plots",
            "--num-samples", "2", "--max-tokens", "16", "--chunk-size", "1"]
    args = evaluate.parse_args(argv)
    first = evaluate.run(args, engine=vllm_engine)
    # a killed run: the partial file with one problem done and a half-written line
    config = {k: getattr(args, k) for k in evaluate.CONFIG_KEYS}
    config["analysis_parts"] = ["samples"]

    class CountingEngine:
        def __init__(self, inner):
            self.inner, self.tokenizer, self.prompts = inner, inner.tokenizer, 0

        def generate(self, prompts, **kw):
            self.prompts += len(prompts)
            return self.inner.generate(prompts, **kw)

    rec = evaluate.sample_responses(vllm_engine, prover.load_problems("amc23")[:1], args)[0]
    with open(out + ".rank0.partial.jsonl", "w") as f:
        f.write(json.dumps({"config": config}) + "\n")
        f.write(json.dumps({"benchmark": "amc23", "id": "amc23-0", "part": "samples", "record": rec}) + "\n")
        f.write('{"benchmark": "amc23", "id": "amc')
    counting = CountingEngine(vllm_engine)
    second = evaluate.run(args, engine=counting)
    assert counting.prompts == 2  # only the two problems not done before
    assert second["benchmarks"]["amc23"]["accuracy"] == first["benchmarks"]["amc23"]["accuracy"]
    # a partial file of another configuration is refused, not mixed in
    with open(out + ".rank0.partial.jsonl", "w") as f:
        f.write(json.dumps({"config": {**config, "n": 3}}) + "\n")
    with pytest.raises(SystemExit, match="different configuration"):
        evaluate.run(args, engine=vllm_engine)


def test_cli_rejects_bad_flags(tiny_model, capsys):
    for argv, message in [(["--analysis", "accuracy,nope"], "--analysis"), (["--num-samples", "0"], "--num-samples: expected an integer >= 1"),
                          (["--budgets", "a,b"], "--budgets"), (["--buckets", "5"], "--buckets"),
                          (["--top-p", "0"], "--top-p")]:
        with pytest.raises(SystemExit):
            evaluate.parse_args(["--model", tiny_model] + argv)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate.parse_args(["--model", "/no/such/model"])
    assert "--model: no such folder" in capsys.readouterr().err


def test_cli_torchrun_two_ranks_equals_one_process(tiny_model, tmp_path):
    # Data parallel: each rank its shard, rank 0 gathers. Greedy, so both runs sample the same.
    here = os.path.dirname(os.path.abspath(__file__))
    common = ["evaluate.py", "--engine", "hf", "--enforce-eager", "--dtype", "float32", "--model", tiny_model, "--benchmarks", "aime24,amc23", "--limit", "3",
              "--num-samples", "2", "--temperature", "0", "--max-tokens", "12", "--dtype", "float32",
              "--max-model-len", "1024", "--no-plots"]
    run_torchrun(2, common + ["--out", str(tmp_path / "two.json")], cwd=here)
    run_cli(common + ["--out", str(tmp_path / "one.json")], cwd=here)
    two, one = (json.load(open(tmp_path / f"{name}.json")) for name in ("two", "one"))
    assert two["config"]["world_size"] == 2 and one["config"]["world_size"] == 1
    assert two["benchmarks"] == one["benchmarks"]
    assert sorted(os.listdir(tmp_path)) == ["one.json", "two.json"]
