"""compare.py: the default run, MRT against outcome-reward RL in the toy world, end to end on a CPU.

    python mrt.py [--quick]          # the same as python compare.py [--quick]: mrt.py's default mode

From the toy world's warm start (toy.py), every method of Table 1 that the toy world can run (GRPO,
MRT-RL, the length penalty, STaR, MRT-STaR) and Sec. 6.2's per-episode variant of MRT-RL (with mu, and with
the exact J_r as an oracle mu, which separates the mechanism from its estimator) train with the same steps,
prompts and samples for several seeds (by default GRPO and the per-episode variant with mu and with the
oracle; the others by --methods); the RL methods' checkpoints along the way give learning curves
(toy.measure's scripted reading); evaluate.py measures every result and the warm start on held-out problems. Tables of mean ± standard error over seeds and of each method minus GRPO paired
by seed (95 % t-intervals), results.json, results.png (plots.toy_figure). On a CPU machine two worker
processes share the (method, seed) runs (--jobs, run_workers); the parent assembles the tables.

Imports: policy (the process group, weight loads), prover (the engine), toy (the world, its warm start
and its scripted reading of traces), grpo and mrt_rl (GRPO and Algorithm 2), star (STaR and
Algorithm 1), evaluate (the measurements), plots (the figure), flags (the shared command-line flags). Each trainer is
called through its config() with the values fixed here: the same checks as its command line, no argv.
"""

import argparse
import dataclasses
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time

import policy
import evaluate
import flags
import grpo
import mrt_rl
import plots
import prover
import star
import toy

import torch.distributed as dist
from transformers import AutoTokenizer


# ==============================================================================================
# The default run: MRT against outcome-reward RL in the toy world (toy.py), end to end on a CPU
# ==============================================================================================

TOY_METHODS = ("grpo", "mrt-rl", "mrt-rl-episode", "mrt-rl-episode-oracle", "length-penalty", "star", "mrt-star")
RL_TOY_METHODS = ("grpo", "mrt-rl", "mrt-rl-episode", "mrt-rl-episode-oracle", "length-penalty")
# what `python mrt.py` runs (the question the toy world asks; 26 min for 5 seeds on 2 cores with two workers); the rest by --methods
DEFAULT_TOY_METHODS = ("grpo", "mrt-rl-episode", "mrt-rl-episode-oracle")
TOY_LABELS = {"base": "the warm start", "grpo": "outcome-reward GRPO", "mrt-rl": "Algorithm 2 as written (trace bonus)",
              "mrt-rl-episode": "Sec. 6.2 per-episode variant (not Algorithm 2), mu with m = G",
              "mrt-rl-episode-oracle": "the same with the exact J_r (toy.scripted_success_rate) in place of mu",
              "length-penalty": "GRPO + length penalty (Table 1)", "star": "STaR", "mrt-star": "Algorithm 1 (MRT-STaR)"}
TOY_LEGEND = """
pass@1, mean_tokens: evaluate.py accuracy (n samples per held-out problem at --eval-max-tokens); mean_episodes,
episodes_per_correct (mean_episodes / pass@1, lower is better), uninformative_share, double_check_share,
double_checks_per_trace, gave_up, truncated, statements_without_break: toy.measure's scripted reading of the same kind
of samples (episodes before x is found whose check adds nothing: a try outside the interval or a re-try; episodes
that check x again once found, as a share of all episodes and per trace; closed thoughts without finding x; responses
cut at the budget; statements not followed by their period and the step break);
regret@C0: normalized regret (Fig. 9, mu with m = 8 at every episode) at token budget C0, lower is better;
scripted_regret: the same with the ideal mu."""


