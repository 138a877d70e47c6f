"""evaluate.py: the paper's measurements, as functions and as a CLI pointed at a checkpoint.

    python evaluate.py --model PATH --benchmarks aime24,math500 --analysis accuracy,episodes,regret --out r.json
    torchrun --nproc_per_node 8 evaluate.py --model PATH ...     # each rank scores its shard of problems

Paper: pass@1 with n = 20 samples (Sec. 8.2, Table 1); the episode scaling curves [maj@p]_j of Sec. 5
(Fig. 3, 24, 25, App. D); cumulative regret (Definition 4.1); normalized regret against token budgets
(Sec. 8.5.1, Fig. 9) and against episode budgets with the App. E comparator (Fig. 26); budget-forcing
extrapolation (App. F, Fig. 29); token efficiency, maj@K against tokens (Sec. 8.3, Fig. 7).

Analyses (--analysis, comma-separated):
  accuracy     n samples per problem: pass@1, pass@k, maj@k, mean response tokens, fraction truncated
  episodes     traces -> episodes -> J_r(mu | x, z_{0:j}) (m samples each) -> [maj@p]_j per bucket of total
               episodes, beside the direct baseline's pass@k (App. D: --direct-model, an instruct model;
               without it, an "empty-thought" baseline of --model, named so in the results). The paper
               also ran it on an Omni-MATH subset (Sec. 5, App. D), which data/ does not ship
  regret       cumulative regret (Def. 4.1), normalized regret at token budgets (Fig. 9) and per
               episode budget (Fig. 26, App. E), on every episode (--group-size 1) unless grouped
  extrapolate  the regret curve continued by budget forcing (App. F): mu after 0/2/4/6/8 extensions
               of a closed thought, accuracy and normalized regret at the in-budget and extended budgets
  efficiency   maj@K against total tokens spent (Fig. 7)
  The backtracking-search setting (App. A, Sec. 8.4; --thinking off, a model warm-started by backtrack.py):
  parallel       --backtrack-n independent attempt-backtrack-revision traces per problem: maj@N against
                 total tokens (Fig. 8, solid)
  linearized     an attempt and --backtrack-n sequential backtracks, each from the last --window tokens
                 (2048 in the paper): maj@K over the first K answers against total tokens (Fig. 8, dashed)
  progress-hist  the progress r_prg(z_1; c) of the backtrack episode of the parallel traces (Def. 6.1 with
                 prover.score_backtracks' mu), as a histogram (Fig. 16)
Results: one JSON file (every number plus the configuration), a table on stdout, and the figures of
plots.py beside it (Fig. 3, 7, 9, and 8, 16 in the backtracking setting; --no-plots skips them;
`python plots.py FILE` redraws them). A killed run resumes from its partial
files (<out>.rank<r>.partial.jsonl). `mrt.py --smoke` prints one trace at a time (smoke, below).

Imports: policy (the process group and rank of a sharded run), episodes (segmentation), grader (r(x, z)),
prover (prompts, engines, mu and progress), flags (the shared command-line flags), plots (the figures). No trainer: a
measurement never depends on how a model was trained.
"""

import argparse
import itertools
import json
import math
import os
import sys
import time

import policy
if __name__ == "__main__":
    # before anything initialises CUDA: evaluate.py joins no process group, so each torchrun rank
    # narrows itself to its own GPU (policy.pin_local_gpu)
    policy.pin_local_gpu()
import episodes
import machine
import flags
import plots
import grader
import prover

import numpy as np
from transformers import AutoTokenizer

BENCHMARKS = ("aime24", "aime25", "amc23", "math500", "minerva")
ANALYSES = ("accuracy", "episodes", "regret", "extrapolate", "efficiency", "parallel", "linearized", "progress-hist")
BACKTRACK_ANALYSES = ("parallel", "linearized", "progress-hist")


# ==============================================================================================
# Metrics (pure functions)
# ==============================================================================================

def pass_at_k(n, c, k):
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1}^{n} (1 - k / i), which never forms the huge binomials.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k: need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def answer_clusters(answers):
    """Group answers by equivalence (grader.is_equiv), not by raw string.

    Returns one cluster id per answer (None for a missing answer); cluster ids are numbered in
    order of first appearance. Each answer joins the first cluster whose first member it equals.
    """
    ids, representatives = [], []
    for a in answers:
        if a is None or not str(a).strip():
            ids.append(None)
            continue
        for cid, rep in enumerate(representatives):
            if a == rep or grader.is_equiv(a, rep):
                ids.append(cid)
                break
        else:
            representatives.append(a)
            ids.append(len(representatives) - 1)
    return ids


