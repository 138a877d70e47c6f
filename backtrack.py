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
    mu and progress (A.1)       score_backtracks: J_r(mu | x, .) after the attempt, the backtrack and the
                                revision, mu = "answer now" (answers forced after the kept steps)
    MRT-STaR (A.1)              star_filter, star_iteration: right revisions whose backtrack made progress
    MRT-RL (A.1)                backtrack_rl: grpo.train's pieces for r(x; z_2) + alpha * r_prg(z_1)
    evaluation (Sec. 8.4)       parallel_traces, linearized_traces + sliding_window (evaluate.py's
                                --analysis parallel,linearized,progress-hist)
"""


import argparse
import json
import os
import random
import re
from dataclasses import dataclass, field

import policy  # first: it pins this rank's GPU before torch is imported
import episodes
import grpo
import prover
import star


# ==============================================================================================
# Solutions in the Fig. 30 format
# ==============================================================================================

def parse_steps(text):
    """A generated continuation -> (steps, answer): the bodies of its "Step n:" paragraphs and the
    value of its "Answer:" paragraph (None when it has none: cut at the token budget). A paragraph
    that opens neither continues the step before it; text after the answer is dropped."""
    steps, answer = [], None
    for paragraph in text.split("\n\n"):
        head = paragraph.lstrip()
        if head.startswith("Answer:"):
            answer = head[len("Answer:"):].strip().split("\n", 1)[0].strip()
            break
        if head.startswith("Step ") and ":" in head[:12] and head[5:head.index(":")].strip().isdigit():
            steps.append(head[head.index(":") + 1:].strip())
        elif steps and head:
            steps[-1] += "\n\n" + head
    return steps, answer


# The user turn of this setting: the format of Fig. 30 instead of prover.PROMPT_SUFFIX's \boxed{}.
FORMAT_INSTRUCTION = ("Solve the problem step by step. Write each step as its own paragraph starting with "
                      "'Step <number>:', and end with a paragraph 'Answer: <final answer>'.")


def backtrack_messages(problem):
    """The chat messages of a problem in this setting (build_prompt takes them as they are)."""
    return [{"role": "user", "content": f"{problem}\n\n{FORMAT_INSTRUCTION}"}]


def solution_prefix(steps):
    """The response text of a partial solution: its steps in the Fig. 30 format, ready for "Step n+1:"."""
    return "".join(f"Step {i + 1}: {s}\n\n" for i, s in enumerate(steps))


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
        prompts = [prover.build_prompt(tokenizer, backtrack_messages(problem), solution_prefix(s), thinking=False)
                   for s in frontier]
        groups = engine.generate(prompts, n=rollouts, temperature=temperature, max_tokens=max_tokens,
                                 seed=seed + 7919 * depth)
        for steps, group in zip(frontier, groups):
            node = nodes[steps] = Node(steps)
            for sample in group:
                rest, answer = parse_steps(sample.text)
                reward = 0.0 if answer is None else prover.reward(f"Answer: {answer}", gold, thinking=False)
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
    return {name: [{"prompt": backtrack_messages(problem), "completion": c} for c in texts] for name, texts in rows.items()}


# ==============================================================================================
# The meta-prover and progress in this setting (App. A.1)
# ==============================================================================================

@dataclass
class BacktrackScores:
    """J_r(mu | x, .) after each episode of one backtrack (Eq. 4), with mu = "stop and answer now":

        after the attempt z_0             the attempt's own answer: r(x; z_0)
        after the backtrack z_0, z_1      answers forced right after the steps the backtrack keeps
                                          (the prefix up to "Step k:", then "Answer:"), m samples
        after the revision z_0, z_1, z_2  the revision's own answer: r(x; z_2)

    progress is Def. 6.1's r_prg(z_1; c) of the backtrack episode: what going back gained."""
    attempt: float
    backtrack: float
    revision: float
    forced_answers: list = field(default_factory=list)

    @property
    def progress(self):
        return self.backtrack - self.attempt


def kept_prefix(backtracks, i):
    """The response text mu answers from after backtrack i: the solution it revises (the first attempt,
    or the previous backtrack's revised solution) up to its "Step k:" line, k = backtrack_step + 1."""
    solution = backtracks[i - 1].revised_solution if i else backtracks[0].attempt
    k = backtracks[i].backtrack_step + 1
    return solution[:re.search(rf"^[ \t]*Step[ \t]+{k}[ \t]*:", solution, re.MULTILINE).start()]


