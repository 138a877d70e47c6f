"""mrt.py: MRT, Meta Reinforcement Fine-Tuning (Qu et al., ICML 2025). The entry point: Algorithm 2
(MRT-RL) on grpo.py's loop, and every method of Table 1 and Fig. 7 from one command line.

    torchrun --nproc_per_node 8 mrt.py --model PATH                  # MRT (RL), Algorithm 2, Table 3 defaults
    torchrun --nproc_per_node 8 mrt.py --model PATH --method grpo    # outcome-reward GRPO (Table 1)
             ... --method length-penalty                              # GRPO with Arora & Zanette's length penalty
             ... --method mrt-star | star                             # Algorithm 1 / STaR: star.py's flags apply
    python mrt.py [--quick]                                           # no --model: MRT vs GRPO, STaR in the toy world
    python mrt.py --smoke [--model PATH]                              # sample, segment, score every prefix with mu

Algorithm 2 (App. B.1), per iteration of --steps-per-iteration steps:
    pi_ref <- pi_theta (line 3): at the iteration's first step, while the engine still holds pi_theta,
        one rollout z ~ pi_ref(.|q) is sampled for every prompt of every step of the iteration, and
        each is cut after j of its k episodes (line 7). These partial rollouts z_{0:j} are exact
        pi_ref samples, need no second engine, and are saved, so a resumed run uses the same ones.
    per step and prompt q (lines 8-9), on pi_theta:
        G continuations z_{j:} ~ pi_theta(.|q, z_{0:j}), and G forced terminations at z_{0:j}
        (mu, Eq. 4: the "time is up" suffix, then an answer), both on the context q + z_{0:j}, one
        after the other, so that vLLM's prefix cache computes that context once.
    rewards (line 9, Eq. 3; --advantage):
        progress  r_i + alpha * r_prg,i with r_prg,i = r_i - J_r(mu | q, z_{0:j}), J_r the mean reward of
                  the G terminations (the default); the advantage is GRPO's for r_i plus alpha * r_prg,i
        baseline  advantage r_i - J_r(mu | q, z_{0:j}): the terminations replace the group mean (the
                  official release's RL README)
        joint     one GRPO group of the G continuations and the G terminations, all trained on (Fig. 6:
                  "normalizing rewards across this set of traces ... implicitly compute the progress bonus")
    the loss covers the sampled tokens only: z_{0:j} is context (Eq. 3's c_{j-1} ~ pi_old), never trained on.

How `progress` enters GRPO. Line 11 puts r_i + alpha * r_prg,i "in place of A_i". Fed to GRPO as a
reward instead, it would be lost: J_r is one number per prompt, so (1 + alpha) r_i - alpha J_r is an
affine map of r_i within a group, and the group-normalised advantages would be outcome GRPO's. We
take Eq. 3's two terms each with its own estimator: A_i = GRPO's advantage of r_i (the outcome term)
+ alpha * (r_i - J_r) (the progress term, whose baseline is the terminations' J_r). The KL term, when
--beta > 0, stays anchored to the starting model (as in TRL); pi_ref here is the prefix sampler only.
"""

import argparse
import dataclasses
import json
import os
import random
import sys
import tempfile
import time

import policy  # first: it pins this rank's GPU before torch is imported
import episodes
import grpo
import prover
import toy

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

METHODS = ("mrt-rl", "grpo", "length-penalty", "mrt-star", "star")


# ==============================================================================================
# Algorithm 2: partial rollouts from pi_ref (line 7)
# ==============================================================================================

def draw_prefix_episodes(k, rng, min_episodes=0):
    """Alg. 2 line 7, "j is selected randomly": j uniform over min_episodes..k-1 (the prefix keeps at
    least one episode back for the continuation; j = 0 is the empty prefix). A rollout with fewer
    than min_episodes + 1 episodes gets j = min(min_episodes, k)."""
    return rng.randint(min_episodes, k - 1) if k > min_episodes else min(min_episodes, k)