def _vote(cluster_ids):
    """The winning cluster of a vote: most members; ties go to the cluster seen first. None: no answers."""
    counts = {}
    for cid in cluster_ids:
        if cid is not None:
            counts[cid] = counts.get(cid, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(cid for cid in cluster_ids if cid is not None and counts[cid] == best)


def maj_at_k(answers, gold, k, max_subsets=512, seed=0):
    """maj@k: accuracy of the majority answer among k samples, answers grouped by equivalence.

    With n = len(answers) > k the value is averaged over k-subsets of the n samples: all of them
    when there are at most max_subsets, else max_subsets drawn with a fixed seed (deterministic).
    Ties go to the answer seen first in sample order; samples without an answer do not vote.
    """
    n = len(answers)
    if not 1 <= k <= n:
        raise ValueError(f"maj_at_k: need 1 <= k <= {n} samples, got k={k}")
    clusters = answer_clusters(answers)
    correct = {}
    for cid, a in zip(clusters, answers):
        if cid is not None and cid not in correct:
            correct[cid] = grader.is_equiv(a, gold)
    if math.comb(n, k) <= max_subsets:
        subsets = itertools.combinations(range(n), k)
    else:
        rng = np.random.default_rng(seed)
        subsets = (sorted(rng.choice(n, size=k, replace=False)) for _ in range(max_subsets))
    votes = [_vote([clusters[i] for i in s]) for s in subsets]
    return float(np.mean([v is not None and correct[v] for v in votes]))


def cumulative_regret(curve, oracle=1.0):
    """Definition 4.1: Delta_k = sum_{j=1}^{k} [ J_r(pi*_j) - J_r(mu(. | x, z_{0:j})) ], the sum over the
    prefixes holding 1..k episodes (the paper's index j-1; notation in episodes.py).

    curve[j - 1] is mu's success after episode j (the k points of a scaling curve, e.g. success_rates[1:]
    of a MetaProver result); oracle is J_r(pi*_j), a number (the paper's 1.0) or one value per point.
    """
    curve = np.asarray(curve, dtype=float)
    return float(np.sum(np.broadcast_to(np.asarray(oracle, dtype=float), curve.shape) - curve))


def normalized_regret(tokens, accuracy, budget, oracle=1.0):
    """Sec. 8.5.1 / Fig. 9: the area between the oracle line and the scaling curve on [0, C0], / C0.

    The scaling curve is a step function of the token budget c: accuracy[j] from tokens[j] until the
    next point (the accuracy of mu when the thought is cut at c tokens), 0 before tokens[0], and the
    last value after the last point (more budget than the trace used changes nothing).
    """
    tokens, accuracy = np.asarray(tokens, dtype=float), np.asarray(accuracy, dtype=float)
    if tokens.shape != accuracy.shape or tokens.ndim != 1 or len(tokens) == 0:
        raise ValueError("normalized_regret: tokens and accuracy must be equal-length, non-empty 1-D")
    if np.any(np.diff(tokens) < 0):
        raise ValueError("normalized_regret: tokens must be non-decreasing")
    if budget <= 0:
        raise ValueError(f"normalized_regret: budget must be > 0, got {budget}")
    edges = np.clip(np.concatenate([[0.0], tokens, [budget]]), 0.0, budget)
    heights = np.concatenate([[0.0], accuracy])          # value on [edges[i], edges[i+1])
    area = np.sum((oracle - heights) * np.diff(edges))
    return float(area / budget)


def appendix_e_regret(maj, budget):
    """App. E / Fig. 26: normalized regret at an episode budget B against a stronger comparator.

    maj[p][j] = [maj@p]_j for j = 0..J episodes (j = 0: the empty thought). At budget b the
    comparator is the better of [maj@1]_b and every [maj@p]_{j'} whose cost p * j' <= b (j' >= 1:
    stopping at an earlier episode and voting over p answers); the regret at b is comparator minus
    [maj@1]_b, zero when no green curve lies above the blue one. Returns the mean over b = 1..B.
    """
    blue = maj[1]
    if not 1 <= budget < len(blue):
        raise ValueError(f"appendix_e_regret: budget must be in 1..{len(blue) - 1}, got {budget}")
    total = 0.0
    for b in range(1, budget + 1):
        comparator = blue[b]
        for p, curve in maj.items():
            for j in range(1, len(curve)):
                if p * j <= b:
                    comparator = max(comparator, curve[j])
        total += comparator - blue[b]
    return total / budget


# ==============================================================================================
# Analyses: per chunk of problems, one record per problem (what the partial files hold)
# ==============================================================================================

def sample_responses(engine, problems, cfg):
    """accuracy / efficiency: n samples z ~ pi(.|x) per problem, graded by r(x, z)."""
    prompts = [prover.build_prompt(engine.tokenizer, q["problem"], thinking=cfg.thinking) for q in problems]
    outputs = engine.generate(prompts, n=cfg.n, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_tokens, seed=cfg.seed)
    records = []
    for q, samples in zip(problems, outputs):
        answers = [grader.extract_answer(s.text, thinking=cfg.thinking) for s in samples]
        records.append({"answers": answers, "correct": [bool(grader.is_equiv(a, q["answer"])) for a in answers],
                        "num_tokens": [s.num_tokens for s in samples],
                        "truncated": [s.finish_reason == "length" for s in samples]})
    return records


def score_episodes(engine, direct_engine, problems, cfg):
    """episodes / regret: traces -> episodes (Sec. 5) -> grouped prefixes -> mu (Eq. 4) -> [maj@p]_j.

    Per trace: total episodes k, the token length of every grouped prefix, J_r(mu | x, z_{0:j}) and
    [maj@p]_j for every j; per problem also the direct baseline's 0/1 results (App. D).
    """
    tok = engine.tokenizer
    prompts = [prover.build_prompt(tok, q["problem"], thinking=cfg.thinking) for q in problems]
    outputs = engine.generate(prompts, n=cfg.traces, temperature=cfg.trace_temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_tokens, seed=cfg.seed)
    traces, meta = [], []
    for q, samples in zip(problems, outputs):
        for s in samples:
            thought, closed = episodes.reasoning_stream(s.text, cfg.thinking, finished=s.finish_reason == "stop")
            eps = episodes.split_episodes(thought, ends=cfg.episode_end)
            prefixes = episodes.thought_prefixes(episodes.group_episodes(eps, cfg.group_size))
            traces.append((q["problem"], q["answer"], prefixes, s.token_ids))
            meta.append({"k": len(eps), "closed": closed, "num_tokens": s.num_tokens,
                         "reward": grader.reward(s.text, q["answer"], thinking=cfg.thinking),
                         "prefix_tokens": [len(prover.prefix_token_ids(tok, s.token_ids, p)) for p in prefixes]})
    mu = prover.MetaProver(engine, m=cfg.prover_samples, temperature=cfg.prover_temperature, top_p=1.0,
                           max_tokens=cfg.prover_max_tokens, seed=cfg.seed, thinking=cfg.thinking)
    scores = mu.score(traces)
    ps = [p for p in cfg.maj_p if p <= cfg.prover_samples]
    for info, score, (_, gold, _, _) in zip(meta, scores, traces):
        info["success_rates"] = score.success_rates
        info["maj"] = {str(p): [maj_at_k(a, gold, p) for a in score.answers] for p in ps}
        info["answer_tokens"] = float(np.mean(score.num_tokens))
    # the direct baseline answers without thinking: --direct-model with its own template (no thought
    # block), or a thinking model after an empty, closed thought
    empty_thought = "</think>\n\n" if cfg.direct_thinking else ""
    direct = direct_engine.generate([prover.build_prompt(direct_engine.tokenizer, q["problem"], empty_thought,
                                                         thinking=cfg.direct_thinking)
                                     for q in problems], n=cfg.direct_n, temperature=cfg.trace_temperature,
                                    top_p=cfg.top_p, max_tokens=cfg.direct_max_tokens, seed=cfg.seed)
    records = []
    for i, q in enumerate(problems):
        records.append({"traces": meta[i * cfg.traces:(i + 1) * cfg.traces],
                        "direct_correct": [grader.reward(s.text, q["answer"], thinking=False) == 1.0 for s in direct[i]]})
    return records


def budget_forcing(engine, problems, cfg):
    """extrapolate (App. F; Fig. 9's dashed points): one scaling curve per trace, cut at larger budgets.

    In budget, the curve is the regret analysis's: J_r(mu | x, z_{0:j}) on the trace's own thought
    prefixes. Beyond it, s1's budget forcing: when the trace closed its thought, drop </think>, append
    the next FORCING_PHRASES entry and let the model think on (each extension capped at
    cfg.force_tokens tokens, ending at </think>); after F extensions, F in cfg.forcings, the extended
    thought is one more prefix, scored by the same mu. Every point sits at the tokens of its thought
    prefix, i.e. the tokens actually spent (the paper's nominal budgets, max_tokens + F * force_tokens,
    are reported beside them). A trace that never closed its thought used its whole budget: it is
    not extended and its curve stays at its last value.
    """
    tok = engine.tokenizer
    prompts = [prover.build_prompt(tok, q["problem"]) for q in problems]
    outputs = engine.generate(prompts, n=cfg.extrapolate_n, temperature=cfg.trace_temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_tokens, seed=cfg.seed)
    states = []
    for q, samples in zip(problems, outputs):
        for s in samples:
            thought, closed = episodes.reasoning_stream(s.text, True, finished=s.finish_reason == "stop")
            eps = episodes.split_episodes(thought, ends=cfg.episode_end)
            prefixes = episodes.thought_prefixes(episodes.group_episodes(eps, cfg.group_size))
            states.append({"q": q, "ids": s.token_ids, "thought": thought, "closed": closed,
                           "prefixes": prefixes, "forced_at": {0: len(prefixes) - 1}})
    # ---- force: F extensions of every closed thought; each F in cfg.forcings adds a prefix -------
    for r in range(1, max(cfg.forcings) + 1):
        live = [st for st in states if st["closed"]]
        if not live:
            break
        phrase = episodes.forcing_phrase(r - 1)
        for st in live:
            st["thought"] += prover.paragraph_break(st["thought"]) + phrase
        outs = engine.generate([prover.build_prompt(tok, st["q"]["problem"], st["thought"]) for st in live], n=1,
                               temperature=cfg.trace_temperature, top_p=cfg.top_p, max_tokens=cfg.force_tokens,
                               seed=cfg.seed + r, stop=[episodes.THINK_CLOSE])
        for st, (s,) in zip(live, outs):
            st["thought"] += s.text
            if r in cfg.forcings:
                st["forced_at"][r] = len(st["prefixes"])
                st["prefixes"].append(st["thought"])
    # ---- score: mu on every prefix, in budget and beyond ----------------------------------------
    mu = prover.MetaProver(engine, m=cfg.prover_samples, temperature=cfg.prover_temperature, top_p=1.0,
                           max_tokens=cfg.prover_max_tokens, seed=cfg.seed)
    scores = mu.score([(st["q"]["problem"], st["q"]["answer"], st["prefixes"], st["ids"]) for st in states])
    records = []
    for i, q in enumerate(problems):
        traces = []
        for st, score in zip(states[i * cfg.extrapolate_n:(i + 1) * cfg.extrapolate_n],
                             scores[i * cfg.extrapolate_n:(i + 1) * cfg.extrapolate_n]):
            last = len(st["prefixes"]) - 1  # an unclosed trace: every F reads its last point
            traces.append({"tokens": [len(prover.prefix_token_ids(tok, st["ids"], p)) for p in st["prefixes"]],
                           "success_rates": score.success_rates, "closed": st["closed"],
                           "forced_at": [st["forced_at"].get(f, last) for f in cfg.forcings]})
        records.append({"traces": traces})
    return records


def sample_attempts(engine, problems, n, max_tokens, temperature, seed):
    """(heads, attempt samples [problem][n]): z_0 ~ pi(.|x), each cut at the marker."""
    heads = [prover.build_prompt(engine.tokenizer, episodes.backtrack_messages(q["problem"]), thinking=False) for q in problems]
    return heads, engine.generate(heads, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                  stop=[episodes.BACKTRACK_MARKER])


def sliding_window(segments, window, is_marker):
    """The linearized mode's context (Sec. 8.4): the last `window` tokens of a trace kept as token-id
    segments (attempts, markers, backtracks + revisions). A cut that would fall inside a marker
    moves to the marker's end, so the window never starts inside one (and then holds fewer tokens)."""
    kept, total = [], 0
    for segment, marker in zip(reversed(segments), reversed(is_marker)):
        if total + len(segment) <= window:
            kept.append(segment)
            total += len(segment)
            continue
        if not marker and window > total:
            kept.append(segment[len(segment) - (window - total):])
        break
    return [t for segment in reversed(kept) for t in segment]


def parallel_traces(engine, problems, n, max_tokens, temperature, seed):
    """Parallel mode: n independent attempt - backtrack - revision traces per problem. Per problem:
    {"answers": the final answer of each trace (the revision's, or the attempt's when the revision
    gives none), "tokens": tokens generated per trace, "texts": the traces}."""
    tok = engine.tokenizer
    heads, attempts = sample_attempts(engine, problems, n, max_tokens, temperature, seed)
    marker = "\n\n" + episodes.BACKTRACK_MARKER
    contexts = [h + tok.encode(a.text.rstrip() + marker, add_special_tokens=False) for h, row in zip(heads, attempts)
                for a in row]
    revisions = engine.generate(contexts, n=1, temperature=temperature, max_tokens=max_tokens, seed=seed + 1,
                                stop=[episodes.BACKTRACK_MARKER])
    records = []
    for i, row in enumerate(attempts):
        answers, tokens, texts = [], [], []
        for j, a in enumerate(row):
            (r,) = revisions[i * n + j]
            answers.append(episodes.parse_steps(r.text)[1] or episodes.parse_steps(a.text)[1])
            tokens.append(a.num_tokens + r.num_tokens)
            texts.append(a.text.rstrip() + marker + r.text)
        records.append({"answers": answers, "tokens": tokens, "texts": texts})
    return records


def linearized_traces(engine, problems, backtracks, window, max_tokens, temperature, seed):
    """Linearized mode: an attempt, then `backtracks` sequential backtracks, each sampled from the
    prompt, the last `window` tokens of the trace so far (sliding_window) and the marker; the trace
    grows far past the context the model was trained with. Per problem: {"answers": the attempt's
    answer, then each revision's, "tokens": tokens generated by each episode pair}."""
    tok = engine.tokenizer
    marker = tok.encode("\n\n" + episodes.BACKTRACK_MARKER, add_special_tokens=False)
    heads, attempts = sample_attempts(engine, problems, 1, max_tokens, temperature, seed)
    segments = [[tok.encode(row[0].text.rstrip(), add_special_tokens=False)] for row in attempts]
    is_marker = [[False] for _ in problems]
    records = [{"answers": [episodes.parse_steps(row[0].text)[1]], "tokens": [row[0].num_tokens]} for row in attempts]
    for b in range(backtracks):
        contexts = [h + sliding_window(seg, window, mk) + marker for h, seg, mk in zip(heads, segments, is_marker)]
        outs = engine.generate(contexts, n=1, temperature=temperature, max_tokens=max_tokens, seed=seed + 1 + b,
                               stop=[episodes.BACKTRACK_MARKER])
        for seg, mk, record, (out,) in zip(segments, is_marker, records, outs):
            seg += [marker, tok.encode(out.text.rstrip(), add_special_tokens=False)]
            mk += [True, False]
            record["answers"].append(episodes.parse_steps(out.text)[1])
            record["tokens"].append(out.num_tokens)
    return records


# ==============================================================================================
# Aggregation: records -> the numbers of the paper's tables and figures
# ==============================================================================================

def score_parallel(engine, problems, cfg):
    """parallel / progress-hist: parallel_traces, then mu on each trace's backtrack; the
    record keeps answers, tokens and the backtrack progress of every trace that parses (Fig. 16)."""
    records = parallel_traces(engine, problems, cfg.backtrack_n, cfg.max_tokens, cfg.trace_temperature, cfg.seed)
    mu = prover.answer_prover(engine, m=cfg.prover_samples, max_tokens=min(cfg.prover_max_tokens, 64), temperature=cfg.prover_temperature,
                                 seed=cfg.seed)
    for q, record in zip(problems, records):
        scores = prover.score_backtracks(mu, [(q["problem"], q["answer"], t) for t in record.pop("texts")])
        record["progress"] = [s[0].progress for s in scores if s]
    return records


def summarize_majority_by_tokens(problems, records, sequential, tokens_key="tokens"):
    """maj@K against total tokens (Fig. 7, Fig. 8). Independent samples or parallel traces: maj@K
    averages over K-subsets (maj_at_k) and K of them cost K times their mean tokens. A linearized
    trace's answers come in order: maj@K votes over its first K answers, which cost what its first
    K episode pairs spent."""
    n = len(records[0]["answers"])
    out = []
    for k in range(1, n + 1):
        if sequential:
            maj = [maj_at_k(r["answers"][:k], q["answer"], k) for q, r in zip(problems, records)]
            tokens = [sum(r[tokens_key][:k]) for r in records]
        else:
            maj = [maj_at_k(r["answers"], q["answer"], k) for q, r in zip(problems, records)]
            tokens = [k * np.mean(r[tokens_key]) for r in records]
        out.append({"K": k, "total_tokens": float(np.mean(tokens)), "maj@K": float(np.mean(maj))})
    return out


def progress_histogram(values, bins=8):
    """Fig. 16: the backtrack episodes' progress r_prg(z_1; c) in [-1, 1], binned: edges, counts, mean."""
    counts, edges = np.histogram(values, bins=bins, range=(-1.0, 1.0))
    return {"edges": edges.tolist(), "counts": counts.tolist(), "n": len(values),
            "mean": float(np.mean(values)) if values else None,
            "fraction_positive": float(np.mean([v > 0 for v in values])) if values else None}


def _ks(n):
    return sorted({k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= n} | {n})


def summarize_accuracy(problems, records):
    n = len(records[0]["correct"])
    out = {"n": n, "pass@1": float(np.mean([np.mean(r["correct"]) for r in records]))}
    for k in _ks(n):
        out[f"pass@{k}"] = float(np.mean([pass_at_k(n, sum(r["correct"]), k) for r in records]))
        out[f"maj@{k}"] = float(np.mean([maj_at_k(r["answers"], q["answer"], k) for q, r in zip(problems, records)]))
    out["mean_response_tokens"] = float(np.mean([t for r in records for t in r["num_tokens"]]))
    out["fraction_truncated"] = float(np.mean([t for r in records for t in r["truncated"]]))
    return out


def summarize_efficiency(problems, records):
    """Fig. 7: maj@K against the total tokens of K responses, K = 1..n."""
    return summarize_majority_by_tokens(problems, records, sequential=False, tokens_key="num_tokens")


def _mean_curves(curves):
    """Average curves of different lengths point by point: (mean, count) per index."""
    length = max((len(c) for c in curves), default=0)
    means = [float(np.mean([c[j] for c in curves if len(c) > j])) for j in range(length)]
    counts = [sum(len(c) > j for c in curves) for j in range(length)]
    return means, counts


def summarize_episodes(records, cfg):
    """Fig. 3 / 24 / 25: per bucket of total episodes, [maj@p]_j for each grouped prefix j."""
    buckets = []
    for lo, hi in cfg.buckets + [(0, 10 ** 9)]:
        chosen = [(r, t) for r in records for t in r["traces"] if lo <= t["k"] <= hi]
        entry = {"episodes": f"{lo}-{hi}" if hi < 10 ** 9 else "all", "traces": len(chosen)}
        if chosen:
            entry["prefix_tokens"], entry["traces_per_j"] = _mean_curves([t["prefix_tokens"] for _, t in chosen])
            entry["J_r"] = _mean_curves([t["success_rates"] for _, t in chosen])[0]
            entry["maj"] = {p: _mean_curves([t["maj"][p] for _, t in chosen])[0] for p in chosen[0][1]["maj"]}
            n_direct = len(chosen[0][0]["direct_correct"])
            entry["direct_pass@k"] = {str(k): float(np.mean([pass_at_k(n_direct, sum(r["direct_correct"]), k)
                                                             for r, _ in chosen])) for k in _ks(n_direct)}
        buckets.append(entry)
    traces = [t for r in records for t in r["traces"]]
    direct = ({"kind": "direct model (App. D)", "model": cfg.direct_model} if cfg.direct_model else
              {"kind": "empty thought: --model answering after <think></think>, not the paper's instruct model",
               "model": cfg.model})
    direct.update(samples=cfg.direct_n, max_tokens=cfg.direct_max_tokens)
    steps = [r for t in traces for r in prover.progress(t["success_rates"])[0]]   # r_prg of every (grouped) episode
    return {"group_size": cfg.group_size, "traces": len(traces), "direct_baseline": direct,
            "mean_episodes": float(np.mean([t["k"] for t in traces])),
            "mean_progress_per_episode": float(np.mean(steps)) if steps else 0.0,
            "fraction_episodes_without_progress": float(np.mean([r <= 0 for r in steps])) if steps else 0.0,
            "fraction_closed": float(np.mean([t["closed"] for t in traces])), "buckets": buckets}


def _extend(curve, length):
    """A scaling curve carried on at its last value up to `length` points (more budget than a trace
    used changes nothing)."""
    return list(curve) + [curve[-1]] * (length - len(curve))


def summarize_regret(records, cfg):
    """Def. 4.1, Fig. 9 (token budgets) and Fig. 26 (episode budgets, App. E comparator).

    The three numbers share one convention: each is computed per trace, then averaged over all traces
    (each trace weighs the same). A trace is scored on prefixes of group_size episodes (1 by default,
    Def. 4.1's episodes); at a budget beyond its length a trace keeps its last value, and a trace with
    no episode has cumulative regret 0 (an empty sum).
    """
    traces = [t for r in records for t in r["traces"]]
    out = {"group_size": cfg.group_size,
           "cumulative_regret": float(np.mean([cumulative_regret(t["success_rates"][1:]) for t in traces])),
           "normalized_regret_by_tokens": {str(c): float(np.mean([normalized_regret(np.maximum.accumulate(t["prefix_tokens"]), t["success_rates"], c)
                                                                 for t in traces])) for c in cfg.budgets}}
    longest = max(len(t["maj"]["1"]) for t in traces)
    out["normalized_regret_by_episodes"] = {
        str(b): float(np.mean([appendix_e_regret({int(p): _extend(c, b + 1) for p, c in t["maj"].items()}, b)
                               for t in traces])) for b in range(1, longest)}
    return out


def summarize_extrapolation(records, cfg):
    """Fig. 29 (accuracy after F extensions) and Fig. 9's dashed points (normalized regret of the
    continued curve), with the per-trace averaging of summarize_regret."""
    traces = [t for r in records for t in r["traces"]]
    out = {"forcings": cfg.forcings, "points_at": "tokens spent in the thought prefix",
           "nominal_budget": {str(f): cfg.max_tokens + f * cfg.force_tokens for f in cfg.forcings},
           "accuracy": {}, "mean_tokens": {}, "fraction_extended": float(np.mean([t["closed"] for t in traces]))}
    for i, f in enumerate(cfg.forcings):
        out["accuracy"][str(f)] = float(np.mean([t["success_rates"][t["forced_at"][i]] for t in traces]))
        out["mean_tokens"][str(f)] = float(np.mean([t["tokens"][t["forced_at"][i]] for t in traces]))
    out["normalized_regret"] = {str(c): float(np.mean([normalized_regret(np.maximum.accumulate(t["tokens"]), t["success_rates"], c)
                                                       for t in traces])) for c in cfg.budgets + cfg.extrapolate_budgets}
    return out


# ==============================================================================================
# The run: shards, partial files, resume, results
# ==============================================================================================

PARTS = {"accuracy": "samples", "efficiency": "samples", "episodes": "episodes", "regret": "episodes",
         "extrapolate": "forcing", "parallel": "backtrack", "progress-hist": "backtrack", "linearized": "linearized"}
CONFIG_KEYS = ("model", "benchmarks", "n", "temperature", "top_p", "max_tokens", "traces", "trace_temperature",
               "group_size", "prover_samples", "prover_temperature", "prover_max_tokens", "maj_p", "direct_model", "direct_n",
               "direct_max_tokens", "direct_thinking", "forcings", "force_tokens", "extrapolate_n", "limit", "seed", "thinking",
               "backtrack_n", "window")


def add_evaluate_args(p):
    """evaluate.py's flags; defaults from App. D, Sec. 8 and App. F."""
    flags.add_model(p, help="the model to evaluate: an HF model folder or a Hugging Face model id")
    p.add_argument("--benchmarks", default=",".join(BENCHMARKS),
                   help=f"comma-separated names in data/ or JSONL paths (default: {','.join(BENCHMARKS)})")
    p.add_argument("--analysis", default="accuracy", help=f"comma-separated, from: {','.join(ANALYSES)} (default accuracy)")
    p.add_argument("--out", default=None, help="results JSON (default results/<model folder name>.json)")
    p.add_argument("--limit", type=flags.positive_int, default=None, help="first N problems of each benchmark (default all)")
    p.add_argument("--num-samples", dest="n", type=flags.positive_int, default=20,
                   help="accuracy: samples per problem (Sec. 8.2: 20)")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=0.6,
                   help="accuracy: sampling temperature (default 0.6)")
    p.add_argument("--top-p", type=flags.probability, default=0.95, help="top-p for all sampling (default 0.95)")
    p.add_argument("--max-tokens", type=flags.positive_int, default=16384, help="response budget (Sec. 8.1: 16K)")
    p.add_argument("--traces", type=flags.positive_int, default=4, help="episodes: traces per problem (App. D: 4)")
    p.add_argument("--trace-temperature", type=flags.nonnegative_float, default=0.7,
                   help="episodes/extrapolate/direct temperature (App. D: 0.7)")
    p.add_argument("--group-size", type=flags.positive_int, default=1,
                   help="episodes per mu prefix. Default 1: every episode, as Def. 4.1 sums over episodes; App. D "
                        "grouped 3 (AIME) or 5 (Omni-MATH) episodes to plot Fig. 3, at 1/3 or 1/5 of the mu calls")
    p.add_argument("--buckets", default="6-10,26-30,41-45", help="buckets of total episodes for the Fig. 3 table")
    flags.add_prover(p, samples=8, max_tokens=4096)
    p.add_argument("--maj-p", type=flags.int_list(1), default=[1, 2, 4, 8], help="p of [maj@p]_j (default 1,2,4,8; p <= m)")
    p.add_argument("--direct-model", default=None,
                   help="the direct baseline's model, a folder or a model id (App. D: an instruct model, Qwen2.5-32B-Instruct; App. E: "
                        "Qwen2.5-Math-7B-Instruct), prompted with its own chat template and no thought. Default: "
                        "not the paper's baseline but an 'empty-thought' one, --model answering after <think></think>")
    p.add_argument("--direct-n", type=flags.positive_int, default=32, help="direct baseline samples per problem (App. D: 32)")
    p.add_argument("--direct-max-tokens", type=flags.positive_int, default=8192,
                   help="direct baseline response budget (App. D: the traces' settings, 8192)")
    p.add_argument("--budgets", type=flags.int_list(1), default=[4096, 8192, 12288, 16384],
                   help="token budgets C0 of normalized regret (Fig. 9; default 4096,8192,12288,16384)")
    p.add_argument("--forcings", type=flags.int_list(0), default=[0, 2, 4, 6, 8],
                   help="budget-forcing extension counts (App. F; default 0,2,4,6,8)")
    p.add_argument("--force-tokens", type=flags.positive_int, default=2048, help="cap of each forced extension (App. F: 2048)")
    p.add_argument("--extrapolate-n", type=flags.positive_int, default=4, help="extrapolate: traces per problem")
    p.add_argument("--extrapolate-budgets", type=flags.int_list(1), default=[20480, 24576, 28672, 32768],
                   help="token budgets of the extrapolated normalized regret (Fig. 9 dashed)")
    p.add_argument("--backtrack-n", type=flags.positive_int, default=10,
                   help="parallel: traces per problem; linearized: sequential backtracks (Fig. 8: K up to 10)")
    p.add_argument("--window", type=flags.positive_int, default=2048,
                   help="linearized: tokens of the trace kept in context (Sec. 8.4: 2048)")
    p.add_argument("--chunk-size", type=flags.positive_int, default=32,
                   help="problems per engine batch; also the resume granularity")
    flags.add_seed(p, help="sampling seed (default 0)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures (plots.py draws them from the JSON later)")
    flags.add_engine(p)