def toy_train(method, seed, folder, warm, engine, paths, args):
    """Train one (method, seed) of the comparison from the warm start with the methods' own loops and
    checked configs; a killed run resumes. Returns the trained weights' folder; the engine holds them
    on return."""
    common = dict(model=warm, train=paths["train"], out=folder, seed=seed, max_model_len=args.max_model_len,
                  thinking="on", engine=args.engine, episode_end=args.episode_end)
    if method in RL_TOY_METHODS:
        # a checkpoint at every step of the learning curve (all kept until toy_curve has measured them)
        every = math.gcd(args.steps, *args.curve_steps)
        rl = dict(common, max_steps=args.steps, batch_size=args.batch_size, num_generations=args.num_generations,
                  max_prompt_length=64, max_completion_length=args.max_completion_length, lr=args.lr, beta=0.0,
                  warmup_ratio=0.0, temperature=args.temperature, save_every=every,
                  keep_checkpoints=args.steps // every, micro_batch_tokens=4096)
        done = policy.latest_checkpoint(folder)
        if done and done.endswith(f"step_{args.steps}"):
            policy.load_weights_into_engine(done, engine)
            return done
        if not done:   # a fresh run starts from the warm start; a resumed one, from its checkpoint (grpo.train syncs it)
            policy.load_weights_into_engine(warm, engine)
        if method.startswith("mrt-rl"):
            cfg = mrt_rl.config(**rl, resume=bool(done), alpha=args.alpha, prover_max_tokens=16,
                                progress_credit="episode" if method.startswith("mrt-rl-episode") else "trace")
            oracle = toy.oracle_success_rate(toy.World()) if method == "mrt-rl-episode-oracle" else None
            grpo.train(cfg, engine=engine, step_fn=mrt_rl.Algorithm2(cfg, AutoTokenizer.from_pretrained(warm), oracle))
        else:
            grpo.train(grpo.config(**rl, resume=bool(done), reward="length-penalty" if method == "length-penalty"
                                   else "outcome", length_penalty_alpha=args.length_penalty_alpha), engine=engine)
        return policy.latest_checkpoint(folder)
    cfg = star.config(**common, variant="mrt" if method == "mrt-star" else "star", iterations=args.iterations,
                      rollouts=args.star_rollouts, max_tokens=args.max_completion_length, temperature=args.temperature,
                      prover_samples=20, weight_by_progress=True,   # Sec. 8.1, App. B.2
                      prover_max_tokens=16, lr=args.star_lr, epochs=2, batch_size=32, max_seq_length=256,
                      micro_batch_tokens=4096, save_every=1000, keep_checkpoints=1)
    # star.run wants the engine to hold the weights it resumes from; each SFT syncs its result, and an
    # iteration that kept nothing leaves them as they were, so on return the engine holds the last ones
    policy.load_weights_into_engine(star.resume_point(cfg)[1], engine)
    star.run(cfg, engine=engine)
    return star.resume_point(cfg)[1]


def toy_evaluate(weights, seed, folder, engine, paths, args):
    """evaluate.py's analyses of one checkpoint on the held-out problems (its results JSON)."""
    cfg = evaluate.config(model=weights, benchmarks=paths["eval"], analysis="accuracy,episodes,regret,efficiency",
                          out=os.path.join(folder, "eval.json"), n=args.eval_samples, max_tokens=args.eval_max_tokens,
                          traces=args.eval_traces, prover_samples=8, prover_max_tokens=16, maj_p=[1, 2, 4, 8],
                          direct_n=8, direct_max_tokens=16, budgets=args.budgets, buckets="1-2,3-4,5-20", seed=seed,
                          no_plots=True, max_model_len=args.max_model_len, chunk_size=64, thinking="on", engine=args.engine,
                          episode_end=args.episode_end)
    return evaluate.run(cfg, engine=engine)


def scripted_regret(curves, budgets):
    """Normalized regret (Fig. 9, evaluate.normalized_regret) of toy.measure's scripted scaling curves:
    the ideal mu's J_r against thought tokens, averaged over samples, at each budget C0."""
    return {str(c): statistics.fmean(evaluate.normalized_regret(tokens, rates, c) for tokens, rates in curves)
            for c in budgets}


def toy_curve(method, seed, folder, engine, held_out, args):
    """The learning curve of one RL run: toy.measure's reading of held-out samples (scripted, no mu) at the
    checkpoints of args.curve_steps, the same samples and seed as the final measurement. Written to
    folder/curve.json; then every checkpoint but the last is removed. Returns toy.measure's output at the
    last step when the curve measured it (the final measurement itself), else None."""
    path = os.path.join(folder, "curve.json")
    if os.path.exists(path):
        return None
    curve, last = [], None
    for step in args.curve_steps:
        policy.load_weights_into_engine(os.path.join(folder, "checkpoints", f"step_{step}"), engine)
        m = toy.measure(engine, toy.World(), held_out, n=args.eval_samples, max_tokens=args.eval_max_tokens,
                        seed=seed, mu=False)
        curve.append({"step": step, **curve_point(m, args.budgets)})
        last = m if step == args.steps else None
    policy.write_atomic(path, json.dumps(curve))
    final = policy.latest_checkpoint(folder)
    for d in os.listdir(os.path.join(folder, "checkpoints")):
        if d.startswith("step_") and os.path.join(folder, "checkpoints", d) != final:
            shutil.rmtree(os.path.join(folder, "checkpoints", d), ignore_errors=True)
    policy.load_weights_into_engine(final, engine)
    return last


CURVE_MEASURES = ("pass@1", "uninformative_share", "double_check_share", "episodes_per_correct", "gave_up")


def episodes_per_correct(traces):
    """Episodes per correct answer of toy.measure's samples: mean_episodes / pass@1 (lower is better)."""
    return traces["mean_episodes"] / max(traces["pass@1"], 1e-9)


def curve_point(traces, budgets):
    """One point of a learning curve from toy.measure's output: CURVE_MEASURES and scripted regret."""
    return {**{k: traces[k] for k in CURVE_MEASURES if k != "episodes_per_correct"},
            "episodes_per_correct": episodes_per_correct(traces),
            "scripted_regret": scripted_regret(traces["scripted_curves"], budgets)}


TRACE_KEYS = ("pass@1", "mean_episodes", "unproductive_token_share", "gave_up", "uninformative_share",
              "double_check_share", "truncated", "statements_without_break", "scripted_curves")   # read from toy.measure


def toy_measures(result, traces):
    """The comparison's numbers from one evaluate.py results dict, and toy.measure's scripted reading
    of the traces (unproductive_token_share, gave_up)."""
    e = result["benchmarks"]["eval"]
    acc, ep, reg = e["accuracy"], e["episodes"], e["regret"]
    return {"pass@1": acc["pass@1"], "mean_tokens": acc["mean_response_tokens"], "truncated": acc["fraction_truncated"],
            "mean_episodes": ep["mean_episodes"], "progress_per_episode": ep["mean_progress_per_episode"],
            "episodes_without_progress": ep["fraction_episodes_without_progress"],
            "J_r": next(b["J_r"] for b in ep["buckets"] if b["episodes"] == "all"),
            "cumulative_regret": reg["cumulative_regret"], "normalized_regret": reg["normalized_regret_by_tokens"],
            "tokens_per_correct": acc["mean_response_tokens"] / max(acc["pass@1"], 1e-9),
            "efficiency": [[r["total_tokens"], r["maj@K"]] for r in e["efficiency"]],
            "episodes_per_correct": episodes_per_correct(traces),
            # per trace, where the shares are per episode: a method with fewer episodes per trace raises the share of
            # double-checks without writing more of them
            "double_checks_per_trace": traces["mean_episodes"] * traces["double_check_share"],
            **{k: traces[k] for k in TRACE_KEYS if k not in ("pass@1", "mean_episodes", "scripted_curves")}}


# two-sided 95 % quantiles of Student's t by degrees of freedom (df > 30: 1.96 would be too narrow; 2.042 is df = 30's)
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
         11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086}