def sample_prefixes(engine, per_step, cfg, iteration):
    """Alg. 2 lines 3 and 7: one pi_ref rollout per (step, prompt) of an iteration, cut after j episodes: a list per step of
    {"id", "j", "k", "prefix", "prefix_ids", "rollout_ids"}. All of the iteration's rollouts go in one generate call."""
    tok = engine.tokenizer
    flat = [(s, i, q) for s, problems in per_step for i, q in enumerate(problems)]
    prompts = [prover.build_prompt(tok, q["problem"], thinking=cfg.thinking) for _, _, q in flat]
    outputs = engine.generate(prompts, n=1, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_completion_length,
                              seed=cfg.seed + 7_919 * (iteration + 1) + 10_007 * dist.get_rank())
    out = {s: [] for s, _ in per_step}
    for (s, i, q), (sample,) in zip(flat, outputs):
        stream, _ = episodes.reasoning_stream(sample.text, cfg.thinking, finished=sample.finish_reason == "stop")
        eps = episodes.split_episodes(stream)
        rng = random.Random(f"{cfg.seed}-{iteration}-{dist.get_rank()}-{s}-{i}")
        j = draw_prefix_episodes(len(eps), rng, cfg.min_prefix_episodes)
        prefix = "".join(eps[:j])
        out[s].append({"id": q["id"], "j": j, "k": len(eps), "prefix": prefix,
                       "prefix_ids": prover.prefix_token_ids(tok, sample.token_ids, prefix),
                       "rollout_ids": list(sample.token_ids)})   # the whole pi_ref sample, for the record
    return out


# ==============================================================================================
# Algorithm 2: continuations, terminations, rewards (lines 8-11), as grpo.train's pluggable pieces
# ==============================================================================================

def progress_rewards(continuation_rewards, termination_rewards, alpha):
    """Eq. 3 / Alg. 2 line 9: r_i + alpha * r_prg,i, with r_prg,i = r_i - J_r(mu | q, z_{0:j}) and
    J_r the mean 0/1 reward of the G forced terminations at z_{0:j}."""
    j_r = sum(termination_rewards) / len(termination_rewards)
    return [r + alpha * (r - j_r) for r in continuation_rewards]


def termination_baseline(continuation_rewards, termination_rewards):
    """The official release's form: advantage r_i - J_r(mu | q, z_{0:j}) (no group mean, no std)."""
    j_r = sum(termination_rewards) / len(termination_rewards)
    return [r - j_r for r in continuation_rewards]