def check_args(p, args):
    """Analyses, buckets, model folders, the thought block each analysis needs; the default --out."""
    if isinstance(args.analysis, str):
        args.analysis = [a.strip() for a in args.analysis.split(",") if a.strip()]
    bad = [a for a in args.analysis if a not in ANALYSES]
    if bad or not args.analysis:
        p.error(f"--analysis: unknown {bad}; choose from {', '.join(ANALYSES)}")
    args.forcings = sorted(set(args.forcings) | {0})
    if isinstance(args.buckets, str):
        try:
            args.buckets = [tuple(int(x) for x in b.split("-")) for b in args.buckets.split(",") if b.strip()]
            assert all(len(b) == 2 and 0 <= b[0] <= b[1] for b in args.buckets)
        except (ValueError, AssertionError):
            p.error(f"--buckets: expected ranges like 6-10,26-30, got {args.buckets!r}")
    flags.check_model(p, args, coordinate=False)
    flags.check_model(p, args, "direct_model", coordinate=False)
    flags.check_engine(p, args)
    args.thinking = prover.resolve_thinking(args.thinking, AutoTokenizer.from_pretrained(args.model))
    # the direct baseline answers at once: an instruct model's own template without a thought block,
    # and a thinking model (the default, --model itself) after an empty, closed thought
    args.direct_thinking = (prover.template_thinks(AutoTokenizer.from_pretrained(args.direct_model))
                            if args.direct_model else args.thinking)
    if not args.thinking and "extrapolate" in args.analysis:
        p.error("--analysis extrapolate forces a model to think longer after </think> (App. F): it needs a model "
                "with a thought block (--thinking on)")
    if args.thinking and any(a in BACKTRACK_ANALYSES for a in args.analysis):
        p.error(f"--analysis {','.join(a for a in args.analysis if a in BACKTRACK_ANALYSES)}: the backtracking setting "
                "(App. A) has no thought block; pass --thinking off")
    args.out = args.out or os.path.join("results", os.path.basename(os.path.normpath(args.model)) + ".json")
    return args


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_evaluate_args(p)
    return check_args(p, p.parse_args(argv))