def t_975(df):
    return T_975.get(df, 2.086 if df < 30 else 2.042)


def _over_seeds(values, leaf):
    """Apply leaf(list of numbers over seeds) at every number of a nest of dicts and lists (curves: point
    by point, up to the shortest)."""
    if isinstance(values[0], dict):
        return {k: _over_seeds([v[k] for v in values], leaf) for k in values[0]}
    if isinstance(values[0], list):
        return [_over_seeds([v[i] for v in values], leaf) for i in range(min(len(v) for v in values))]
    return leaf(values)


def mean_and_se(xs):
    """{"mean", "se"}: the mean over seeds and its standard error (sample std / sqrt(n); 0 for one seed)."""
    return {"mean": statistics.fmean(xs), "se": statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else 0.0}


def toy_summary(per_seed):
    """Mean and standard error over seeds of every number of toy_measures, curves point by point."""
    seeds = sorted(per_seed)
    return {**_over_seeds([per_seed[s] for s in seeds], mean_and_se), "seeds": seeds}


def paired_difference(per_seed, reference):
    """method - reference, paired by seed (the same seed: the same data order and sampling seeds), for
    every number: {"mean", "ci"} with ci the half-width of the 95 % t-interval (0 for one seed)."""
    seeds = sorted(set(per_seed) & set(reference))

    def leaf(pairs):
        d = [x - y for x, y in pairs]
        half = t_975(len(d) - 1) * statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else 0.0
        return {"mean": statistics.fmean(d), "ci": half}

    def zipped(a, b):   # the two nests merged into one whose numbers are (a, b) pairs
        if isinstance(a, dict):
            return {k: zipped(a[k], b[k]) for k in a if k in b}
        if isinstance(a, list):
            return [zipped(x, y) for x, y in zip(a, b)]
        return (a, b)
    pairs = [zipped(per_seed[s], reference[s]) for s in seeds]

    return {**_over_seeds(pairs, leaf), "seeds": seeds}


