"""backtrack.py: the backtracking-search setting (App. A, Sec. 8.4), on the project's loops.

    python backtrack.py data --model BASE --train data/math_train_4k.jsonl --out runs/bt_data
    python star.py sft --model BASE --data runs/bt_data/backtrack.jsonl --thinking off --out runs/bt_warm
    torchrun --nproc_per_node 8 backtrack.py rl --model runs/bt_warm/checkpoints/step_N --out runs/bt_rl
    torchrun --nproc_per_node 8 backtrack.py star --model runs/bt_warm/... --progress-threshold 0.25 --out runs/bt_star
    python backtrack.py fig15                        # Fig. 15's SFT-loss comparison on the toy world

In this setting there is no <think> block: a response is an attempt z_0 ("Step 1: ...", ...,
"Answer: ..."), a backtrack episode z_1 (episodes.BACKTRACK_MARKER and a short note), and a revised
attempt z_2 that restarts at some "Step k:" (the Fig. 30 format that episodes.parse_backtrack reads).

    warm-start data (App. A.2)  beam_search: a step-level beam search against the 0/1 outcome reward,
                                each partial solution valued by rollouts from it (in place of a PRM);
                                backtrack_trace / rise_trace / rejection rows: the three datasets of
                                Fig. 14-15, JSONL in star.py sft's format
    mu and progress (A.1)       prover.score_backtracks: J_r(mu | x, .) after the attempt, the backtrack and the
                                revision, mu = "answer now" (answers forced after the kept steps)
    MRT-STaR (A.1)              star_filter, star_iteration: right revisions whose backtrack made progress
    MRT-RL (A.1)                rl_step: grpo.train's step function, progress_adjusted_rewards
                                r(x; z_2) + alpha * r_prg(z_1)
    evaluation (Sec. 8.4)       evaluate.parallel_traces, evaluate.linearized_traces (--analysis
                                parallel,linearized,progress-hist)

What is not training lives below, where measurement can use it without a trainer: the format
(episodes.parse_steps, backtrack_messages, kept_prefix), this setting's mu (prover.answer_prover,
score_backtracks, BacktrackScores), the attempt sampler and the evaluation modes (evaluate.py).
Imports: policy, episodes, grader, prover, evaluate (those), grpo and star (the loops), toy (Fig. 15's world),
flags (the shared command-line flags).
"""


import argparse
import json
import os
import random
import re
import time
from dataclasses import dataclass, field

import policy
import episodes
import evaluate
import flags
import grader
import grpo
import mrt_rl
import prover
import star
import toy

from tqdm import tqdm
from transformers import AutoTokenizer


# ==============================================================================================
# Step-level beam search with rollout value estimates (App. A.2)
# ==============================================================================================

@dataclass
class Node:
    """A partial solution z_{0:j} (its first j steps) in the search tree."""
    steps: tuple
    success_rate: float = 0.0                       # estimated P(correct | steps): mean reward of rollouts
    rollouts: list = field(default_factory=list)    # [(steps after this node, answer, reward)]


def beam_search(engine, tokenizer, problem, gold, beam_width=4, rollouts=8, max_depth=12, max_tokens=1024,
                temperature=1.0, seed=0):
    """Beam search over solution steps against the 0/1 outcome reward (App. A.2).

    At each depth every frontier node z_{0:j} gets `rollouts` completions sampled from it; the share
    that ends in a correct answer is its estimated success rate (Monte-Carlo rollouts in place of a
    process reward model). The `beam_width` best nodes are kept; their children are the distinct next
    steps their rollouts took, and form the next frontier. Returns {steps: Node} for every node.
    """
    nodes, frontier = {}, [()]
    for depth in range(max_depth + 1):
        prompts = [prover.build_prompt(tokenizer, episodes.backtrack_messages(problem), episodes.solution_prefix(s), thinking=False)
                   for s in frontier]
        groups = engine.generate(prompts, n=rollouts, temperature=temperature, max_tokens=max_tokens,
                                 seed=policy.sample_seed(seed, "beam_depth", depth))
        for steps, group in zip(frontier, groups):
            node = nodes[steps] = Node(steps)
            for sample in group:
                rest, answer = episodes.parse_steps(sample.text)
                reward = 0.0 if answer is None else grader.reward(f"Answer: {answer}", gold, thinking=False)
                node.rollouts.append((rest, answer, reward))
            node.success_rate = sum(r for _, _, r in node.rollouts) / max(len(node.rollouts), 1)
        kept = sorted(frontier, key=lambda s: -nodes[s].success_rate)[:beam_width]   # stable: ties keep order
        children = []
        for steps in kept:
            for rest, _, _ in nodes[steps].rollouts:
                child = steps + (rest[0],) if rest else None
                if child is not None and child not in nodes and child not in children:
                    children.append(child)
        if not children or depth == max_depth:
            break
        frontier = children
    return nodes