def config(**values):
    """evaluate.py's config from Python: its flags by name, checked as on the command line."""
    return flags.config(add_evaluate_args, check_args, **values)


def _read_partial(path, config):
    """Records of an earlier, interrupted run with the same configuration: {(bench, id, part): record}."""
    done = {}
    if not os.path.exists(path):
        return done
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                break  # the run was killed while writing its last line: redo that problem
            raise SystemExit(f"{path}:{lineno}: corrupt partial results line; delete the file to start over")
        if lineno == 1:
            if row.get("config") != config:
                raise SystemExit(f"{path}: partial results of a different configuration; delete it or use another --out")
            continue
        done[(row["benchmark"], row["id"], row["part"])] = row["record"]
    return done


def score_shard(args, config, mine, engine=None):
    """Score this rank's problems, part by part, appending each record to the rank's partial file
    (fsynced per chunk) so that a killed run resumes where it stopped. Returns every record of this
    configuration, old and new: {(benchmark, id, part): record}. Engines built here are closed here."""
    rank = int(os.environ.get("RANK", 0))
    partial_path = f"{args.out}.rank{rank}.partial.jsonl"
    done = _read_partial(partial_path, config)
    parts = config["analysis_parts"]
    todo = [(b, q) for b, q in mine if any((b, q["id"], part) not in done for part in parts)]
    if not todo:
        return done, {}
    os.makedirs(os.path.dirname(os.path.abspath(partial_path)), exist_ok=True)
    fresh = not os.path.exists(partial_path) or os.path.getsize(partial_path) == 0
    built = []  # engines made here are closed here, once scoring is over (a caller's are not)
    engines = 1 + bool("episodes" in parts and args.direct_model)
    if engines == 2:   # the policy's engine and the direct model's share this rank's GPU
        args = argparse.Namespace(**{**vars(args), "gpu_memory_utilization":
                                     machine.engine_memory_fraction(args.gpu_memory_utilization, 2)})
    if engine is None:
        engine = prover.engine_from_args(args, args.model, seed=args.seed)
        built.append(engine)
    direct_engine = engine
    if engines == 2:
        direct_engine = prover.engine_from_args(args, args.direct_model, seed=args.seed)
        built.append(direct_engine)
    seconds = {}
    from tqdm import tqdm
    with open(partial_path, "a", encoding="utf-8") as log, \
            tqdm(total=len(todo), desc=f"evaluate (rank {rank})", unit="problem", disable=rank != 0) as bar:
        if fresh:
            log.write(json.dumps({"config": config}) + "\n")
        for start in range(0, len(todo), args.chunk_size):
            chunk = todo[start:start + args.chunk_size]
            for part in [part for part in ("samples", "episodes", "forcing", "backtrack", "linearized") if part in parts]:
                need = [(b, q) for b, q in chunk if (b, q["id"], part) not in done]
                if not need:
                    continue
                t_part = time.time()
                problems = [q for _, q in need]
                if part == "samples":
                    records = sample_responses(engine, problems, args)
                elif part == "episodes":
                    records = score_episodes(engine, direct_engine, problems, args)
                elif part == "backtrack":
                    records = score_parallel(engine, problems, args)
                elif part == "linearized":
                    records = linearized_traces(engine, problems, args.backtrack_n, args.window,
                                                          args.max_tokens, args.trace_temperature, args.seed)
                else:
                    records = budget_forcing(engine, problems, args)
                seconds[part] = seconds.get(part, 0.0) + time.time() - t_part
                for (b, q), record in zip(need, records):
                    done[(b, q["id"], part)] = record
                    log.write(json.dumps({"benchmark": b, "id": q["id"], "part": part, "record": record}) + "\n")
                log.flush()
                os.fsync(log.fileno())
            bar.update(len(chunk))
    for e in built:
        e.close()
    return done, seconds