def answer_prover(engine, m=8, max_tokens=64, temperature=0.7, seed=0):
    """mu for this setting: prover.MetaProver with "Answer:" as the forcing suffix, one line per answer."""
    return prover.MetaProver(engine, m=m, temperature=temperature, max_tokens=max_tokens, seed=seed, thinking=False,
                             suffix="Answer:", stop=["\n"])


def score_backtracks(mu, items):
    """BacktrackScores for every backtrack of every (problem, gold, response text); None for a text
    that does not parse as the Fig. 30 format (no marker, bad numbering)."""
    parsed, traces = [], []
    for problem, gold, text in items:
        try:
            bts = episodes.parse_backtrack(text)
        except ValueError:
            parsed.append(None)
            continue
        parsed.append(bts)
        traces.append((backtrack_messages(problem), gold, [kept_prefix(bts, i) for i in range(len(bts))]))
    forced = iter(mu.score(traces))
    out = []
    for (problem, gold, _), bts in zip(items, parsed):
        if bts is None:
            out.append(None)
            continue
        f = next(forced)
        grade = lambda answer: prover.reward(f"Answer: {answer}", gold, thinking=False)  # noqa: E731
        out.append([BacktrackScores(grade(b.attempt_answer), rate, grade(b.revision_answer), answers)
                    for b, rate, answers in zip(bts, f.success_rates, f.answers)])
    return out


def star_filter(traces, threshold=None):
    """The STaR variant's selection (App. A.1): keep an on-policy trace when its (first) revision is
    right, r(x; z_2) = 1, and its backtrack made progress r_prg(z_1; c) >= threshold. threshold None
    is the STaR baseline: correctness alone. traces: (row, [BacktrackScores] or None); returns rows."""
    return [row for row, scores in traces
            if scores and scores[0].revision == 1.0 and (threshold is None or scores[0].progress >= threshold)]


# ==============================================================================================
# On-policy rollouts (Fig. 13) and the RL variant's reward
# ==============================================================================================

def _attempts(engine, problems, n, max_tokens, temperature, seed):
    """(heads, attempt samples [problem][n]): z_0 ~ pi(.|x), each cut at the marker."""
    heads = [prover.build_prompt(engine.tokenizer, backtrack_messages(q["problem"]), thinking=False) for q in problems]
    return heads, engine.generate(heads, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed,
                                  stop=[episodes.BACKTRACK_MARKER])


def on_policy_traces(engine, problems, n, attempt_tokens, continuation_tokens, temperature, seed, top_p=1.0):
    """Fig. 13's rollouts: an attempt z_0 ~ pi(.|x) per problem (cut at the marker), the marker, then n
    continuations (the backtrack z_1 and the revision z_2, cut at a next marker). Returns the contexts
    x, z_0, marker (ids), the continuation samples [problem][n] and the whole traces' texts."""
    heads, attempts = _attempts(engine, problems, 1, attempt_tokens, temperature, seed)
    attempts = [row[0].text.rstrip() for row in attempts]
    contexts = [h + engine.tokenizer.encode(a + "\n\n" + episodes.BACKTRACK_MARKER, add_special_tokens=False)
                for h, a in zip(heads, attempts)]
    groups = engine.generate(contexts, n=n, temperature=temperature, top_p=top_p, max_tokens=continuation_tokens,
                             seed=seed + 1, stop=[episodes.BACKTRACK_MARKER])
    texts = [[a + "\n\n" + episodes.BACKTRACK_MARKER + s.text for s in g] for a, g in zip(attempts, groups)]
    return contexts, groups, texts