TABLE_COLUMNS = ["pass@1", "mean_tokens", "episodes_per_correct", "uninformative_share", "double_check_share",
                 "double_checks_per_trace", "gave_up", "truncated", "statements_without_break"]


def _cell(m, c, key):
    v = m["normalized_regret"][c.split("@")[1]] if c.startswith("regret@") else m[c]
    digits = 0 if c in ("mean_tokens", "tokens_per_correct") else 3 if c.startswith(("regret", "uninformative", "double")) else 2
    sign = "+" if key == "ci" else ""
    return f"{v['mean']:{sign}.{digits}f} ± {v[key]:.{digits}f}"


def toy_table(methods, budgets, differences=None):
    """The end-point table (mean ± s.e. over seeds) and, given differences, each method minus GRPO
    paired by seed with its 95 % interval."""
    cols = TABLE_COLUMNS + [f"regret@{b}" for b in budgets]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(_cell(m, c, "se") for c in cols) + " |" for name, m in methods.items()]
    if differences:
        lines += ["", "difference from grpo, paired by seed, mean and 95 % interval:", "",
                  "| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(_cell(d, c, "ci") for c in cols) + " |" for name, d in differences.items()]
    return "\n".join(lines)


def curve_table(methods, differences, budget):
    """Learning curves: per RL method and step, mean ± s.e. of CURVE_MEASURES and scripted regret at the
    budget, then the difference from GRPO at the same step (95 % interval, paired by seed)."""
    cols = list(CURVE_MEASURES) + [f"scripted_regret@{budget}"]
    deltas_of = ("pass@1", "uninformative_share", "episodes_per_correct", "scripted_regret")
    lines = ["| method | step | " + " | ".join(cols) + " | " + " | ".join(f"Δ{c} vs grpo" for c in deltas_of) + " |",
             "|---" * (len(cols) + 2 + len(deltas_of)) + "|"]

    def value(p, c):
        return p["scripted_regret"][str(budget)] if c.startswith("scripted_regret") else p[c]
    for name, m in methods.items():
        if "curve" not in m:
            continue
        for i, p in enumerate(m["curve"]):
            cells = [f"{value(p, c)['mean']:.3f} ± {value(p, c)['se']:.3f}" for c in cols]
            d = differences.get(name, {}).get("curve")
            deltas = ([f"{value(d[i], c)['mean']:+.3f} ± {value(d[i], c)['ci']:.3f}" for c in deltas_of]
                      if d else [""] * len(deltas_of))
            lines.append(f"| {name} | {p['step']['mean']:.0f} | " + " | ".join(cells + deltas) + " |")
    return "\n".join(lines)


def toy_runs(args):
    """The (method, seed) runs of one comparison in the order they are computed, the warm start's first."""
    return [("base", s) for s in args.seed_list] + [(m, s) for m in args.methods for s in args.seed_list]


def run_folder(args, method, seed, *name):
    return os.path.join(args.out, method, f"seed_{seed}", *name)


def compute_run(method, seed, warm, engine, paths, held_out, args, seconds):
    """Train (method, seed) from the warm start (nothing for "base"), measure its learning curve and its
    traces (toy.measure, rank 0) and evaluate it (evaluate.py): the run's folder gets curve.json,
    toy_measures.json and, last, eval.json, which marks the run done."""
    rank = dist.get_rank()
    folder = run_folder(args, method, seed)
    if rank == 0:
        print(f"== {method}, seed {seed}" + (f" (pid {os.getpid()})" if args.worker else ""), flush=True)
    t0 = time.time()
    if method == "base":
        weights = warm
        policy.load_weights_into_engine(warm, engine)
    else:
        weights = toy_train(method, seed, folder, warm, engine, paths, args)
        seconds[f"train {method}"] = seconds.get(f"train {method}", 0.0) + time.time() - t0
    t1 = time.time()
    # the toy world's own reading of the traces (scripted J_r): what the training changed
    if rank == 0:
        traces = None
        if method in RL_TOY_METHODS:   # the learning curve first: it loads the earlier checkpoints
            traces = toy_curve(method, seed, folder, engine, held_out, args)
        if traces is None:   # the curve's last point is this measurement (same weights, samples, seed)
            traces = toy.measure(engine, toy.World(), held_out, n=args.eval_samples,
                                 max_tokens=args.eval_max_tokens, seed=seed, mu=False)
        policy.write_atomic(os.path.join(folder, "toy_measures.json"), json.dumps(traces))
    toy_evaluate(weights, seed, folder, engine, paths, args)
    seconds[f"evaluate {method}"] = seconds.get(f"evaluate {method}", 0.0) + time.time() - t1


def claim(claims, method, seed):
    """True for the one worker that creates claims/<method>-seed_<seed> first (O_EXCL: atomic on a local file
    system), so every run of a --jobs comparison is computed by exactly one worker."""
    try:
        os.close(os.open(os.path.join(claims, f"{method}-seed_{seed}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def run_workers(args, pending):
    """--jobs N: N processes of this comparison (`compare.py <the same flags> --worker CLAIMS`) share the
    pending runs, each taking the next one no worker has claimed, with the CPU's threads split between them
    (OMP_NUM_THREADS). Why: a toy step is mostly Python (vLLM's scheduler, the sampling loop, mu's
    bookkeeping) on one core, so two single-threaded workers keep both cores of a 2-core machine busy where
    one process with two threads does not (measured in the README). Each run's result does not depend on
    the worker: its seeds are its own. Returns when every worker has exited; a failed worker stops the
    comparison with its exit code (the runs that finished are kept, and a rerun resumes)."""
    if not pending:
        return
    jobs = min(args.jobs, len(pending))
    claims = os.path.join(args.out, "claims", f"{os.getpid()}-{time.time_ns()}")   # fresh per invocation
    os.makedirs(claims)
    threads = int(os.environ.get("OMP_NUM_THREADS") or len(os.sched_getaffinity(0)))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, threads // jobs)),
           "TQDM_MININTERVAL": "30"}   # two progress bars share one terminal: each redraws every 30 s
    # the warm start is resolved here once (a --rebuild is not repeated by every worker)
    argv = [a for a in args.argv if a != "--rebuild"] + ["--warm-start", args.warm_start_path, "--worker", claims]
    command = [sys.executable, os.path.abspath(__file__), *argv]
    print(f"{len(pending)} runs on {jobs} workers of {env['OMP_NUM_THREADS']} thread(s) each", flush=True)
    workers = [subprocess.Popen(command, env=env, preexec_fn=_die_with_parent) for _ in range(jobs)]
    failed = [(w.pid, code) for w, code in ((w, w.wait()) for w in workers) if code != 0]
    shutil.rmtree(claims, ignore_errors=True)
    if failed:
        raise SystemExit(f"compare.py --jobs {args.jobs}: worker(s) {failed} (pid, exit code) failed; the runs "
                         f"they finished are kept in {args.out}: run again to resume")


def _die_with_parent():
    """A worker gets SIGTERM when the comparison that started it dies (Linux prctl PR_SET_PDEATHSIG), so a
    killed comparison leaves no worker behind to race the one that resumes it."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


def toy_run(args, engine=None):
    """`python mrt.py`: warm start -> GRPO, MRT-RL, STaR, MRT-STaR from it (several seeds) -> evaluate.py
    on held-out problems -> one table, results.json (+ results.png). A killed run resumes: a run with
    its eval.json is done, a training run continues from its checkpoints. `engine`: one the caller
    owns (the tests), holding the warm start's architecture; its weights are replaced here."""
    rank, world_size = policy.setup_distributed()
    t_start = time.time()
    warm = args.warm_start_path = toy.warm_start(args.warm_start, rebuild=args.rebuild,
                                                 build_dir=os.path.join(args.out, "warm_start"))
    train, held_out = toy.make_problems(toy.World())
    paths = {"train": os.path.join(args.out, "data", "train.jsonl"), "eval": os.path.join(args.out, "data", "eval.jsonl")}
    if rank == 0:
        for key, rows in (("train", train), ("eval", held_out)):
            policy.write_atomic(paths[key], "".join(json.dumps(q) + "\n" for q in rows))
    dist.barrier()
    if rank == 0:
        print(f"toy world: {len(train)} training problems, {len(held_out)} held out; warm start {warm}")
    seconds = {"warm_start": time.time() - t_start}
    owned, clean = engine is None, False
    runs = toy_runs(args)
    if args.jobs > 1 and not args.worker and owned and world_size == 1:
        t0 = time.time()
        run_workers(args, [r for r in runs if not os.path.exists(run_folder(args, *r, "eval.json"))])
        seconds[f"runs ({args.jobs} workers)"] = time.time() - t0
    per_method = {}
    try:
        for method, seed in runs:
            folder = run_folder(args, method, seed)
            result_path = os.path.join(folder, "eval.json")
            if not os.path.exists(result_path) and (not args.worker or claim(args.worker, method, seed)):
                if engine is None:   # started at the first run to compute (none when every run is done)
                    engine = prover.engine_from_args(args, warm, seed=args.seed + rank)
                compute_run(method, seed, warm, engine, paths, held_out, args, seconds)
            if args.worker:
                continue
            dist.barrier()
            if rank == 0:
                with open(result_path) as f, open(os.path.join(folder, "toy_measures.json")) as g:
                    result, traces = json.load(f), json.load(g)
                stale = [k for k in TRACE_KEYS if k not in traces]
                if stale or (method in RL_TOY_METHODS and not os.path.exists(os.path.join(folder, "curve.json"))):
                    raise SystemExit(f"{folder}: written by an older compare.py (no {', '.join(stale) or 'curve.json'}); "
                                     f"remove it, or run with another --out")
                measures = toy_measures(result, traces)
                measures["scripted_regret"] = scripted_regret(traces["scripted_curves"], args.budgets)
                if method == "base":          # step 0 of every learning curve
                    measures["curve"] = [{"step": 0, **curve_point(traces, args.budgets)}]
                elif method in RL_TOY_METHODS:
                    with open(os.path.join(folder, "curve.json")) as c:
                        measures["curve"] = per_method["base"][seed]["curve"][:1] + json.load(c)
                per_method.setdefault(method, {})[seed] = measures
        clean = True
    finally:
        if owned:
            policy.teardown(engine, clean=clean)
    if rank != 0 or args.worker:
        return None
    methods = {name: toy_summary(per_seed) for name, per_seed in per_method.items()}
    differences = ({name: paired_difference(per_seed, per_method["grpo"]) for name, per_seed in per_method.items()
                    if name not in ("grpo", "base")} if "grpo" in per_method else {})
    table = toy_table(methods, [str(b) for b in args.budgets], differences)
    curves = curve_table(methods, differences, args.budgets[-1])
    seconds["total"] = time.time() - t_start
    results = {"methods": methods, "differences_from_grpo": differences, "table": table, "curve_table": curves,
               "labels": TOY_LABELS, "per_seed": per_method, "seconds": seconds, "world": dataclasses.asdict(toy.World()),
               "config": {k: v for k, v in vars(args).items() if k != "seed_list"}, "warm_start": warm}
    policy.write_atomic(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    png = None if args.no_plots else plots.toy_figure(results, os.path.join(args.out, "results.png"))
    print(f"\nMRT vs outcome-reward RL in the toy world: {len(held_out)} held-out problems, seeds {args.seed_list}, "
          f"mean ± standard error over seeds (normalized regret at token budgets C0; lower is better)\n")
    print("\n".join(f"   {name}: {TOY_LABELS[name]}" for name in methods) + "\n")
    print(table)
    print(f"\nlearning curves on the held-out problems ({args.eval_samples} samples each, {args.eval_max_tokens} tokens; "
          f"scripted regret: normalized regret of the ideal mu's J_r, at C0 = {args.budgets[-1]}):\n")
    print(curves)
    print(TOY_LEGEND)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}" + (f" and {png}" if png else "")
          + f"; {seconds['total'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total") + ")")
    return results


def add_toy_args(p):
    """The comparison's own flags (the trainers' and evaluate.py's other flags are fixed here, see toy_train)."""
    p.add_argument("--out", default="runs/toy", help="run folder (default runs/toy); a killed run resumes from it")
    p.add_argument("--quick", action="store_true",
                   help="one seed, 10 RL steps, one STaR iteration, 8 eval samples and 4 traces (other flags still apply)")
    p.add_argument("--seeds", type=flags.positive_int, default=5, help="seeds per method (default 5)")
    flags.add_seed(p, help="first seed (default 0): seeds are seed .. seed + seeds - 1")
    p.add_argument("--methods", default=",".join(DEFAULT_TOY_METHODS),
                   help=f"comma-separated, from {','.join(TOY_METHODS)} (default {','.join(DEFAULT_TOY_METHODS)}: "
                        f"GRPO and the per-episode credit with mu and with the exact J_r; the others by name)")
    p.add_argument("--steps", type=flags.positive_int, default=50, help="RL steps of the RL methods (default 50)")
    p.add_argument("--curve-steps", type=flags.int_list(1), default=None,
                   help="steps of the RL learning curves, each <= --steps (default: a fifth, a half and all of --steps: "
                        "10,25,50)")
    p.add_argument("--length-penalty-alpha", type=flags.fraction, default=0.1,
                   help="alpha of the length-penalty baseline (grpo.py's default 0.1)")
    p.add_argument("--batch-size", type=flags.positive_int, default=64, help="RL completions per step (default 64)")
    p.add_argument("--num-generations", type=flags.positive_int, default=4, help="G, completions per prompt (default 4)")
    p.add_argument("--max-completion-length", type=flags.positive_int, default=toy.TRAINING_BUDGET,
                   help=f"the training token budget of rollouts, RL and STaR (default {toy.TRAINING_BUDGET}: the warm start "
                        f"is truncated < 2 %% of the time, a budget that does not bind)")
    p.add_argument("--binding-budget", action="store_true",
                   help=f"the second configuration: train and evaluate at {toy.BINDING_BUDGET} tokens (about 4 episodes "
                        f"and the answer), a budget that binds; sets --max-completion-length and --eval-max-tokens")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=0.9, help="rollout temperature (Table 3: 0.9)")
    p.add_argument("--lr", type=flags.positive_float, default=2e-4, help="RL learning rate (default 2e-4)")
    p.add_argument("--alpha", type=flags.nonnegative_float, default=1.0, help="MRT-RL progress weight alpha (default 1.0)")
    p.add_argument("--iterations", type=flags.positive_int, default=2, help="STaR / MRT-STaR iterations (default 2)")
    p.add_argument("--star-rollouts", type=flags.positive_int, default=4,
                   help="rollouts per problem and STaR iteration (default 4)")
    p.add_argument("--star-lr", type=flags.positive_float, default=2e-4,
                   help="SFT learning rate of STaR / MRT-STaR (default 2e-4)")
    p.add_argument("--eval-samples", type=flags.positive_int, default=16,
                   help="evaluation samples per held-out problem, also at each learning-curve step (default 16)")
    p.add_argument("--eval-traces", type=flags.positive_int, default=4,
                   help="evaluation traces per held-out problem scored by mu at every episode (default 4)")
    p.add_argument("--eval-max-tokens", type=flags.positive_int, default=toy.TRAINING_BUDGET,
                   help=f"evaluation budget in tokens (default {toy.TRAINING_BUDGET}, the training budget)")
    p.add_argument("--budgets", type=flags.int_list(1), default=None,
                   help="token budgets C0 of normalized regret (default: a quarter, a half, three quarters and all of "
                        "--eval-max-tokens: 80,160,240,320)")
    p.add_argument("--warm-start", default=toy.WARM_START_DIR, help="the shipped warm start folder (default toy_warm_start/)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the warm start (python toy.py build; ~25 min) into --out")
    p.add_argument("--no-plots", action="store_true", help="skip results.png (python plots.py results.json draws it later)")
    p.add_argument("--jobs", type=flags.positive_int, default=None,
                   help="worker processes that share the runs, the CPU's threads split between them (default: "
                        "one per core, at most 2, on a CPU machine; 1 under torchrun or with a GPU). A toy step is "
                        "mostly single-threaded Python, so on 2 cores two workers finish the comparison sooner")
    p.add_argument("--worker", metavar="CLAIMS", default=None,
                   help="internal: run as one --jobs worker, taking the runs no other worker has claimed in CLAIMS")
    flags.add_engine(p, max_model_len=512, max_model_len_help="engine context (default 512)")
    p.set_defaults(episode_end=toy.EPISODE_END)   # the toy world's episodes end at its interval statement