def algorithm_2(cfg, tokenizer):
    """grpo.train's rollout_fn, reward_fn, advantage_fn and metrics_fn for MRT-RL. They share `state`:
    the partial rollouts of the current iteration, and what the rollout of the current step saw."""
    problems, total_steps = grpo.training_problems(cfg, tokenizer)
    per_iteration = cfg.steps_per_iteration or total_steps
    state = {"iteration": None, "prefixes": None, "step": None}

    def prefixes_for(engine, step):
        iteration = step // per_iteration
        if state["iteration"] != iteration:
            path = os.path.join(cfg.out, "prefixes", f"iter_{iteration}.rank{dist.get_rank()}.json")
            if cfg.resume and os.path.exists(path):   # a resumed run: the same pi_ref samples as before
                with open(path) as f:
                    saved = {int(s): rows for s, rows in json.load(f).items()}
            else:                             # the iteration's first step: the engine holds pi_ref
                t0 = time.time()
                steps = range(iteration * per_iteration, min((iteration + 1) * per_iteration, total_steps))
                saved = sample_prefixes(engine, [(s, grpo.step_problems(problems, cfg, s)) for s in steps], cfg, iteration)
                policy.write_atomic(path, json.dumps(saved))
                state["seconds_prefixes"] = time.time() - t0
            state["iteration"], state["prefixes"] = iteration, saved
        return state["prefixes"][step]

    def rollout_fn(engine, mine, cfg, step):
        tok = engine.tokenizer
        prefixes = prefixes_for(engine, step)
        assert [p["id"] for p in prefixes] == [q["id"] for q in mine], "partial rollouts out of step with the data"
        contexts = [prover.build_prompt(tok, q["problem"], thinking=cfg.thinking) + p["prefix_ids"]
                    for q, p in zip(mine, prefixes)]
        suffixes = [tok.encode(prover.time_is_up_suffix(p["prefix"], cfg.thinking), add_special_tokens=False)
                    for p in prefixes]
        seed = grpo.step_seed(cfg, step)
        cached_before = engine.prompt_stats() if hasattr(engine, "prompt_stats") else None
        if cached_before is not None:
            # vLLM schedules the G samples of a request together, and requests of one batch cannot hit
            # each other's cache; so first prefill each q + z_{0:j}, then each termination's suffix,
            # once (one token generated), and the G continuations and G terminations find them cached.
            engine.generate(contexts, n=1, temperature=0.0, max_tokens=1)
            engine.generate([c + s for c, s in zip(contexts, suffixes)], n=1, temperature=0.0, max_tokens=1)
        # ---- continuations z_{j:} ~ pi_theta(.|q, z_{0:j}) (line 8) ----------------------------------
        t0 = time.time()
        # the partial rollout and its continuation share the response budget, as one rollout would
        budgets = [cfg.max_completion_length - len(p["prefix_ids"]) for p in prefixes]
        continuations = engine.generate(contexts, n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p,
                                        max_tokens=budgets, seed=seed)
        # ---- forced terminations at z_{0:j} (line 9), on the same context: a prefix-cache hit ---------
        t1 = time.time()
        terminations = engine.generate([c + s for c, s in zip(contexts, suffixes)], n=cfg.num_generations,
                                       temperature=cfg.temperature, top_p=cfg.top_p,
                                       max_tokens=cfg.prover_max_tokens, seed=seed + 500_009)  # streams apart
        t2 = time.time()
        # ---- grading ----------------------------------------------------------------------------------------
        cont_r = [[0.0 if cfg.zero_truncated and s.finish_reason == "length"
                   else prover.reward(s.text, q["answer"], thinking=cfg.thinking) for s in group]
                  for q, group in zip(mine, continuations)]
        term_r = [[prover.reward(s.text, q["answer"], thinking=False) for s in group]  # answers after a closed thought
                  for q, group in zip(mine, terminations)]
        computed = None
        if cached_before is not None:
            after = engine.prompt_stats()
            computed = ((after["prompt_tokens"] - after["cached_prompt_tokens"])
                        - (cached_before["prompt_tokens"] - cached_before["cached_prompt_tokens"]))
        state["step"] = {"prefixes": prefixes, "continuations": continuations, "cont_r": cont_r, "term_r": term_r,
                         "contexts": contexts, "suffixes": suffixes, "prompt_tokens_computed": computed,
                         "seconds": {"continuations": t1 - t0, "terminations": t2 - t1, "grading": time.time() - t2}}
        if cfg.advantage == "joint":
            return ([[c] * len(g) + [c + s] * len(h) for c, s, g, h in zip(contexts, suffixes, continuations, terminations)],
                    [list(g) + list(h) for g, h in zip(continuations, terminations)])
        return contexts, continuations

    def reward_fn(mine, groups, cfg):
        st = state["step"]
        if cfg.advantage == "joint":
            return [c + t for c, t in zip(st["cont_r"], st["term_r"])]
        if cfg.advantage == "baseline":
            return [termination_baseline(c, t) for c, t in zip(st["cont_r"], st["term_r"])]
        return [progress_rewards(c, t, cfg.alpha) for c, t in zip(st["cont_r"], st["term_r"])]

    def advantage_fn(flat, size, cfg):
        if cfg.advantage == "baseline":
            return torch.tensor(flat, dtype=torch.float32)     # the rewards are the advantages already
        if cfg.advantage == "joint":
            return grpo.group_advantages(flat, size, cfg.scale_rewards)
        # progress: GRPO's advantage of the outcome r_i, plus alpha * r_prg,i (see the module docstring)
        st = state["step"]
        r = [x for c in st["cont_r"] for x in c]
        bonus = [termination_baseline(c, t) for c, t in zip(st["cont_r"], st["term_r"])]
        return grpo.group_advantages(r, size, cfg.scale_rewards) + cfg.alpha * torch.tensor(
            [b for group in bonus for b in group], dtype=torch.float32)

    def metrics_fn(mine, groups, cfg):
        st, n = state["step"], len(mine)
        j_r = [sum(t) / len(t) for t in st["term_r"]]
        bonus = [r - jr for c, jr in zip(st["cont_r"], j_r) for r in c]
        lengths = [s.num_tokens for g in st["continuations"] for s in g]
        out = {"prefix_j": (sum(p["j"] for p in st["prefixes"]), n), "prefix_k": (sum(p["k"] for p in st["prefixes"]), n),
               "j_r_prefix": (sum(j_r), n), "continuation_reward": (sum(map(sum, st["cont_r"])), len(bonus)),
               "progress_bonus": (sum(bonus), len(bonus)),
               "terminations_all_succeed": (sum(min(t) == 1.0 for t in st["term_r"]), n),
               "terminations_all_fail": (sum(max(t) == 0.0 for t in st["term_r"]), n),
               "continuation_length": (sum(lengths), len(lengths)),
               **{f"seconds_{k}": (v, 1) for k, v in st["seconds"].items()}}
        # the iteration's partial rollouts, on the step that sampled them (every rank sends every key)
        out["seconds_prefixes"] = (state.pop("seconds_prefixes", 0.0), 1)
        out["accuracy"] = out["continuation_reward"]   # joint groups hold terminations too: grade continuations
        if st["prompt_tokens_computed"] is not None:
            # the least possible: each q + z_{0:j} prefilled once, then each termination's suffix
            limit = sum(len(c) for c in st["contexts"]) + sum(len(s) for s in st["suffixes"])
            out["prompt_tokens_computed"] = (st["prompt_tokens_computed"], 1)
            out["prompt_tokens_limit"] = (limit, 1)
        return out

    return rollout_fn, reward_fn, advantage_fn, metrics_fn