def backtrack_rl(alpha=1.0, m=4, prover_max_tokens=32):
    """grpo.train's rollout_fn, reward_fn and metrics_fn for MRT-RL in this setting (App. A.1): from an
    on-policy attempt z_0 and the marker, G continuations (the backtrack z_1 and the revision z_2, up
    to a next marker) are sampled and trained on; the reward is r(x; z_2) + alpha * r_prg(z_1; c), the
    progress of the backtrack under this setting's mu. alpha = 0 is outcome-reward GRPO on the same
    rollouts. The attempt is context, not trained on (as mrt.py's partial rollouts). Unlike mrt.py's
    open-ended bonus, r_prg here differs between the G samples (each backtrack keeps its own steps),
    so it can be a reward: its J_r(mu | x, z_0) part is shared by the group and GRPO's centring
    removes it, leaving r(x; z_2) + alpha * J_r(mu | x, z_0, z_1) in effect."""
    state = {}

    def rollout_fn(engine, mine, cfg, step):
        seed = grpo.step_seed(cfg, step)
        half = cfg.max_completion_length // 2      # the attempt and its continuation share the budget
        contexts, groups, texts = on_policy_traces(engine, mine, cfg.num_generations, half, cfg.max_completion_length - half,
                                                   cfg.temperature, seed, cfg.top_p)
        mu = answer_prover(engine, m=m, max_tokens=prover_max_tokens, seed=seed + 2)
        flat = score_backtracks(mu, [(q["problem"], q["answer"], t) for q, ts in zip(mine, texts) for t in ts])
        state["scores"] = [flat[i * cfg.num_generations:(i + 1) * cfg.num_generations] for i in range(len(mine))]
        return contexts, groups

    def reward_fn(problems, groups, cfg):
        return [[0.0 if not sc else sc[0].revision + alpha * sc[0].progress for sc in row] for row in state["scores"]]

    def metrics_fn(problems, groups, cfg):
        scores = [sc[0] for row in state["scores"] for sc in row if sc]
        n = len(state["scores"]) * (len(state["scores"][0]) if state["scores"] else 0)
        return {"backtrack_parsed": (len(scores), n), "backtrack_progress": (sum(s.progress for s in scores), len(scores)),
                "revision_correct": (sum(s.revision for s in scores), len(scores))}

    return rollout_fn, reward_fn, metrics_fn


# ==============================================================================================
# Evaluation modes (Sec. 8.4, Fig. 8): parallel and linearized (evaluate.py runs them)
# ==============================================================================================

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
    heads, attempts = _attempts(engine, problems, n, max_tokens, temperature, seed)
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
            answers.append(parse_steps(r.text)[1] or parse_steps(a.text)[1])
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
    heads, attempts = _attempts(engine, problems, 1, max_tokens, temperature, seed)
    segments = [[tok.encode(row[0].text.rstrip(), add_special_tokens=False)] for row in attempts]
    is_marker = [[False] for _ in problems]
    records = [{"answers": [parse_steps(row[0].text)[1]], "tokens": [row[0].num_tokens]} for row in attempts]
    for b in range(backtracks):
        contexts = [h + sliding_window(seg, window, mk) + marker for h, seg, mk in zip(heads, segments, is_marker)]
        outs = engine.generate(contexts, n=1, temperature=temperature, max_tokens=max_tokens, seed=seed + 1 + b,
                               stop=[episodes.BACKTRACK_MARKER])
        for seg, mk, record, (out,) in zip(segments, is_marker, records, outs):
            seg += [marker, tok.encode(out.text.rstrip(), add_special_tokens=False)]
            mk += [True, False]
            record["answers"].append(parse_steps(out.text)[1])
            record["tokens"].append(out.num_tokens)
    return records


# ==============================================================================================
# Fig. 15 on the toy world: which warm-start data is easiest to fit
# ==============================================================================================

class ToyStepPolicy:
    """A scripted base policy for the toy world (toy.py) in the Fig. 30 format, as an Engine: each
    step tries a digit ("Try 4: g(4)=2, target 7. No."), re-trying one already tried with
    world.p_redundant; after a failed try it stops with world.p_stop and guesses an untried digit;
    a "Yes" is followed by its answer. Its success rate from a partial solution is therefore set by
    how many digits are still untried: the beam search has real values to find."""

    def __init__(self, world, tokenizer, seed=0):
        import toy
        self.world, self.tokenizer, self.seed = world, tokenizer, seed
        self.functions = toy.hidden_functions(world)
        self.problems = {q["problem"]: q for q in sum(toy.make_problems(world), [])}

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        out = []
        for i, p in enumerate(prompts):
            text = p if isinstance(p, str) else self.tokenizer.decode(p)
            q = next(q for problem, q in self.problems.items() if problem in text)
            done = [int(c) for c in re.findall(r"Step \d+: Try (\d+):", text.split(FORMAT_INSTRUCTION, 1)[1])]
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
            if tried and tried[-1] != x and rng.random() < self.world.p_stop and untried:
                return text + f"Answer: {rng.choice(untried)}"
            c = rng.choice(tried) if tried and (rng.random() < self.world.p_redundant or not untried) else rng.choice(untried)
            text += f"Step {step}: Try {c}: {q['function']}({c})={values[c]}, target {target}. {'Yes' if c == x else 'No'}.\n\n"
            tried.append(c)
            step += 1
            if c == x:
                return text + f"Answer: {x}"