def solutions(nodes):
    """Every complete solution the search sampled: (steps, answer, reward), one per rollout."""
    return [(list(node.steps) + rest, answer, reward) for node in nodes.values()
            for rest, answer, reward in node.rollouts if answer is not None]


def backtrack_node(nodes, attempt_steps):
    """The step to backtrack to for a failed attempt: the prefix z_{0:j} of the attempt (j < its
    length, a node of the tree with a correct rollout of at least one step, which the revision will
    be) whose estimated success rate is highest; on a tie, the deepest (the most of the attempt is
    kept). Returns j, or None if no prefix qualifies."""
    best = None
    for j in range(len(attempt_steps)):
        node = nodes.get(tuple(attempt_steps[:j]))
        if node is not None and any(r > 0 and rest for rest, _, r in node.rollouts):
            if best is None or node.success_rate >= nodes[tuple(attempt_steps[:best])].success_rate:
                best = j
    return best


def backtrack_trace(nodes, attempt_steps, attempt_answer, rng):
    """The "Backtrack" warm-start trace of Fig. 14 for one failed attempt, or None: the attempt, the
    marker and a one-line backtrack naming the first step after the chosen node ("Step j+1 went
    wrong."; the paper does not give its wording), then a correct rollout from that node, numbered
    from Step j+1, so that parse_backtrack reads backtrack_step = j."""
    j = backtrack_node(nodes, attempt_steps)
    if j is None:
        return None
    node = nodes[tuple(attempt_steps[:j])]
    rest, answer, _ = rng.choice([r for r in node.rollouts if r[2] > 0 and r[0]])
    return (episodes.format_attempt(attempt_steps, attempt_answer) + "\n\n" + episodes.BACKTRACK_MARKER
            + f" Step {j + 1} went wrong.\n\n" + episodes.format_attempt(rest, answer, first_step=j + 1))


def rise_trace(wrong, right):
    """The "RISE" comparison trace (Fig. 14, Qu et al. 2024): a wrong attempt stitched to a correct
    solution written from scratch (a backtrack to step 0)."""
    return (episodes.format_attempt(*wrong) + "\n\n" + episodes.BACKTRACK_MARKER + "\n\n"
            + episodes.format_attempt(*right))


def warm_start_rows(problem, nodes, rng, per_problem=4):
    """The three datasets' rows for one problem: {"backtrack": [...], "rise": [...], "rejection": [...]},
    each row {"prompt": this setting's chat messages, "completion"}; at most per_problem rows each."""
    found = solutions(nodes)
    wrong = [(s, a) for s, a, r in found if r == 0 and s]
    right = [(s, a) for s, a, r in found if r > 0 and s]
    rng.shuffle(wrong)
    rng.shuffle(right)
    rows = {"backtrack": [], "rise": [], "rejection": []}
    for steps, answer in wrong:
        if len(rows["backtrack"]) == per_problem:
            break
        trace = backtrack_trace(nodes, steps, answer, rng)
        if trace is not None:
            rows["backtrack"].append(trace)
    if right:
        rows["rise"] = [rise_trace(w, rng.choice(right)) for w in wrong[:per_problem]]
        rows["rejection"] = [episodes.format_attempt(*r) for r in right[:per_problem]]
    return {name: [{"prompt": episodes.backtrack_messages(problem), "completion": c} for c in texts] for name, texts in rows.items()}


# ==============================================================================================
# MRT-STaR in this setting (App. A.1): the selection
# ==============================================================================================

