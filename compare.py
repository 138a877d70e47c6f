"""compare.py: the default run, MRT against outcome-reward RL in the toy world, end to end on a CPU.

    python mrt.py [--quick]          # the same as python compare.py [--quick]: mrt.py's default mode

From the toy world's warm start (toy.py), every method of Table 1 that the toy world can run (GRPO,
MRT-RL, STaR, MRT-STaR) trains with the same steps, prompts and samples for several seeds; evaluate.py
measures every result and the warm start on held-out problems; one table, results.json, results.png.

Imports: policy (the process group, weight loads), prover (the engine), toy (the world, its warm start
and its scripted reading of traces), grpo and mrt_rl (GRPO and Algorithm 2), star (STaR and
Algorithm 1), evaluate (the measurements), flags (the shared command-line flags). Each trainer is
called through its config() with the values fixed here: the same checks as its command line, no argv.
"""

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

import policy  # first: it pins this rank's GPU before torch is imported
import evaluate
import flags
import grpo
import mrt_rl
import prover
import star
import toy

import torch.distributed as dist  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402


# ==============================================================================================
# The default run: MRT against outcome-reward RL in the toy world (toy.py), end to end on a CPU
# ==============================================================================================

TOY_METHODS = ("grpo", "mrt-rl", "star", "mrt-star")
TOY_LEGEND = """
pass@1, mean_tokens: evaluate.py accuracy (n samples per held-out problem at --eval-max-tokens); tokens_per_correct:
mean_tokens / pass@1 (token efficiency, lower is better); mean_episodes, progress_per_episode: the episodes analysis
(mu with m = 8 at every episode, Def. 6.1); unproductive_token_share, gave_up: toy.measure's scripted reading of the
same kind of samples (tokens of re-tries and re-checks; thoughts closed without finding x); regret@C0: normalized
regret (Fig. 9) at token budget C0, lower is better."""


def toy_train(method, seed, folder, warm, engine, paths, args):
    """Train one (method, seed) of the comparison from the warm start with the methods' own loops and
    checked configs; a killed run resumes. Returns the trained weights' folder; the engine holds them
    on return."""
    common = dict(model=warm, train=paths["train"], out=folder, seed=seed, max_model_len=args.max_model_len,
                  thinking="on", engine=args.engine)
    if method in ("grpo", "mrt-rl"):
        rl = dict(common, max_steps=args.steps, batch_size=args.batch_size, num_generations=args.num_generations,
                  max_prompt_length=64, max_completion_length=args.max_completion_length, lr=args.lr, beta=0.0,
                  warmup_ratio=0.0, temperature=args.temperature, save_every=args.steps, keep_checkpoints=1,
                  micro_batch_tokens=4096)
        done = policy.latest_checkpoint(folder)
        if done and done.endswith(f"step_{args.steps}"):
            policy.load_weights_into_engine(done, engine)
            return done
        if not done:   # a fresh run starts from the warm start; a resumed one, from its checkpoint (grpo.train syncs it)
            policy.load_weights_into_engine(warm, engine)
        if method == "mrt-rl":
            cfg = mrt_rl.config(**rl, resume=bool(done), alpha=args.alpha, prover_max_tokens=16)
            grpo.train(cfg, engine=engine, step_fn=mrt_rl.algorithm_2(cfg, AutoTokenizer.from_pretrained(warm)))
        else:
            grpo.train(grpo.config(**rl, resume=bool(done)), engine=engine)
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
                          no_plots=True, max_model_len=args.max_model_len, chunk_size=64, thinking="on", engine=args.engine)
    return evaluate.run(cfg, engine=engine)


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
            "unproductive_token_share": traces["unproductive_token_share"], "gave_up": traces["gave_up"]}


def toy_summary(per_seed):
    """mean and spread (sample std; 0 for one seed) over seeds of every scalar, budget-wise for dicts."""

    def agg(values):
        if isinstance(values[0], dict):
            return {k: agg([v[k] for v in values]) for k in values[0]}
        if isinstance(values[0], list):   # curves: mean point by point, up to the shortest
            n = min(len(v) for v in values)
            return [agg([v[i] for v in values]) if isinstance(values[0][0], list) else statistics.fmean(v[i] for v in values)
                    for i in range(n)]
        return {"mean": statistics.fmean(values), "spread": statistics.stdev(values) if len(values) > 1 else 0.0}
    return {**agg(list(per_seed.values())), "seeds": sorted(per_seed)}