def check_toy_args(p, args):
    if isinstance(args.methods, str):
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in TOY_METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(TOY_METHODS)}")
    if args.binding_budget:
        args.max_completion_length = args.eval_max_tokens = toy.BINDING_BUDGET
    if args.budgets is None:
        args.budgets = [args.eval_max_tokens * i // 4 for i in (1, 2, 3, 4)]
    if args.eval_max_tokens + 128 > args.max_model_len:
        p.error(f"--max-model-len {args.max_model_len} must hold a prompt (< 64 tokens), --eval-max-tokens "
                f"{args.eval_max_tokens} and mu's suffix and answer (< 64): use at least {args.eval_max_tokens + 128}")
    if not args.rebuild and not os.path.isdir(args.warm_start):
        p.error(f"--warm-start: no such folder: {args.warm_start} (--rebuild builds one)")
    flags.check_engine(p, args)
    if args.curve_steps is None:
        args.curve_steps = [s for s in (args.steps // 5, args.steps // 2) if s >= 1] + [args.steps]
    if any(s > args.steps for s in args.curve_steps):
        p.error(f"--curve-steps {args.curve_steps}: every step must be <= --steps {args.steps}")
    args.curve_steps = sorted(set(args.curve_steps))
    args.seed_list = list(range(args.seed, args.seed + args.seeds))
    if args.jobs is None:
        args.jobs = default_jobs()
    elif args.jobs > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        p.error(f"--jobs {args.jobs}: under torchrun the ranks share each run; use --jobs 1")
    return args


def default_jobs():
    """--jobs auto: one worker per core, at most 2 (measured on 2 cores, README), on a CPU machine outside
    torchrun; 1 with a GPU (the workers would share it) or under torchrun (its ranks share each run)."""
    import torch
    if torch.cuda.is_available() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return 1
    return max(1, min(2, len(os.sched_getaffinity(0))))


def toy_parser(prog="compare.py", quick=False):
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "The default run (python mrt.py with no --model): MRT against outcome-reward RL in the toy world of toy.py,\n"
        "on a CPU. From the shipped warm start (toy_warm_start/, rebuilt when asked or when toy.World changes), train\n"
        "GRPO, MRT-RL (Algorithm 2), its Sec. 6.2 per-episode variant, GRPO with a length penalty, STaR and MRT-STaR\n"
        "(Algorithm 1) with the same steps, prompts and samples, for several seeds; measure learning curves of the RL\n"
        "methods and evaluate every model and the warm start on held-out problems with evaluate.py; print the tables\n"
        "(mean ± s.e. over seeds, differences from GRPO paired by seed) and write results.json (+ results.png)."))
    add_toy_args(p)
    if quick:   # --quick changes the defaults; flags given explicitly still win
        p.set_defaults(seeds=1, steps=10, iterations=1, eval_samples=8, eval_traces=4)
    return p


def parse_toy_args(argv, prog="compare.py"):
    p = toy_parser(prog, quick="--quick" in argv)
    args = check_toy_args(p, p.parse_args(argv))
    args.argv = list(argv)   # what a --jobs worker is started with
    return args


if __name__ == "__main__":
    toy_run(parse_toy_args(sys.argv[1:]))