def star_filter(traces, threshold=None):
    """The STaR variant's selection (App. A.1): keep an on-policy trace when its (first) revision is
    right, r(x; z_2) = 1, and its backtrack made progress r_prg(z_1; c) >= threshold. threshold None
    is the STaR baseline: correctness alone. traces: (row, [prover.BacktrackScores] or None); returns rows."""
    return [row for row, scores in traces
            if scores and scores[0].revision == 1.0 and (threshold is None or scores[0].progress >= threshold)]


# ==============================================================================================
# On-policy rollouts (Fig. 13) and MRT-RL in this setting (App. A.1)
# ==============================================================================================

def on_policy_traces(engine, problems, n, attempt_tokens, continuation_tokens, temperature, seed, top_p=1.0):
    """Fig. 13's rollouts: an attempt z_0 ~ pi(.|x) per problem (cut at the marker), the marker, then n
    continuations (the backtrack z_1 and the revision z_2, cut at a next marker). Returns the contexts
    x, z_0, marker (ids), the continuation samples [problem][n] and the whole traces' texts."""
    heads, attempts = evaluate.sample_attempts(engine, problems, 1, attempt_tokens, temperature, seed)
    attempts = [row[0].text.rstrip() for row in attempts]
    contexts = [h + engine.tokenizer.encode(a + "\n\n" + episodes.BACKTRACK_MARKER, add_special_tokens=False)
                for h, a in zip(heads, attempts)]
    groups = engine.generate(contexts, n=n, temperature=temperature, top_p=top_p, max_tokens=continuation_tokens,
                             seed=seed + 1, stop=[episodes.BACKTRACK_MARKER])
    texts = [[a + "\n\n" + episodes.BACKTRACK_MARKER + s.text for s in g] for a, g in zip(attempts, groups)]
    return contexts, groups, texts


def progress_adjusted_rewards(scores, alpha):
    """App. A.1's reward of MRT-RL in this setting, per continuation: r(x; z_2) + alpha * r_prg(z_1; c),
    the revision's outcome plus the backtrack's progress under this setting's mu; 0 for a continuation
    that does not parse as the Fig. 30 format. Unlike mrt_rl.py's open-ended bonus, r_prg here differs
    between the G samples (each backtrack keeps its own steps), so it can be a reward: its
    J_r(mu | x, z_0) part is shared by the group and GRPO's centring removes it, leaving
    r(x; z_2) + alpha * J_r(mu | x, z_0, z_1) in effect. alpha = 0 is outcome-reward GRPO."""
    return [[0.0 if not sc else sc[0].revision + alpha * sc[0].progress for sc in row] for row in scores]


def backtrack_episode_credit(tokenizer, sample, text, score, alpha, outcome_advantage):
    """--progress-credit episode in this setting: the per-token advantages of one continuation z_1 z_2
    (`sample`; `text` is the whole trace, score_backtracks' scores of it). The backtrack's tokens (after
    the marker, up to "Step k:") get alpha * r_prg(z_1; c) = alpha * (J_r(mu | x, z_0, z_1) - r(x; z_0)),
    the revision's tokens alpha * (r(x; z_2) - J_r(mu | x, z_0, z_1)), its own progress, both on top of
    GRPO's advantage of the outcome r(x; z_2) (mrt_rl.episode_bonuses' reading, with the attempt's own
    answer as J_r before z_1). A continuation that does not parse, or was cut at the budget, gets the
    outcome advantage only."""
    if not score or sample.finish_reason == "length":
        return [outcome_advantage] * sample.num_tokens
    b = score[0]
    z1_chars = len(episodes.parse_backtrack(text)[0].backtrack) - len(episodes.BACKTRACK_MARKER)
    end = prover.shortest_decoding_prefix(tokenizer, sample.token_ids, z1_chars) if z1_chars > 0 else 0
    credit = mrt_rl.episode_token_credit([b.progress, b.revision - b.backtrack], [end], sample.num_tokens)
    return [outcome_advantage + alpha * c for c in credit]