def toy_table(methods, budgets):
    cols = ["pass@1", "mean_tokens", "tokens_per_correct", "mean_episodes", "progress_per_episode",
            "unproductive_token_share", "gave_up"] + [f"regret@{b}" for b in budgets]
    lines = ["| method | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, m in methods.items():
        cells = []
        for c in cols:
            v = m["normalized_regret"][c.split("@")[1]] if c.startswith("regret@") else m[c]
            digits = 0 if c in ("mean_tokens", "tokens_per_correct") else 3 if c.startswith(("progress", "regret")) else 2
            cells.append(f"{v['mean']:.{digits}f} ± {v['spread']:.{digits}f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def toy_plot(methods, out):
    """Fig. 7-style accuracy against tokens and Fig. 9-style normalized regret against the budget."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, m in methods.items():
        a.plot([p[0] for p in m["efficiency"]], [p[1] for p in m["efficiency"]], "o-", label=name)
        budgets = sorted(m["normalized_regret"], key=int)
        b.plot([int(c) for c in budgets], [m["normalized_regret"][c]["mean"] for c in budgets], "o-", label=name)
    a.set(title="token efficiency (Fig. 7): maj@K vs total tokens", xlabel="total tokens of K samples", ylabel="maj@K")
    b.set(title="normalized regret (Fig. 9)", xlabel="token budget C0", ylabel="normalized regret")
    a.legend()
    b.legend()
    fig.tight_layout()
    path = os.path.join(out, "results.png")
    fig.savefig(path)
    plt.close(fig)
    return path


def toy_run(args, engine=None):
    """`python mrt.py`: warm start -> GRPO, MRT-RL, STaR, MRT-STaR from it (several seeds) -> evaluate.py
    on held-out problems -> one table, results.json (+ results.png). A killed run resumes: a run with
    its eval.json is done, a training run continues from its checkpoints. `engine`: one the caller
    owns (the tests), holding the warm start's architecture; its weights are replaced here."""
    rank, world_size = policy.setup_distributed()
    t_start = time.time()
    warm = toy.warm_start(args.warm_start, rebuild=args.rebuild, build_dir=os.path.join(args.out, "warm_start"))
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
    per_method = {}
    try:
        if owned:
            engine = prover.engine_from_args(args, warm, seed=args.seed + rank)
        runs = [("base", s) for s in args.seed_list] + [(m, s) for m in args.methods for s in args.seed_list]
        for method, seed in runs:
            folder = os.path.join(args.out, method, f"seed_{seed}")
            result_path = os.path.join(folder, "eval.json")
            if not os.path.exists(result_path):
                if rank == 0:
                    print(f"== {method}, seed {seed}")
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
                    traces = toy.measure(engine, toy.World(), held_out, n=args.eval_samples,
                                         max_tokens=args.eval_max_tokens, seed=seed, mu=False)
                    policy.write_atomic(os.path.join(folder, "toy_measures.json"), json.dumps(traces))
                toy_evaluate(weights, seed, folder, engine, paths, args)
                seconds[f"evaluate {method}"] = seconds.get(f"evaluate {method}", 0.0) + time.time() - t1
            dist.barrier()
            if rank == 0:
                with open(result_path) as f, open(os.path.join(folder, "toy_measures.json")) as g:
                    per_method.setdefault(method, {})[seed] = toy_measures(json.load(f), json.load(g))
        clean = True
    finally:
        if owned:
            policy.teardown(engine, clean=clean)
    if rank != 0:
        return None
    methods = {name: toy_summary(per_seed) for name, per_seed in per_method.items()}
    table = toy_table(methods, [str(b) for b in args.budgets])
    seconds["total"] = time.time() - t_start
    results = {"methods": methods, "table": table, "seconds": seconds, "world": dataclasses.asdict(toy.World()),
               "config": {k: v for k, v in vars(args).items() if k != "seed_list"}, "warm_start": warm}
    policy.write_atomic(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    png = None if args.no_plots else toy_plot(methods, args.out)
    print(f"\nMRT vs outcome-reward RL in the toy world: {len(held_out)} held-out problems, seeds {args.seed_list}, "
          f"mean ± sample std over seeds (normalized regret at token budgets C0; lower is better)\n")
    print(table)
    print(TOY_LEGEND)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}" + (f" and {png}" if png else "")
          + f"; {seconds['total'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total") + ")")
    return results