def gather_shards(args, config, world, done):
    """Rank 0 waits for every rank's done marker of this launch, then reads their records.

    No process group is needed: each rank marks its shard done with this launch's id (so a marker
    left by an earlier, killed launch is not mistaken for one of this launch) and rank 0 reads files.
    """
    rank = int(os.environ.get("RANK", 0))
    launch = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'single')}:{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    with open(f"{args.out}.rank{rank}.done", "w") as f:
        f.write(launch)
    if rank != 0:
        return None

    def finished(r):
        try:
            with open(f"{args.out}.rank{r}.done") as f:
                return f.read() == launch
        except FileNotFoundError:
            return False
    for r in range(1, world):
        while not finished(r):
            time.sleep(2)
        done.update(_read_partial(f"{args.out}.rank{r}.partial.jsonl", config))
    return done


def summarize(args, config, world, benchmarks, done):
    """The results dict: per benchmark, the summaries of the analyses asked for."""
    results = {"config": {**config, "analysis": args.analysis, "budgets": args.budgets, "buckets": args.buckets,
                          "extrapolate_budgets": args.extrapolate_budgets, "world_size": world,
                          "engine": args.engine or ("vllm" if prover.vllm_available() else "hf")},
               "benchmarks": {}}
    for b, problems in benchmarks.items():
        entry = {"num_problems": len(problems)}

        def records(part):
            return [done[(b, q["id"], part)] for q in problems]
        if "accuracy" in args.analysis:
            entry["accuracy"] = summarize_accuracy(problems, records("samples"))
        if "efficiency" in args.analysis:
            entry["efficiency"] = summarize_efficiency(problems, records("samples"))
        if "episodes" in args.analysis:
            entry["episodes"] = summarize_episodes(records("episodes"), args)
        if "regret" in args.analysis:
            entry["regret"] = summarize_regret(records("episodes"), args)
        if "extrapolate" in args.analysis:
            entry["extrapolate"] = summarize_extrapolation(records("forcing"), args)
        if "parallel" in args.analysis:
            entry["parallel"] = summarize_majority_by_tokens(problems, records("backtrack"), sequential=False)
        if "linearized" in args.analysis:
            entry["linearized"] = summarize_majority_by_tokens(problems, records("linearized"), sequential=True)
        if "progress-hist" in args.analysis:
            entry["progress-hist"] = progress_histogram([p for r in records("backtrack") for p in r["progress"]])
        results["benchmarks"][b] = entry
    if "accuracy" in args.analysis:
        results["average_pass@1"] = float(np.mean([e["accuracy"]["pass@1"] for e in results["benchmarks"].values()]))
    return results


def run(args, engine=None):
    """Run the analyses: shard the problems over ranks, score this rank's shard, gather on rank 0,
    summarise, write the JSON (and plots). `engine`: an engine the caller already has (the tests)."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    config = {k: getattr(args, k) for k in CONFIG_KEYS}
    config["analysis_parts"] = sorted({PARTS[a] for a in args.analysis})

    # ---- shard: every benchmark's problems, round-robin over ranks (errors before any engine starts)
    benchmarks = {}
    for name in [b.strip() for b in args.benchmarks.split(",") if b.strip()]:
        benchmarks[os.path.splitext(os.path.basename(name))[0]] = prover.load_problems(name)[:args.limit]
    work = [(b, q) for b in benchmarks for q in benchmarks[b]]
    mine = [w for i, w in enumerate(work) if i % world == rank]

    # ---- score, gather, summarise ------------------------------------------------------------------
    t0 = time.time()
    done, seconds = score_shard(args, config, mine, engine)
    done = gather_shards(args, config, world, done)
    if done is None:
        return None   # not rank 0
    results = summarize(args, config, world, benchmarks, done)
    results["seconds"] = {"total": time.time() - t0, **{f"{part} (rank 0)": s for part, s in seconds.items()}}
    policy.write_atomic(args.out, json.dumps(results, indent=1))
    for r in range(world):  # the results file now holds everything: drop the run's scratch files
        for suffix in (".partial.jsonl", ".done"):
            if os.path.exists(f"{args.out}.rank{r}{suffix}"):
                os.remove(f"{args.out}.rank{r}{suffix}")
    print_table(results)
    if not args.no_plots:   # Fig. 3, 7, 9 (and 8, 16) beside the results file
        for path in plots.evaluation_figures(results, os.path.splitext(args.out)[0]):
            print(f"wrote {path}")
    return results


def print_table(results):
    for b, e in results["benchmarks"].items():
        print(f"== {b} ({e['num_problems']} problems)")
        if "accuracy" in e:
            a = e["accuracy"]
            print("   accuracy: " + "  ".join(f"{k} {v:.3f}" for k, v in a.items() if "@" in k)
                  + f"  tokens {a['mean_response_tokens']:.0f}  truncated {a['fraction_truncated']:.2f}")
        if "efficiency" in e:
            print("   efficiency (K: tokens, maj@K): " + "  ".join(
                f"{r['K']}: {r['total_tokens']:.0f}, {r['maj@K']:.3f}" for r in e["efficiency"]))
        if "episodes" in e:
            ep = e["episodes"]
            print(f"   episodes: {ep['traces']} traces, mean k {ep['mean_episodes']:.1f}, groups of {ep['group_size']}")
            for bucket in ep["buckets"]:
                if bucket["traces"]:
                    print(f"     k in {bucket['episodes']:>7s} ({bucket['traces']} traces): " + "  ".join(
                        f"[maj@{p}]_j " + " ".join(f"{v:.2f}" for v in curve) for p, curve in bucket["maj"].items())
                        + "  direct " + " ".join(f"pass@{k} {v:.2f}" for k, v in bucket["direct_pass@k"].items()))
        if "regret" in e:
            r = e["regret"]
            print(f"   regret: cumulative (Def. 4.1) {r['cumulative_regret']:.3f}; normalized by tokens "
                  + "  ".join(f"C0={c}: {v:.3f}" for c, v in r["normalized_regret_by_tokens"].items())
                  + "; by episodes " + "  ".join(f"{b}: {v:.3f}" for b, v in r["normalized_regret_by_episodes"].items()))
        if "extrapolate" in e:
            x = e["extrapolate"]
            print("   extrapolate: " + "  ".join(f"F={f}: acc {x['accuracy'][f]:.3f} tokens {x['mean_tokens'][f]:.0f}"
                                                for f in x["accuracy"])
                  + "; normalized regret " + "  ".join(f"C0={c}: {v:.3f}" for c, v in x["normalized_regret"].items()))
        for mode in ("parallel", "linearized"):
            if mode in e:
                print(f"   {mode} (K: tokens, maj@K): " + "  ".join(
                    f"{r['K']}: {r['total_tokens']:.0f}, {r['maj@K']:.3f}" for r in e[mode]))
        if "progress-hist" in e:
            h = e["progress-hist"]
            print(f"   backtrack progress ({h['n']} backtracks): counts {h['counts']} over [-1, 1]"
                  + (f", mean {h['mean']:.3f}, positive {h['fraction_positive']:.2f}" if h["n"] else ""))
    if "average_pass@1" in results:
        print(f"== average pass@1 {results['average_pass@1']:.3f}")


# ==============================================================================================
# The smoke run: sample, segment, score every prefix with mu, and print it all (mrt.py --smoke)
# ==============================================================================================

def smoke(args, model):
    """The measurement half of the pipeline on a few problems, printed trace by trace: sample, cut each
    thought into episodes, J_r(mu | x, z_{0:j}) at every prefix (Eq. 4) and the progress of each
    episode (Def. 6.1). `model`: the folder to sample from (mrt.py builds a tiny one when none is given)."""
    engine = prover.engine_from_args(args, model, seed=args.seed)
    problems = [(q["problem"], q["answer"]) for q in args.problems]
    thinking = prover.resolve_thinking(args.thinking, engine.tokenizer)
    print(f"thinking: {'on' if thinking else 'off'} (--thinking {args.thinking})")
    mu = prover.MetaProver(engine, m=args.prover_samples, max_tokens=args.prover_max_tokens, seed=args.seed, thinking=thinking)

    # ---- generate: z ~ pi(.|x) -------------------------------------------------------------------
    prompts = [prover.build_prompt(engine.tokenizer, x, thinking=thinking) for x, _ in problems]
    outputs = engine.generate(prompts, n=args.n, temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed)

    # ---- segment: z -> <think> z_0 .. z_{k-1} </think> answer (Sec. 5, App. D) --------------------
    traces = []
    for (x, gold), samples in zip(problems, outputs):
        for sample in samples:
            thought, closed = episodes.reasoning_stream(sample.text, thinking, finished=sample.finish_reason == "stop")
            traces.append((x, gold, sample, closed, episodes.split_episodes(thought, min_steps=args.min_steps,
                                                                              ends=args.episode_end)))

    # ---- score: J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), progress (Def. 6.1) ----------------
    scores = mu.score([(x, gold, episodes.thought_prefixes(eps), s.token_ids) for x, gold, s, _, eps in traces])

    for (x, gold, sample, closed, eps), score in zip(traces, scores):
        per_episode, _ = prover.progress(score.success_rates)
        print("=" * 100)
        print(f"problem: {x[:150]!r}  gold: {gold!r}")
        print(f"response: {sample.num_tokens} tokens, finish={sample.finish_reason}, "
              f"{'thought closed' if thinking else 'finished'}={closed}, "
              f"episodes k={len(eps)}, reward r(x, z)={grader.reward(sample.text, gold, thinking=thinking)}")
        print(f"   J_r(mu | x, z_0:0) = {score.success_rates[0]:.2f}")
        for j, ep in enumerate(eps):
            print(f"   z_{j}: {ep[:100]!r}{'...' if len(ep) > 100 else ''}")
            print(f"        J_r(mu | x, z_0:{j + 1}) = {score.success_rates[j + 1]:.2f}   r_prg = {per_episode[j]:+.2f}")
    engine.close()


def add_smoke_args(p):
    p.add_argument("--smoke", action="store_true", help="this run: sample, segment, score every prefix with mu")
    flags.add_model(p, required=False,
                    help="the model to sample from, a folder or a Hugging Face model id; default: build a random-weight tiny model in a temp folder")
    p.add_argument("--problems", default=os.path.join(prover.DATA_DIR, "aime24.jsonl"),
                   help="JSONL file with 'problem' and 'answer' fields per line (default: data/aime24.jsonl)")
    p.add_argument("--num-problems", type=flags.positive_int, default=3, help="how many problems to sample for (default 3)")
    p.add_argument("--num-samples", dest="n", type=flags.positive_int, default=2, help="responses per problem (default 2)")
    p.add_argument("--max-tokens", type=flags.positive_int, default=256,
                   help="max generated tokens per response (default 256)")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=0.7, help="sampling temperature (App. D: 0.7)")
    p.add_argument("--min-steps", type=flags.positive_int, default=3, help="min steps per episode (App. D: 3)")
    flags.add_prover(p, samples=4, max_tokens=32, temperature=False, samples_source="App. D: 8; here",
                     max_tokens_source="App. D: 4096")
    flags.add_seed(p, help="sampling seed (default 0)")
    flags.add_engine(p)


def check_smoke_args(p, args):
    flags.check_engine(p, args)
    flags.check_model(p, args, coordinate=False)
    try:
        args.problems = prover.load_problems(args.problems)[:args.num_problems]
    except (OSError, ValueError) as e:
        p.error(f"--problems: {e}")
    return args


if __name__ == "__main__":
    try:
        run(parse_args())
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"evaluate.py: {e}")