# ==============================================================================================
# The smoke run: sample, segment, score every prefix (the measurement half of the pipeline)
# ==============================================================================================

def smoke(args):
    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="mrt-tiny-")
        model = toy.build_tiny_model(tmp.name)
        print(f"built tiny random-weight model in {model}")
    engine = prover.engine_from_args(args, model, seed=args.seed)
    problems = [(q["problem"], q["answer"]) for q in args.problems]
    thinking = prover.resolve_thinking(args.thinking, engine.tokenizer)
    print(f"thinking: {'on' if thinking else 'off'} (--thinking {args.thinking})")
    mu = prover.MetaProver(engine, m=args.m, max_tokens=args.prover_max_tokens, seed=args.seed, thinking=thinking)

    # ---- generate: z ~ pi(.|x) -------------------------------------------------------------------
    prompts = [prover.build_prompt(engine.tokenizer, x, thinking=thinking) for x, _ in problems]
    outputs = engine.generate(prompts, n=args.n, temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed)

    # ---- segment: z -> <think> z_0 .. z_{k-1} </think> answer (Sec. 5, App. D) --------------------
    traces = []
    for (x, gold), samples in zip(problems, outputs):
        for sample in samples:
            thought, closed = episodes.reasoning_stream(sample.text, thinking, finished=sample.finish_reason == "stop")
            traces.append((x, gold, sample, closed, episodes.split_episodes(thought, min_steps=args.min_steps)))

    # ---- score: J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), progress (Def. 6.1) ----------------
    scores = mu.score([(x, gold, episodes.thought_prefixes(eps), s.token_ids) for x, gold, s, _, eps in traces])

    for (x, gold, sample, closed, eps), score in zip(traces, scores):
        per_episode, _ = prover.progress(score.success_rates)
        print("=" * 100)
        print(f"problem: {x[:150]!r}  gold: {gold!r}")
        print(f"response: {sample.num_tokens} tokens, finish={sample.finish_reason}, "
              f"{'thought closed' if thinking else 'finished'}={closed}, "
              f"episodes k={len(eps)}, reward r(x, z)={prover.reward(sample.text, gold, thinking=thinking)}")
        print(f"   J_r(mu | x, z_0:0) = {score.success_rates[0]:.2f}")
        for j, ep in enumerate(eps):
            print(f"   z_{j}: {ep[:100]!r}{'...' if len(ep) > 100 else ''}")
            print(f"        J_r(mu | x, z_0:{j + 1}) = {score.success_rates[j + 1]:.2f}   r_prg = {per_episode[j]:+.2f}")
    engine.close()
    if tmp is not None:
        tmp.cleanup()