def add_toy_args(p):
    """The comparison's own flags (the trainers' and evaluate.py's other flags are fixed here, see toy_train)."""
    p.add_argument("--out", default="runs/toy", help="run folder (default runs/toy); a killed run resumes from it")
    p.add_argument("--quick", action="store_true",
                   help="one seed, 10 RL steps, one STaR iteration, 8 eval samples and 4 traces (other flags still apply)")
    p.add_argument("--seeds", type=flags.positive_int, default=3, help="seeds per method (default 3)")
    flags.add_seed(p, help="first seed (default 0): seeds are seed .. seed + seeds - 1")
    p.add_argument("--methods", default=",".join(TOY_METHODS), help=f"comma-separated, from {','.join(TOY_METHODS)}")
    p.add_argument("--steps", type=flags.positive_int, default=50, help="RL steps of grpo and mrt-rl (default 50)")
    p.add_argument("--batch-size", type=flags.positive_int, default=64, help="RL completions per step (default 64)")
    p.add_argument("--num-generations", type=flags.positive_int, default=4, help="G, completions per prompt (default 4)")
    p.add_argument("--max-completion-length", type=flags.positive_int, default=toy.TRAINING_BUDGET,
                   help=f"the training token budget of rollouts, RL and STaR (default {toy.TRAINING_BUDGET})")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=0.9, help="rollout temperature (Table 3: 0.9)")
    p.add_argument("--lr", type=flags.positive_float, default=2e-4, help="RL learning rate (default 2e-4)")
    p.add_argument("--alpha", type=flags.nonnegative_float, default=1.0, help="MRT-RL progress weight alpha (default 1.0)")
    p.add_argument("--iterations", type=flags.positive_int, default=2, help="STaR / MRT-STaR iterations (default 2)")
    p.add_argument("--star-rollouts", type=flags.positive_int, default=4,
                   help="rollouts per problem and STaR iteration (default 4)")
    p.add_argument("--star-lr", type=flags.positive_float, default=2e-4,
                   help="SFT learning rate of STaR / MRT-STaR (default 2e-4)")
    p.add_argument("--eval-samples", type=flags.positive_int, default=32,
                   help="evaluation samples per held-out problem (default 32)")
    p.add_argument("--eval-traces", type=flags.positive_int, default=8,
                   help="evaluation traces per held-out problem scored by mu at every episode (default 8)")
    p.add_argument("--eval-max-tokens", type=flags.positive_int, default=192, help="evaluation budget in tokens (default 192)")
    p.add_argument("--budgets", type=flags.int_list(1), default=[48, 96, 144, 192],
                   help="token budgets C0 of normalized regret (default 48,96,144,192)")
    p.add_argument("--warm-start", default=toy.WARM_START_DIR, help="the shipped warm start folder (default toy_warm_start/)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the warm start (python toy.py build; ~15 min) into --out")
    p.add_argument("--no-plots", action="store_true", help="skip results.png even when matplotlib is installed")
    flags.add_engine(p, max_model_len=512, max_model_len_help="engine context (default 512)")


def check_toy_args(p, args):
    if isinstance(args.methods, str):
        args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in TOY_METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(TOY_METHODS)}")
    if args.eval_max_tokens + 128 > args.max_model_len:
        p.error(f"--max-model-len {args.max_model_len} must hold a prompt (< 64 tokens), --eval-max-tokens "
                f"{args.eval_max_tokens} and mu's suffix and answer (< 64): use at least {args.eval_max_tokens + 128}")
    if not args.rebuild and not os.path.isdir(args.warm_start):
        p.error(f"--warm-start: no such folder: {args.warm_start} (--rebuild builds one)")
    flags.check_engine(p, args)
    args.seed_list = list(range(args.seed, args.seed + args.seeds))
    return args


def toy_parser(prog="compare.py", quick=False):
    p = argparse.ArgumentParser(prog=prog, formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "The default run (python mrt.py with no --model): MRT against outcome-reward RL in the toy world of toy.py,\n"
        "on a CPU. From the shipped warm start (toy_warm_start/, rebuilt when asked or when toy.World changes), train\n"
        "GRPO, MRT-RL (Algorithm 2), STaR and MRT-STaR (Algorithm 1) with the same steps, prompts and samples, for\n"
        "several seeds; evaluate every model and the warm start on held-out problems with evaluate.py; print one table\n"
        "and write results.json (+ results.png with matplotlib)."))
    add_toy_args(p)
    if quick:   # --quick changes the defaults; flags given explicitly still win
        p.set_defaults(seeds=1, steps=10, iterations=1, eval_samples=8, eval_traces=4)
    return p


def parse_toy_args(argv, prog="compare.py"):
    p = toy_parser(prog, quick="--quick" in argv)
    return check_toy_args(p, p.parse_args(argv))


if __name__ == "__main__":
    toy_run(parse_toy_args(sys.argv[1:]))
