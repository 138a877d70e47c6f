"""backtrack.py: the backtracking-search setting of App. A: warm-start SFT data (App. A.2, Fig. 14).

    python backtrack.py data --model PATH --train data/math_train_4k.jsonl --out runs/backtrack_data

In this setting there is no <think> block: a response is an attempt z_0 ("Step 1: ...", ...,
"Answer: ..."), a backtrack episode z_1 (episodes.BACKTRACK_MARKER and a short note), and a revised
attempt z_2 that restarts at some "Step k:" (the Fig. 30 format that episodes.parse_backtrack reads).
A base model almost never writes backtracks, so MRT starts from a warm start built here, per
training problem:

    beam_search        a step-level beam search against the 0/1 outcome reward, each partial solution's
                       success rate estimated by rollouts from it (rollouts in place of a PRM)
    backtrack_trace    a failed attempt, the marker, a backtrack to the prefix node with the highest
                       estimated success rate, and a correct completion from that node ("Backtrack")
    rise_trace         an arbitrary wrong attempt stitched to a correct solution from scratch ("RISE")
    rejection rows     correct solutions alone ("rejection sampling", STaR)

The three datasets are JSONL in star.py sft's format (problem, completion), so that the Fig. 15
training-loss comparison runs with `star.py sft --data ... --thinking off`.
"""

import argparse
import json
import os
import random
from dataclasses import dataclass, field

import episodes
import prover


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
    be) whose estimated success rate is highest; on a
    tie, the deepest (the most of the attempt is kept). Returns j, or None if no prefix qualifies."""
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
    each row {"problem", "completion"}; at most per_problem rows each."""
    found = solutions(nodes)
    wrong = [(s, a) for s, a, r in found if r == 0 and s]
    right = [(s, a) for s, a, r in found if r > 0 and s]
    rng.shuffle(wrong)
    rng.shuffle(right)
    rows = {"backtrack": [], "rise": [], "rejection": []}
    for steps, answer in wrong:
        trace = backtrack_trace(nodes, steps, answer, rng)
        if trace is not None and len(rows["backtrack"]) < per_problem:
            rows["backtrack"].append(trace)
    if right:
        rows["rise"] = [rise_trace(w, rng.choice(right)) for w in wrong[:per_problem]]
        rows["rejection"] = [episodes.format_attempt(*r) for r in right[:per_problem]]
    return {name: [{"problem": problem, "completion": c} for c in texts] for name, texts in rows.items()}


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
    args = p.parse_args(argv)
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