def parse_smoke_args(argv):
    p = argparse.ArgumentParser(prog="mrt.py --smoke", description="Sample responses, cut their thoughts into "
                                "episodes and score every thought prefix with mu (Eq. 4, Def. 6.1).")
    p.add_argument("--smoke", action="store_true", help="this run (implied when --model is not given)")
    p.add_argument("--model", default=None,
                   help="HF model folder to sample from; default: build a random-weight tiny model in a temp folder")
    p.add_argument("--problems", default=os.path.join(prover.DATA_DIR, "aime24.jsonl"),
                   help="JSONL file with 'problem' and 'answer' fields per line (default: data/aime24.jsonl)")
    p.add_argument("--num-problems", type=int, default=3, help="how many problems to sample for (default 3)")
    p.add_argument("--num-samples", dest="n", type=int, default=2, help="responses per problem (default 2)")
    p.add_argument("--max-tokens", type=int, default=256, help="max generated tokens per response (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (App. D: 0.7)")
    p.add_argument("--min-steps", type=int, default=3, help="min steps per episode (App. D: 3)")
    p.add_argument("--prover-samples", dest="m", type=int, default=4,
                   help="m: forced-termination samples per prefix for J_r (App. D: 8)")
    p.add_argument("--prover-max-tokens", type=int, default=32, help="max tokens of each forced answer (App. D: 4096)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    prover.add_engine_args(p)
    args = p.parse_args(argv)
    for flag in ("num_problems", "n", "max_tokens", "min_steps", "m", "prover_max_tokens"):
        if getattr(args, flag) < 1:
            p.error(f"{prover.option_name(p, flag)} must be >= 1, got {getattr(args, flag)}")
    prover.check_engine_args(p, args)
    try:
        args.problems = prover.load_problems(args.problems)[:args.num_problems]
    except (OSError, ValueError) as e:
        p.error(f"--problems: {e}")
    if args.model is not None and not os.path.isdir(args.model):
        p.error(f"--model: no such folder: {args.model}")
    return args


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
    """Train one (method, seed) of the toy comparison from the warm start through the real entry
    points' parsers and loops; a killed run resumes. Returns the trained weights' folder; the
    engine holds them on return."""
    common = ["--model", warm, "--train", paths["train"], "--out", folder, "--seed", str(seed),
              "--max-model-len", str(args.max_model_len), "--thinking", "on"] + (["--engine", args.engine] if args.engine else [])
    if method in ("grpo", "mrt-rl"):
        flags = common + ["--method", method, "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                          "--num-generations", str(args.num_generations), "--max-prompt-length", "64",
                          "--max-completion-length", str(args.max_completion_length), "--lr", str(args.lr),
                          "--beta", "0", "--warmup-ratio", "0", "--temperature", str(args.temperature),
                          "--save-every", str(args.steps), "--keep-checkpoints", "1", "--micro-batch-tokens", "4096",
                          "--alpha", str(args.alpha), "--prover-max-tokens", "16"]
        done = policy.latest_checkpoint(folder)
        if done and done.endswith(f"step_{args.steps}"):
            policy.load_weights_into_engine(done, engine)
            return done
        if not done:   # a fresh run starts from the warm start; a resumed one, from its checkpoint (grpo.train syncs it)
            policy.load_weights_into_engine(warm, engine)
        cfg = parse_rl_args(flags + (["--resume"] if done else []))
        if method == "mrt-rl":
            from transformers import AutoTokenizer
            rollout_fn, reward_fn, advantage_fn, metrics_fn = algorithm_2(cfg, AutoTokenizer.from_pretrained(warm))
            grpo.train(cfg, engine=engine, reward_fn=reward_fn, rollout_fn=rollout_fn, advantage_fn=advantage_fn,
                       metrics_fn=metrics_fn)
        else:
            grpo.train(cfg, engine=engine)
        return policy.latest_checkpoint(folder)
    import star
    cfg = star.parse_args(common + ["--variant", "mrt" if method == "mrt-star" else "star",
                                    "--iterations", str(args.iterations), "--rollouts", str(args.star_rollouts),
                                    "--max-tokens", str(args.max_completion_length), "--temperature", str(args.temperature),
                                    "--prover-samples", "20", "--weight-by-progress",   # Sec. 8.1, App. B.2
                                    "--prover-max-tokens", "16", "--lr", str(args.star_lr),
                                    "--epochs", "2", "--batch-size", "32", "--max-seq-length", "256",
                                    "--micro-batch-tokens", "4096", "--save-every", "1000", "--keep-checkpoints", "1"])
    # star.run wants the engine to hold the weights it resumes from; each SFT syncs its result, and an
    # iteration that kept nothing leaves them as they were, so on return the engine holds the last ones
    policy.load_weights_into_engine(star.resume_point(cfg)[1], engine)
    star.run(cfg, engine=engine)
    return star.resume_point(cfg)[1]


def toy_evaluate(weights, seed, folder, engine, paths, args):
    """evaluate.py's analyses of one checkpoint on the held-out problems (its results JSON)."""
    import evaluate
    flags = ["--model", weights, "--benchmarks", paths["eval"], "--analysis", "accuracy,episodes,regret,efficiency",
             "--out", os.path.join(folder, "eval.json"), "--num-samples", str(args.eval_samples),
             "--max-tokens", str(args.eval_max_tokens), "--traces", str(args.eval_traces), "--prover-samples", "8",
             "--prover-max-tokens", "16", "--maj-p", "1,2,4,8", "--direct-n", "8", "--direct-max-tokens", "16",
             "--budgets", args.budgets, "--buckets", "1-2,3-4,5-20", "--seed", str(seed), "--no-plots",
             "--max-model-len", str(args.max_model_len), "--chunk-size", "64", "--thinking", "on"]
    return evaluate.run(evaluate.parse_args(flags + (["--engine", args.engine] if args.engine else [])), engine=engine)


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
    import statistics

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
    table = toy_table(methods, [str(b) for b in args.budget_list])
    seconds["total"] = time.time() - t_start
    results = {"methods": methods, "table": table, "seconds": seconds, "world": dataclasses.asdict(toy.World()),
               "config": {k: v for k, v in vars(args).items() if k not in ("seed_list", "budget_list")}, "warm_start": warm}
    policy.write_atomic(os.path.join(args.out, "results.json"), json.dumps(results, indent=1))
    png = None if args.no_plots else toy_plot(methods, args.out)
    print(f"\nMRT vs outcome-reward RL in the toy world: {len(held_out)} held-out problems, seeds {args.seed_list}, "
          f"mean ± sample std over seeds (normalized regret at token budgets C0; lower is better)\n")
    print(table)
    print(TOY_LEGEND)
    print(f"\nwrote {os.path.join(args.out, 'results.json')}" + (f" and {png}" if png else "")
          + f"; {seconds['total'] / 60:.1f} min (" + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if k != "total") + ")")
    return results