def fig15(args):
    """Build the three warm-start datasets with ToyStepPolicy's beam search on the toy world's training
    problems, then SFT the shipped toy warm start on each for the same number of steps and report the
    per-token training loss against tokens trained on (Fig. 15)."""
    import toy
    from transformers import AutoTokenizer
    world = toy.World()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    engine = ToyStepPolicy(world, tokenizer, seed=args.seed)
    train, _ = toy.make_problems(world)
    data = {"backtrack": [], "rise": [], "rejection": []}
    for i, q in enumerate(train):
        nodes = beam_search(engine, tokenizer, q["problem"], q["answer"], args.beam_width, args.rollouts, args.max_depth,
                            seed=args.seed + 104729 * i)
        for name, rows in warm_start_rows(q["problem"], nodes, random.Random(args.seed + i), args.per_problem).items():
            data[name] += rows
    os.makedirs(args.out, exist_ok=True)
    curves = {}
    for name, rows in data.items():
        path = os.path.join(args.out, f"{name}.jsonl")
        policy.write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        run_dir = os.path.join(args.out, f"sft_{name}")
        cfg = star.parse_args(["sft", "--model", args.model, "--data", path, "--out", run_dir, "--thinking", "off",
                               "--batch-size", str(args.batch_size), "--max-steps", str(args.steps), "--lr", str(args.lr),
                               "--warmup-ratio", "0", "--save-every", str(args.steps), "--seed", str(args.seed),
                               "--max-seq-length", "1024"])   # the toy model's context
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
    from tqdm import tqdm
    os.makedirs(args.out, exist_ok=True)
    problems = prover.load_problems(args.train)[:args.num_problems]
    done_path = os.path.join(args.out, "done.txt")
    done = set(open(done_path).read().split()) if os.path.exists(done_path) else set()
    engine = prover.engine_from_args(args, args.model, seed=args.seed)
    counts = {"backtrack": 0, "rise": 0, "rejection": 0}
    try:
        for i, q in enumerate(tqdm(problems, desc="beam search", unit="problem")):
            if q["id"] in done:
                continue
            nodes = beam_search(engine, engine.tokenizer, q["problem"], q["answer"], args.beam_width, args.rollouts,
                                args.max_depth, args.max_tokens, args.temperature, seed=args.seed + 104729 * i)
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
    rows = [{"prompt": backtrack_messages(problem), "completion": text} for problem, _, text in items]
    scores = score_backtracks(answer_prover(engine, cfg.m, cfg.prover_max_tokens, seed=cfg.seed + 2), items)
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
    d.add_argument("--model", required=True, help="the base model that samples steps (App. A: Llama-3.1-8B-Instruct)")
    d.add_argument("--train", default=os.path.join(prover.DATA_DIR, "math_train_4k.jsonl"), help="training problems (JSONL)")
    d.add_argument("--out", required=True, help="folder for backtrack.jsonl, rise.jsonl, rejection.jsonl")
    d.add_argument("--num-problems", type=int, default=None, help="the first N problems (default all)")
    d.add_argument("--beam-width", type=int, default=4, help="nodes kept per depth (default 4)")
    d.add_argument("--rollouts", type=int, default=8, help="rollouts per node: its success-rate estimate (default 8)")
    d.add_argument("--max-depth", type=int, default=12, help="deepest partial solution searched, in steps (default 12)")
    d.add_argument("--max-tokens", type=int, default=1024, help="tokens per rollout (Table 5: 1024)")
    d.add_argument("--temperature", type=float, default=1.0, help="rollout temperature (default 1.0)")
    d.add_argument("--per-problem", type=int, default=4, help="rows per problem in each dataset (default 4)")
    d.add_argument("--seed", type=int, default=0, help="sampling seed")
    prover.add_engine_args(d)

    r = sub.add_parser("rl", help="MRT-RL in this setting (App. A.1): GRPO on backtrack + revision, progress-adjusted reward")
    grpo.add_grpo_args(r)
    r.add_argument("--alpha", type=float, default=1.0, help="weight of the backtrack's progress r_prg(z_1) (0: GRPO)")
    r.add_argument("--prover-samples", type=int, default=4, help="m, answers forced after the kept steps (default 4)")
    r.add_argument("--prover-max-tokens", type=int, default=32, help="tokens per forced answer (default 32)")
    r.set_defaults(max_prompt_length=1500, max_completion_length=1024, lr=1e-6, beta=0.04)   # Table 5

    t = sub.add_parser("star", help="MRT-STaR in this setting (App. A.1): one iteration of on-policy traces, "
                                    "filtered by correctness and backtrack progress, then SFT")
    star.add_sft_args(t)
    t.add_argument("--train", default=os.path.join(prover.DATA_DIR, "math_train_4k.jsonl"), help="training problems (JSONL)")
    t.add_argument("--num-problems", type=int, default=None, help="the first N problems (default all)")
    t.add_argument("--rollouts", type=int, default=4, help="backtrack + revision samples per attempt (default 4)")
    t.add_argument("--max-tokens", type=int, default=1024, help="tokens per attempt and per continuation (default 1024)")
    t.add_argument("--temperature", type=float, default=0.9, help="sampling temperature (default 0.9)")
    t.add_argument("--m", type=int, default=4, help="answers forced after the kept steps, per backtrack (default 4)")
    t.add_argument("--prover-max-tokens", type=int, default=32, help="tokens per forced answer (default 32)")
    t.add_argument("--progress-threshold", type=float, default=None,
                   help="keep traces whose backtrack progress r_prg(z_1) >= this (MRT-STaR; e.g. 0.25); "
                        "unset: the STaR baseline, correct revisions only")
    t.set_defaults(max_seq_length=4096)   # Table 4
    prover.add_engine_args(t)

    f = sub.add_parser("fig15", help="Fig. 15 on the toy world: SFT loss of the Backtrack, RISE and rejection datasets")
    f.add_argument("--model", default=None, help="the model to fine-tune (default: the shipped toy warm start)")
    f.add_argument("--out", default="runs/fig15", help="folder for the datasets, SFT runs and fig15.json")
    f.add_argument("--beam-width", type=int, default=4, help="beam width (default 4)")
    f.add_argument("--rollouts", type=int, default=8, help="rollouts per node (default 8)")
    f.add_argument("--max-depth", type=int, default=10, help="deepest partial solution (default 10)")
    f.add_argument("--per-problem", type=int, default=4, help="rows per problem and dataset (default 4)")
    f.add_argument("--steps", type=int, default=100, help="SFT steps per dataset (default 100)")
    f.add_argument("--batch-size", type=int, default=16, help="SFT batch (default 16)")
    f.add_argument("--lr", type=float, default=5e-4, help="SFT learning rate (default 5e-4)")
    f.add_argument("--seed", type=int, default=0, help="seed")

    args = p.parse_args(argv)
    if args.command == "fig15":
        import toy
        args.model = args.model or toy.WARM_START_DIR
        policy.setup_distributed()
        try:
            fig15(args)
        finally:
            policy.teardown()
        return
    if args.command == "rl":
        args.thinking = "off"
        cfg = grpo.check_args(r, args)
        rank, _ = policy.setup_distributed()
        engine = None
        try:
            engine = grpo.rollout_engine(cfg, rank)
            rollout_fn, reward_fn, metrics_fn = backtrack_rl(cfg.alpha, cfg.prover_samples, cfg.prover_max_tokens)
            grpo.train(cfg, engine, reward_fn=reward_fn, rollout_fn=rollout_fn, metrics_fn=metrics_fn)
        finally:
            policy.teardown(engine)
        return
    if args.command == "star":
        args.thinking = "off"
        cfg = star.check_common(t, args)
        for flag in ("rollouts", "max_tokens", "m", "prover_max_tokens"):
            if getattr(cfg, flag) < 1:
                t.error(f"{prover.option_name(t, flag)} must be >= 1")
        try:
            problems = prover.load_problems(cfg.train)[:cfg.num_problems]
        except (OSError, ValueError) as e:
            t.error(f"--train: {e}")
        rank, _ = policy.setup_distributed()
        engine = None
        try:
            engine = prover.engine_from_args(cfg, cfg.model, seed=cfg.seed + rank)
            kept, scores = star_iteration(cfg, engine, problems, engine.tokenizer)
            print(f"kept {len(kept)} of {len(scores)} traces ({sum(s is not None for s in scores)} parsed)")
        finally:
            policy.teardown(engine)
        return
    for flag in ("beam_width", "rollouts", "max_depth", "max_tokens", "per_problem"):
        if getattr(args, flag) < 1:
            d.error(f"{prover.option_name(d, flag)} must be >= 1")
    if not os.path.isdir(args.model):
        d.error(f"--model: no such folder: {args.model}")
    try:
        prover.load_problems(args.train)
    except (OSError, ValueError) as e:
        d.error(f"--train: {e}")
    build_data(args)


if __name__ == "__main__":
    main()