def rl_step(alpha=1.0, m=4, prover_max_tokens=32, credit="trace"):
    """grpo.train's step function for MRT-RL in this setting (App. A.1): from an on-policy attempt z_0
    and the marker, G continuations (the backtrack z_1 and the revision z_2, up to a next marker) are
    sampled and trained on. credit="trace": GRPO's group advantages of progress_adjusted_rewards, one
    reward per continuation. credit="episode": GRPO's advantage of r(x; z_2) plus each episode's own
    progress on its tokens (backtrack_episode_credit). The attempt is context, not trained on (as
    mrt_rl.py's partial rollouts).

    How the two relate to mrt_rl.py's: here a continuation holds exactly one backtrack, and the bonus
    already differs between the G samples, so even the trace form is not outcome GRPO in expectation
    (unlike Alg. 2's single J_r per prompt); the episode form only moves r_prg(z_1) onto z_1's tokens
    and gives z_2's tokens what the revision added beyond it."""
    def step_fn(engine, mine, cfg, step):
        seed = policy.sample_seed(cfg.seed, "rollouts", step + 1)
        half = cfg.max_completion_length // 2      # the attempt and its continuation share the budget
        contexts, groups, texts = on_policy_traces(engine, mine, cfg.num_generations, half, cfg.max_completion_length - half,
                                                   cfg.temperature, seed, cfg.top_p)
        t0 = time.time()
        mu = prover.answer_prover(engine, m=m, max_tokens=prover_max_tokens, seed=seed + 2)
        flat = prover.score_backtracks(mu, [(q["problem"], q["answer"], t) for q, ts in zip(mine, texts) for t in ts])
        scores = [flat[i * cfg.num_generations:(i + 1) * cfg.num_generations] for i in range(len(mine))]
        correct = grpo.outcome_reward(mine, groups, cfg)
        if credit == "episode":
            rewards = [[sc[0].revision if sc else 0.0 for sc in row] for row in scores]   # r(x; z_2)
            outcome = grpo.group_advantages([r for row in rewards for r in row], cfg.num_generations, cfg.scale_rewards)
            advantages = [backtrack_episode_credit(engine.tokenizer, s, t, sc, alpha, a) for s, t, sc, a in
                          zip([s for g in groups for s in g], [t for ts in texts for t in ts], flat, outcome.tolist())]
        else:
            rewards = progress_adjusted_rewards(scores, alpha)
            advantages = grpo.group_advantages([r for row in rewards for r in row], cfg.num_generations, cfg.scale_rewards)
        parsed = [sc[0] for row in scores for sc in row if sc]
        metrics = {"backtrack_parsed": (len(parsed), len(flat)),
                   "backtrack_progress": (sum(s.progress for s in parsed), len(parsed)),
                   "revision_correct": (sum(s.revision for s in parsed), len(parsed))}
        return grpo.flatten_groups(contexts, groups, advantages, rewards, correct, metrics, seconds_score=time.time() - t0)

    return step_fn


# ==============================================================================================
# Fig. 15 on the toy world: which warm-start data is easiest to fit
# ==============================================================================================

class ToyStepPolicy:
    """A scripted base policy for the toy world (toy.py) in the Fig. 30 format, as an Engine: each
    step tries a digit ("Try 4: g(4)=30, target 37. No."), re-trying one already tried with
    P_REDUNDANT; after a failed try it stops with P_STOP and guesses an untried digit; a "Yes" is
    followed by its answer. Its success rate from a partial solution is therefore set by how many
    digits are still untried: the beam search has real values to find. (It reads only the world's
    functions and problems: its search is its own, a blind one, not the warm start's.)"""

    P_REDUNDANT, P_STOP = 0.25, 0.3

    def __init__(self, world, tokenizer, seed=0):
        self.world, self.tokenizer, self.seed = world, tokenizer, seed
        self.functions = toy.hidden_functions(world)
        self.problems = {q["problem"]: q for q in sum(toy.make_problems(world), [])}

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        out = []
        for i, p in enumerate(prompts):
            text = p if isinstance(p, str) else self.tokenizer.decode(p)
            q = next(q for problem, q in self.problems.items() if problem in text)
            done = [int(c) for c in re.findall(r"Step \d+: Try (\d+):", text.split(episodes.FORMAT_INSTRUCTION, 1)[1])]
            rng = random.Random(f"{self.seed}-{seed}-{i}-{text}")
            out.append([prover.Sample(t, [], "stop") for t in (self._continue(q, done, rng) for _ in range(n))])
        return out

    def _continue(self, q, tried, rng):
        values, target, x = self.functions[q["function"]], q["target"], int(q["answer"])
        tried, text, step = list(tried), "", len(tried) + 1
        if tried and tried[-1] == x:    # the partial solution ends with the "Yes": answer it
            return f"Answer: {x}"
        while True:
            untried = [c for c in range(self.world.symbols) if c not in tried]
            if tried and tried[-1] != x and rng.random() < self.P_STOP and untried:
                return text + f"Answer: {rng.choice(untried)}"
            c = rng.choice(tried) if tried and (rng.random() < self.P_REDUNDANT or not untried) else rng.choice(untried)
            text += f"Step {step}: Try {c}: {q['function']}({c})={values[c]}, target {target}. {'Yes' if c == x else 'No'}.\n\n"
            tried.append(c)
            step += 1
            if c == x:
                return text + f"Answer: {x}"