def parse_toy_args(argv):
    p = argparse.ArgumentParser(prog="mrt.py", formatter_class=argparse.RawDescriptionHelpFormatter, description=(
        "The default run (no --model): MRT against outcome-reward RL in the toy world of toy.py, on a CPU.\n"
        "From the shipped warm start (toy_warm_start/, rebuilt when asked or when toy.World changes), train GRPO,\n"
        "MRT-RL (Algorithm 2), STaR and MRT-STaR (Algorithm 1) with the same steps, prompts and samples, for several\n"
        "seeds; evaluate every model and the warm start on held-out problems with evaluate.py; print one table and\n"
        "write results.json (+ results.png with matplotlib). For a real model: python mrt.py --model PATH --help."))
    p.add_argument("--out", default="runs/toy", help="run folder (default runs/toy); a killed run resumes from it")
    p.add_argument("--quick", action="store_true",
                   help="one seed, 10 RL steps, one STaR iteration, 8 eval samples and 4 traces (other flags still apply)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per method (default 3)")
    p.add_argument("--seed", type=int, default=0, help="first seed (default 0): seeds are seed .. seed + seeds - 1")
    p.add_argument("--methods", default=",".join(TOY_METHODS), help=f"comma-separated, from {','.join(TOY_METHODS)}")
    p.add_argument("--steps", type=int, default=50, help="RL steps of grpo and mrt-rl (default 50)")
    p.add_argument("--batch-size", type=int, default=64, help="RL completions per step (default 64)")
    p.add_argument("--num-generations", type=int, default=4, help="G, completions per prompt (default 4)")
    p.add_argument("--max-completion-length", type=int, default=toy.TRAINING_BUDGET,
                   help=f"the training token budget of rollouts, RL and STaR (default {toy.TRAINING_BUDGET}: about "
                        "seven episodes and the answer)")
    p.add_argument("--temperature", type=float, default=0.9, help="rollout temperature (Table 3: 0.9)")
    p.add_argument("--lr", type=float, default=2e-4, help="RL learning rate (default 2e-4)")
    p.add_argument("--alpha", type=float, default=1.0, help="MRT-RL progress weight alpha (default 1.0)")
    p.add_argument("--iterations", type=int, default=2, help="STaR / MRT-STaR iterations (default 2)")
    p.add_argument("--star-rollouts", type=int, default=4, help="rollouts per problem and STaR iteration (default 4)")
    p.add_argument("--star-lr", type=float, default=2e-4, help="SFT learning rate of STaR / MRT-STaR (default 2e-4)")
    p.add_argument("--eval-samples", type=int, default=32, help="evaluation samples per held-out problem (default 32)")
    p.add_argument("--eval-traces", type=int, default=8,
                   help="evaluation traces per held-out problem scored by mu at every episode (default 8)")
    p.add_argument("--eval-max-tokens", type=int, default=192, help="evaluation budget in tokens (default 192)")
    p.add_argument("--budgets", default="48,96,144,192", help="token budgets C0 of normalized regret (default 48,96,144,192)")
    p.add_argument("--warm-start", default=toy.WARM_START_DIR, help="the shipped warm start folder (default toy_warm_start/)")
    p.add_argument("--rebuild", action="store_true", help="rebuild the warm start (python toy.py build; ~15 min) into --out")
    p.add_argument("--no-plots", action="store_true", help="skip results.png even when matplotlib is installed")
    p.add_argument("--engine", choices=("vllm", "hf"), default=None, help="generation backend (default vllm when importable)")
    p.add_argument("--dtype", default="auto", help="engine dtype (default auto)")
    p.add_argument("--max-model-len", type=int, default=512, help="engine context (default 512)")
    p.add_argument("--gpu-memory-utilization", type=float, default=None, help="vLLM memory fraction (default: prover.py's)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="vLLM without torch.compile: ~10 s less start-up, ~30%% slower decoding on CPU")
    if "--quick" in argv:   # --quick changes the defaults; flags given explicitly still win
        p.set_defaults(seeds=1, steps=10, iterations=1, eval_samples=8, eval_traces=4)
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in TOY_METHODS]
    if bad or not args.methods:
        p.error(f"--methods: unknown {bad}; choose from {', '.join(TOY_METHODS)}")
    for flag in ("seeds", "steps", "batch_size", "num_generations", "max_completion_length", "iterations",
                 "star_rollouts", "eval_samples", "eval_traces", "eval_max_tokens", "max_model_len"):
        if getattr(args, flag) < 1:
            p.error(f"{prover.option_name(p, flag)} must be >= 1, got {getattr(args, flag)}")
    if args.lr <= 0 or args.star_lr <= 0 or args.alpha < 0 or args.temperature < 0:
        p.error("--lr and --star-lr must be > 0, --alpha and --temperature >= 0")
    import evaluate
    args.budget_list = evaluate._parse_ints(p, "--budgets", args.budgets, 1)   # args.budgets goes to evaluate.py as given
    if args.eval_max_tokens + 128 > args.max_model_len:
        p.error(f"--max-model-len {args.max_model_len} must hold a prompt (< 64 tokens), --eval-max-tokens "
                f"{args.eval_max_tokens} and mu's suffix and answer (< 64): use at least {args.eval_max_tokens + 128}")
    if not args.rebuild and not os.path.isdir(args.warm_start):
        p.error(f"--warm-start: no such folder: {args.warm_start} (--rebuild builds one)")
    prover.check_engine_args(p, args)
    args.seed_list = list(range(args.seed, args.seed + args.seeds))
    return args


# ==============================================================================================
# CLI
# ==============================================================================================

def parse_rl_args(argv):
    """The RL methods' flags: grpo.py's (Table 3 defaults) and Algorithm 2's."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=METHODS, default="mrt-rl",
                   help="mrt-rl (Algorithm 2, default), grpo (outcome reward), length-penalty (Table 1 baselines); "
                        "mrt-star and star run star.py's Algorithm 1 and take its flags (python star.py --help)")
    p.add_argument("--smoke", action="store_true", help="the smoke run instead (python mrt.py --smoke --help)")
    grpo.add_grpo_args(p)
    p.add_argument("--advantage", choices=("progress", "baseline", "joint"), default="progress",
                   help="how the G forced terminations enter: progress (Alg. 2 / Eq. 3, default), baseline "
                        "(advantage r - J_r), joint (one GRPO group with the terminations); see above")
    p.add_argument("--alpha", type=float, default=1.0,
                   help="weight of the progress bonus in r + alpha * r_prg (the paper gives no value; the authors' "
                        "fork swept 0 to 1.6; default 1.0)")
    p.add_argument("--steps-per-iteration", type=int, default=0,
                   help="steps between pi_ref <- pi_theta refreshes (Alg. 2 line 3; default 0: one iteration, the "
                        "partial rollouts all from the starting model, as in the authors' fork)")
    p.add_argument("--min-prefix-episodes", type=int, default=0,
                   help="the smallest j drawn for a partial rollout (default 0: the empty prefix is allowed)")
    p.add_argument("--prover-max-tokens", type=int, default=4096,
                   help="tokens of each forced termination (App. D: 4096)")
    cfg = p.parse_args(argv)
    if cfg.steps_per_iteration < 0 or cfg.min_prefix_episodes < 0 or cfg.prover_max_tokens < 1 or cfg.alpha < 0:
        p.error("--steps-per-iteration and --min-prefix-episodes must be >= 0, --prover-max-tokens >= 1, --alpha >= 0")
    if cfg.method == "length-penalty":
        cfg.reward = "length-penalty"
    max_model_len = cfg.max_model_len
    cfg = grpo.check_args(p, cfg)
    if cfg.method == "mrt-rl" and max_model_len is None:
        cfg.max_model_len += 256 + cfg.prover_max_tokens   # a termination: context + suffix + answer
    return cfg


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", default=None)
    pre.add_argument("--model", default=None)
    pre.add_argument("--smoke", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if known.smoke:
        return smoke(parse_smoke_args(argv))
    if known.model is None and known.method is None:
        return toy_run(parse_toy_args(argv))      # the default run: the toy world
    if known.method in ("mrt-star", "star"):
        import star
        rest, skip = [], False
        for a in argv:                 # star.py's own flags, without --method
            if skip or a.startswith("--method"):
                skip = a == "--method"
                continue
            rest.append(a)
        return star.main(rest + ["--variant", "mrt" if known.method == "mrt-star" else "star"])
    cfg = parse_rl_args(argv)
    rank, _ = policy.setup_distributed()
    engine, clean = None, False
    try:
        engine = grpo.rollout_engine(cfg, rank)
        if rank == 0:
            print(f"mrt.py: method {cfg.method}, thinking {'on' if cfg.thinking else 'off'}")
        if cfg.method == "mrt-rl":
            from transformers import AutoTokenizer
            rollout_fn, reward_fn, advantage_fn, metrics_fn = algorithm_2(cfg, AutoTokenizer.from_pretrained(cfg.model))
            grpo.train(cfg, engine=engine, reward_fn=reward_fn, rollout_fn=rollout_fn, advantage_fn=advantage_fn,
                       metrics_fn=metrics_fn)
        else:
            grpo.train(cfg, engine=engine)
        clean = True
    finally:
        policy.teardown(engine, clean=clean)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"mrt.py: {e}")