def fig15(args):
    """Build the three warm-start datasets with ToyStepPolicy's beam search on the toy world's training
    problems, then SFT the shipped toy warm start on each for the same number of steps and report the
    per-token training loss against tokens trained on (Fig. 15)."""
    world = toy.World()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    engine = ToyStepPolicy(world, tokenizer, seed=args.seed)
    train, _ = toy.make_problems(world)
    data = {"backtrack": [], "rise": [], "rejection": []}
    for i, q in enumerate(train):
        nodes = beam_search(engine, tokenizer, q["problem"], q["answer"], args.beam_width, args.rollouts, args.max_depth,
                            seed=policy.sample_seed(args.seed, "beam_problem", i))
        for name, rows in warm_start_rows(q["problem"], nodes, random.Random(args.seed + i), args.per_problem).items():
            data[name] += rows
    os.makedirs(args.out, exist_ok=True)
    curves = {}
    for name, rows in data.items():
        path = os.path.join(args.out, f"{name}.jsonl")
        policy.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        run_dir = os.path.join(args.out, f"sft_{name}")
        cfg = star.sft_config(model=args.model, out=run_dir, batch_size=args.batch_size, max_steps=args.steps,
                              lr=args.lr, warmup_ratio=0.0, save_every=args.steps, seed=args.seed,
                              max_seq_length=1024)   # the toy model's context
        examples, _ = star.load_sft_data(path, tokenizer, False, cfg.max_seq_length, cfg.truncate)
        star.sft(cfg, examples, args.model, tokenizer, run_dir)
        log = [json.loads(line) for line in open(os.path.join(run_dir, "metrics.jsonl")) if '"sft_step"' in line]
        tokens = 0
        curves[name] = []
        for row in log:
            tokens += row["completion_tokens"]
            curves[name].append((tokens, row["loss"]))
        mean_len = sum(len(r["completion"]) for r in rows) / max(len(rows), 1)
        print(f"{name:9s} {len(rows):4d} rows, {mean_len:5.0f} chars per completion; loss at steps "
              + ", ".join(f"{s}: {curves[name][s - 1][1]:.3f}" for s in sorted({1, args.steps // 4, args.steps // 2, args.steps})
                          if s >= 1))
    # the paper compares at equal token budgets: each curve's loss once it has trained on as many
    # completion tokens as the shortest run saw in all
    budget = min(c[-1][0] for c in curves.values())
    at_budget = {name: next(loss for tokens, loss in c if tokens >= budget) for name, c in curves.items()}
    print(f"loss after {budget} completion tokens: " + ", ".join(f"{n} {v:.3f}" for n, v in at_budget.items()))
    policy.write_atomic(os.path.join(args.out, "fig15.json"), json.dumps({"curves": curves, "token_budget": budget,
                                                                          "loss_at_budget": at_budget}))
    return curves


# ==============================================================================================
# CLI
# ==============================================================================================

def build_data(args):
    """Beam search on every training problem, then the three datasets, appended problem by problem
    (a killed run resumes after the last problem it finished)."""
    os.makedirs(args.out, exist_ok=True)
    problems = prover.load_problems(args.train, years=args.train_years)[:args.num_problems]
    done_path = os.path.join(args.out, "done.txt")
    done = set(open(done_path).read().split()) if os.path.exists(done_path) else set()
    engine = prover.engine_from_args(args, args.model, seed=args.seed)
    counts = {"backtrack": 0, "rise": 0, "rejection": 0}
    try:
        for i, q in enumerate(tqdm(problems, desc="beam search", unit="problem")):
            if q["id"] in done:
                continue
            nodes = beam_search(engine, engine.tokenizer, q["problem"], q["answer"], args.beam_width, args.rollouts,
                                args.max_depth, args.max_tokens, args.temperature, seed=policy.sample_seed(args.seed, "beam_problem", i))
            rows = warm_start_rows(q["problem"], nodes, random.Random(args.seed + i), args.per_problem)
            for name, batch in rows.items():
                with open(os.path.join(args.out, f"{name}.jsonl"), "a", encoding="utf-8") as f:
                    f.writelines(json.dumps(r) + "\n" for r in batch)
                counts[name] += len(batch)
            with open(done_path, "a") as f:   # after the rows: a problem is done only when all are written
                f.write(q["id"] + "\n")
    finally:
        engine.close()
    print(f"wrote {', '.join(f'{n}.jsonl (+{c} rows)' for n, c in counts.items())} to {args.out}")


def star_iteration(cfg, engine, problems, tokenizer):
    """One iteration of the STaR variant (App. A.1): on-policy traces (Fig. 13), mu on each backtrack,
    star_filter (--progress-threshold; none: the STaR baseline), then SFT on the kept traces, from the
    weights the engine holds. Returns (kept rows, scored traces)."""
    _, _, texts = on_policy_traces(engine, problems, cfg.rollouts, cfg.max_tokens, cfg.max_tokens, cfg.temperature, cfg.seed)
    items = [(q["problem"], q["answer"], text) for q, row in zip(problems, texts) for text in row]
    rows = [{"prompt": episodes.backtrack_messages(problem), "completion": text} for problem, _, text in items]
    scores = prover.score_backtracks(prover.answer_prover(engine, cfg.prover_samples, cfg.prover_max_tokens, seed=cfg.seed + 2), items)
    kept = star_filter(list(zip(rows, scores)), cfg.progress_threshold)
    data = os.path.join(cfg.out, "data.jsonl")
    policy.write_atomic(data, "".join(json.dumps(r) + "\n" for r in kept))
    if kept:
        examples, _ = star.load_sft_data(data, tokenizer, False, cfg.max_seq_length, cfg.truncate)
        star.sft(cfg, examples, cfg.model, tokenizer, os.path.join(cfg.out, "sft"), engine)
    return kept, scores


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("data", help="warm-start SFT data (App. A.2): beam search, then the three datasets")
    flags.add_model(d, help="the base model that samples steps (App. A: Llama-3.1-8B-Instruct)")
    flags.add_train_data(d)
    d.add_argument("--out", required=True, help="folder for backtrack.jsonl, rise.jsonl, rejection.jsonl")
    d.add_argument("--num-problems", type=flags.positive_int, default=None, help="the first N problems (default all)")
    add_beam_args(d, max_depth=12)
    d.add_argument("--max-tokens", type=flags.positive_int, default=1024, help="tokens per rollout (Table 5: 1024)")
    d.add_argument("--temperature", type=flags.nonnegative_float, default=1.0, help="rollout temperature (default 1.0)")
    flags.add_seed(d, help="sampling seed (default 0)")
    flags.add_engine(d)

    r = sub.add_parser("rl", help="MRT-RL in this setting (App. A.1): GRPO on backtrack + revision, progress-adjusted reward")
    grpo.add_grpo_args(r)
    r.add_argument("--alpha", type=flags.nonnegative_float, default=1.0,
                   help="weight of the backtrack's progress r_prg(z_1) (0: GRPO)")
    r.add_argument("--progress-credit", choices=("trace", "episode"), default="trace",
                   help="trace (default, App. A.1): r(z_2) + alpha * r_prg(z_1) as the continuation's reward; episode: "
                        "GRPO's advantage of r(z_2), plus alpha * each episode's own progress on its tokens")
    flags.add_prover(r, samples=4, max_tokens=32, temperature=False, samples_source="answers forced after the kept "
                     "steps; default", max_tokens_source="one answer line")
    r.set_defaults(max_prompt_length=1500, max_completion_length=1024, lr=1e-6, beta=0.04)   # Table 5

    t = sub.add_parser("star", help="MRT-STaR in this setting (App. A.1): one iteration of on-policy traces, "
                                    "filtered by correctness and backtrack progress, then SFT")
    star.add_sft_args(t)
    flags.add_train_data(t)
    t.add_argument("--num-problems", type=flags.positive_int, default=None, help="the first N problems (default all)")
    t.add_argument("--rollouts", type=flags.positive_int, default=4, help="backtrack + revision samples per attempt (default 4)")
    t.add_argument("--max-tokens", type=flags.positive_int, default=1024,
                   help="tokens per attempt and per continuation (default 1024)")
    t.add_argument("--temperature", type=flags.nonnegative_float, default=0.9, help="sampling temperature (default 0.9)")
    flags.add_prover(t, samples=4, max_tokens=32, temperature=False, samples_source="answers forced after the kept "
                     "steps, per backtrack; default", max_tokens_source="one answer line")
    t.add_argument("--progress-threshold", type=float, default=None,
                   help="keep traces whose backtrack progress r_prg(z_1) >= this (MRT-STaR; e.g. 0.25); "
                        "unset: the STaR baseline, correct revisions only")
    t.set_defaults(max_seq_length=4096)   # Table 4
    flags.add_engine(t)

    f = sub.add_parser("fig15", help="Fig. 15 on the toy world: SFT loss of the Backtrack, RISE and rejection datasets")
    flags.add_model(f, required=False, help="the model to fine-tune (default: the shipped toy warm start)")
    f.add_argument("--out", default="runs/fig15", help="folder for the datasets, SFT runs and fig15.json")
    add_beam_args(f, max_depth=10)
    f.add_argument("--steps", type=flags.positive_int, default=100, help="SFT steps per dataset (default 100)")
    f.add_argument("--batch-size", type=flags.positive_int, default=16, help="SFT batch (default 16)")
    f.add_argument("--lr", type=flags.positive_float, default=5e-4, help="SFT learning rate (default 5e-4)")
    flags.add_seed(f)

    args = p.parse_args(argv)
    if args.command == "fig15":
        args.model = args.model or toy.WARM_START_DIR
        flags.check_model(f, args)
        policy.setup_distributed()
        try:
            fig15(args)
        finally:
            policy.teardown()
        return
    if args.command == "rl":
        args.thinking = "off"
        cfg = grpo.check_args(r, args)
        grpo.main(cfg=cfg, step_fn=rl_step(cfg.alpha, cfg.prover_samples, cfg.prover_max_tokens, cfg.progress_credit))
        return
    if args.command == "star":
        args.thinking = "off"
        cfg = star.check_sft_args(t, args)
        flags.check_train(t, cfg)
        flags.check_engine(t, cfg)
        problems = prover.load_problems(cfg.train, years=cfg.train_years)[:cfg.num_problems]
        rank, _ = policy.setup_distributed()
        engine = None
        try:
            engine = prover.engine_from_args(cfg, cfg.model, seed=cfg.seed + rank)
            kept, scores = star_iteration(cfg, engine, problems, engine.tokenizer)
            print(f"kept {len(kept)} of {len(scores)} traces ({sum(s is not None for s in scores)} parsed)")
        finally:
            policy.teardown(engine)
        return
    flags.check_model(d, args)
    flags.check_train(d, args)
    flags.check_engine(d, args)
    build_data(args)


def add_beam_args(p, max_depth):
    """The beam search of the warm-start data (App. A.2) and its datasets."""
    p.add_argument("--beam-width", type=flags.positive_int, default=4, help="nodes kept per depth (default 4)")
    p.add_argument("--rollouts", type=flags.positive_int, default=8,
                   help="rollouts per node: its success-rate estimate (default 8)")
    p.add_argument("--max-depth", type=flags.positive_int, default=max_depth,
                   help=f"deepest partial solution searched, in steps (default {max_depth})")
    p.add_argument("--per-problem", type=flags.positive_int, default=4, help="rows per problem in each dataset (default 4)")


if __name__ == "__main__":
    main()
    policy.exit_process()
