"""mrt_rl.py: Algorithm 2, MRT (RL), as the step function of grpo.py's loop.

    torchrun --nproc_per_node 8 mrt.py --model PATH          # runs it (mrt.py is the entry point)

The paper in the file's order (App. B.1, Algorithm 2; Sec. 6.2):
    line 3       pi_ref <- pi_theta at an iteration's first step     Algorithm2.start_iteration
    line 7       z ~ pi_ref(.|q), cut after j random episodes         sample_partial_rollouts, draw_prefix_episodes
    lines 8-9    G continuations z_{j:} ~ pi_theta(.|q, z_{0:j}) and  sample_on_shared_context
                 G forced terminations (mu, Eq. 4) on that context
    lines 10-11  A_i from r_i and r_prg,i = r_i - J_r(mu|q, z_{0:j})  progress_advantages (Eq. 3, --advantage
                                                                      progress), termination_baseline, joint_advantages
    Sec. 6.2     per-episode progress credit (--progress-credit      continuation_episodes, episode_bonuses,
                 episode): each episode's tokens get its progress     mu_at_episode_ends (mu with common random
                 (or an exact J_r: Algorithm2's oracle, the toy run)  numbers, or the oracle), episode_advantages
    one step     lines 3-11 in order                                  Algorithm2.__call__
The loss covers the sampled tokens only: z_{0:j} is context (Eq. 3's c_{j-1} ~ pi_old), never trained on.
Why every trace-level form updates as outcome GRPO does in expectation, and what per-episode credit changes:
the note above progress_advantages (the one place that argument is written out).

Imports: policy, episodes, grader, prover, grpo, flags. Imported by compare.py, mrt.py and backtrack.py.
"""

import json
import os
import random
import time
from dataclasses import dataclass

import policy
import episodes
import flags
import grader
import grpo
import prover

import torch
import torch.distributed as dist


# ==============================================================================================
# Line 7: partial rollouts z_{0:j} from pi_ref (sampled while the engine holds pi_ref, line 3)
# ==============================================================================================

def draw_prefix_episodes(k, rng, min_episodes=0):
    """Alg. 2 line 7, "j is selected randomly": j uniform over min_episodes..k-1 (the prefix keeps at
    least one episode back for the continuation; j = 0 is the empty prefix). A rollout with fewer
    than min_episodes + 1 episodes gets j = min(min_episodes, k)."""
    return rng.randint(min_episodes, k - 1) if k > min_episodes else min(min_episodes, k)


def sample_partial_rollouts(engine, per_step, cfg, iteration):
    """Alg. 2 lines 3 and 7: one pi_ref rollout per (step, prompt) of an iteration, cut after j of its k
    episodes: {step: [{"id", "j", "k", "prefix", "prefix_ids", "rollout_ids"}, ...]}. All of the
    iteration's rollouts go in one generate call."""
    tok = engine.tokenizer
    flat = [(s, i, q) for s, problems in per_step for i, q in enumerate(problems)]
    prompts = [prover.build_prompt(tok, q["problem"], thinking=cfg.thinking) for _, _, q in flat]
    outputs = engine.generate(prompts, n=1, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_completion_length,
                              seed=policy.sample_seed(cfg.seed, "partial_rollouts", iteration + 1))
    out = {s: [] for s, _ in per_step}
    for (s, i, q), (sample,) in zip(flat, outputs):
        stream, _ = episodes.reasoning_stream(sample.text, cfg.thinking, finished=sample.finish_reason == "stop")
        eps = episodes.split_episodes(stream, ends=cfg.episode_end)
        rng = random.Random(f"{cfg.seed}-{iteration}-{dist.get_rank()}-{s}-{i}")
        j = draw_prefix_episodes(len(eps), rng, cfg.min_prefix_episodes)
        prefix = "".join(eps[:j])
        out[s].append({"id": q["id"], "j": j, "k": len(eps), "prefix": prefix,
                       "prefix_ids": prover.prefix_token_ids(tok, sample.token_ids, prefix),
                       "rollout_ids": list(sample.token_ids)})   # the whole pi_ref sample, for the record
    return out


# ==============================================================================================
# Lines 8-9: continuations and forced terminations on one context q + z_{0:j}
# ==============================================================================================

def termination_seeds(cfg, step, prompts):
    """The seed of each prompt's G forced terminations at a step (vLLM seeds a request's G samples with
    consecutive seeds from it): given per prompt, so that both engines and mu's boundaries can share them."""
    base = policy.sample_seed(cfg.seed, "terminations", step + 1)
    return [base + i * cfg.num_generations for i in range(prompts)]


def sample_on_shared_context(engine, contexts, suffixes, budgets, cfg, step):
    """Alg. 2 lines 8-9 on one context q + z_{0:j} per prompt: G continuations z_{j:} ~ pi_theta(.|q, z_{0:j})
    and G forced terminations (the context + Fig. 22's suffix, then mu's answer). Returns (continuations,
    terminations, metrics), with vLLM's prompt tokens computed against the least possible."""
    cached_before = engine.prompt_stats() if hasattr(engine, "prompt_stats") else None
    if cached_before is not None:
        # vLLM schedules the G samples of a request together, and requests of one batch cannot hit
        # each other's cache; so first prefill each q + z_{0:j}, then each termination's suffix,
        # once (one token generated), and the G continuations and G terminations find them cached.
        engine.generate(contexts, n=1, temperature=0.0, max_tokens=1)
        engine.generate([c + s for c, s in zip(contexts, suffixes)], n=1, temperature=0.0, max_tokens=1)
    # ---- continuations z_{j:} ~ pi_theta(.|q, z_{0:j}) (line 8) ----------------------------------------
    t0 = time.time()
    continuations = engine.generate(contexts, n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p,
                                    max_tokens=budgets, seed=policy.sample_seed(cfg.seed, "rollouts", step + 1))
    # ---- forced terminations at z_{0:j} (line 9), on the same context: a prefix-cache hit ---------------
    t1 = time.time()
    terminations = engine.generate([c + s for c, s in zip(contexts, suffixes)], n=cfg.num_generations,
                                   temperature=cfg.temperature, top_p=cfg.top_p,
                                   max_tokens=cfg.prover_max_tokens, seed=termination_seeds(cfg, step, len(contexts)))
    metrics = {"seconds_continuations": (t1 - t0, 1), "seconds_terminations": (time.time() - t1, 1)}
    if cached_before is not None:
        after = engine.prompt_stats()
        computed = ((after["prompt_tokens"] - after["cached_prompt_tokens"])
                    - (cached_before["prompt_tokens"] - cached_before["cached_prompt_tokens"]))
        # the least possible: each q + z_{0:j} prefilled once, then each termination's suffix
        metrics["prompt_tokens_computed"] = (computed, 1)
        metrics["prompt_tokens_limit"] = (sum(map(len, contexts)) + sum(map(len, suffixes)), 1)
    return continuations, terminations, metrics


# ==============================================================================================
# Lines 10-11: the three advantage forms: per prompt, G continuation rewards r_i and G termination
# rewards; each returns the [B * G] advantages training uses
# ==============================================================================================

# Why Eq. 3 is fed to GRPO as two terms, and what each form optimises (the one place this is written out).
#
# Line 11 puts r_i + alpha * r_prg,i "in place of A_i". Fed to GRPO as a reward instead, it would be lost:
# J_r is one number per prompt, so (1 + alpha) r_i - alpha J_r is an affine map of r_i within a group and
# the group-normalised advantages would be outcome GRPO's. progress_advantages therefore takes Eq. 3's two
# terms each with its own estimator: A_i = GRPO's advantage of r_i (the outcome term) + alpha * (r_i - J_r)
# (the progress term, whose baseline is the terminations' J_r). The KL term (--beta > 0) stays anchored to
# the starting model, as in TRL; pi_ref here is the prefix sampler only.
#
# Even so, with one J_r per prompt r_i - J_r is a baseline-shifted outcome: E[(r_i - J_r) grad log pi(z_i)]
# = grad E[r]. All three forms below therefore update, in expectation, as outcome GRPO does (up to a positive
# scale, which Adam removes): test_mrt.py enumerates a tabular policy and finds the scales 1 - 1/G + alpha, 1
# and 1 - 1/(2G) against GRPO's 1 - 1/G. What the trace-level form changes is where continuations start (pi_ref's
# prefixes), and in the toy run that mattered: it cut uninformative tries against GRPO (README, prediction 3).
# Per-episode credit (Sec. 6.2, below) hands out the same total r - J_r(z_{0:j}) (its bonuses telescope), but puts
# each episode's share on that episode's tokens, which changes the direction.

def progress_advantages(continuation_rewards, termination_rewards, alpha, scale="std"):
    """Eq. 3 / Alg. 2 lines 10-11 as trained (--advantage progress, the default): the outcome term is
    GRPO's group advantage of r_i, the progress term alpha * r_prg,i = alpha * (r_i - J_r(mu | q, z_{0:j}))
    keeps the terminations as its baseline (the note above says why not one reward)."""
    r = [x for group in continuation_rewards for x in group]
    bonus = [x - prover.success_rate(t) for group, t in zip(continuation_rewards, termination_rewards) for x in group]
    group_size = len(continuation_rewards[0])
    return grpo.group_advantages(r, group_size, scale) + alpha * torch.tensor(bonus, dtype=torch.float32)


def termination_baseline(continuation_rewards, termination_rewards):
    """--advantage baseline, the official release's form: A_i = r_i - J_r(mu | q, z_{0:j}) (no group mean, no std)."""
    return torch.tensor([x - prover.success_rate(t) for group, t in zip(continuation_rewards, termination_rewards)
                         for x in group], dtype=torch.float32)


def joint_advantages(continuation_rewards, termination_rewards, scale="std"):
    """--advantage joint (Fig. 6): one GRPO group of the G continuations and the G terminations of a
    prompt, [B * 2G] in that order, every sequence trained on."""
    joint = [c + t for c, t in zip(continuation_rewards, termination_rewards)]
    return grpo.group_advantages([x for group in joint for x in group], len(joint[0]), scale)


# ==============================================================================================
# Sec. 6.2's per-episode reward (--progress-credit episode): each episode's tokens get its own progress
# ==============================================================================================
#
# Not Algorithm 2 as written. Each continuation is cut into its episodes z_j .. z_{k-1}, mu scores the end of
# every one (m = G, the prefix cache shares q + z_{0:j}), and token t gets GRPO's advantage of r_i + alpha *
# the progress of its episode. Choices the paper leaves open, and ours:
#     credit      an episode's own progress J_r(after) - J_r(before) (Def. 6.1, Sec. 6.2's "segment of tokens
#                 spanning a particular episode"), not a return-to-go: the sum of later progress telescopes
#                 to J_r(end) - J_r(before), which pays a re-try for what later episodes find.
#     the answer  the tokens after the thought get r - J_r(mu | q, z_{0:k}): the answer's own progress, so
#                 that the bonuses sum to the trace form's r - J_r(mu | q, z_{0:j}).
#     scale       raw progress, times alpha, beside the std-normalised outcome advantage: progress is a
#                 difference of probabilities on the reward's own scale; dividing by a batch std inflates
#                 tiny differences (a simulation of the toy world learned never to stop).
#     truncation  no progress credit at all in a response cut at the budget (mu is not even asked).

def continuation_episodes(tokenizer, sample, prefix, thinking, episode_end=None):
    """The episodes z_j .. z_{k-1} a continuation wrote after the partial rollout z_{0:j} = `prefix`
    (episodes.py's segmentation of its thought), with the token where each one ends.

    Returns (thought_prefixes, ends, closed): thought_prefixes[i] = z_{0:j} + z_j .. z_{j+i}, the
    context mu answers from after the continuation's episode i; ends[i] = the number of the sample's
    tokens that spell episodes z_j .. z_{j+i} (tokens after ends[-1] are the answer); closed = the
    thought (or, with thinking=False, the response) ended within the budget."""
    full = prefix + sample.text
    stream, closed = episodes.reasoning_stream(full, thinking, finished=sample.finish_reason == "stop")
    kept = prefix if stream.startswith(prefix) else ""   # "": the continuation reopened a thought of its own
    start = full.find(stream) if stream else len(full)   # where the stream starts in prefix + text
    ends, thought_prefixes, text = [], [], kept
    offset = start + len(kept) - len(prefix)             # where the continuation's episodes start in sample.text
    for ep in episodes.split_episodes(stream[len(kept):], ends=episode_end):
        text += ep
        offset += len(ep)
        thought_prefixes.append(text)
        # the shortest run of the sample's own tokens that spells the text up to this episode's end
        ends.append(prover.shortest_decoding_prefix(tokenizer, sample.token_ids, offset))
    return thought_prefixes, ends, closed


def episode_bonuses(start_rate, success_rates, reward, truncated):
    """Per-episode credit (Sec. 6.2, "provided to the segment of tokens spanning a particular episode"):
    [r_prg(z_j; c_{j-1}), ..., r_prg(z_{k-1}; c_{k-2}), r - J_r(mu | x, z_{0:k})], one value per episode
    of the continuation (Def. 6.1: J_r after it minus J_r before it; start_rate is J_r(mu | x, z_{0:j})
    at the partial rollout) and a last one for the answer after the thought (the answer's own
    progress: its reward against what mu would have answered there). The values sum to
    r - J_r(mu | x, z_{0:j}), the trace-level bonus of Alg. 2: the two credits hand out the same total,
    the trace form on every token, this one on the segment that earned it. A truncated response gets
    no progress credit at all (all 0): an episode that ends inside the budget would otherwise be paid
    although the answer it leads to is cut off (reward hacking at the budget edge)."""
    rates = [start_rate] + list(success_rates)
    if truncated:
        return [0.0] * (len(rates))
    per_episode, _ = prover.progress(rates)
    return per_episode + [reward - rates[-1]]


def episode_token_credit(bonuses, ends, length):
    """The per-token bonus of one continuation of `length` tokens: bonuses[i] on the tokens of segment i
    (segment i ends at ends[i]; the last segment, the answer, runs to the end)."""
    credit, start = [], 0
    for bonus, end in zip(bonuses, list(ends) + [length]):
        end = max(start, min(end, length))
        credit += [bonus] * (end - start)
        start = end
    return credit


def episode_advantages(continuation_rewards, bonuses, token_ends, lengths, alpha, scale="std"):
    """--progress-credit episode: A_{i,t} = GRPO's group advantage of r_i + alpha * (the progress of the
    segment holding token t). continuation_rewards [B][G]; bonuses, token_ends, lengths [B * G] (per
    continuation: episode_bonuses, continuation_episodes' ends, its number of tokens). Returns N lists
    of per-token advantages (grpo.Rollout's dense form)."""
    r = [x for group in continuation_rewards for x in group]
    outcome = grpo.group_advantages(r, len(continuation_rewards[0]), scale).tolist()
    return [[a + alpha * c for c in episode_token_credit(b, e, n)]
            for a, b, e, n in zip(outcome, bonuses, token_ends, lengths)]


def mu_at_episode_ends(engine, problems, partial, continuations, continuation_rewards, termination_rewards, cfg, step,
                       oracle=None):
    """--progress-credit episode: mu (Eq. 4: the model's own forced termination, m = G samples at the
    rollout temperature, as the G terminations behind J_r(mu | q, z_{0:j})) at the end of every episode
    of every continuation that was not truncated, in one MetaProver call (each continuation's prompts
    share q + z_{0:j} + its own tokens: vLLM's prefix cache computes them once). Common random numbers:
    every boundary of every continuation of prompt i is sampled with the seed of prompt i's terminations,
    so sample k at each boundary and the k-th termination share their random draws, and a difference of
    J_r (an episode's progress) carries less of mu's sampling noise.
    oracle(q, thought prefix) -> J_r, when given, replaces mu (and the terminations' J_r at z_{0:j}) with
    an exact success rate (the toy world's scripted one): the same credit without the estimator's noise.
    Returns (bonuses, token ends, metrics): per continuation, episode_bonuses and continuation_episodes' ends."""
    tok = engine.tokenizer
    t0 = time.time()
    flat_r = [r for group in continuation_rewards for r in group]
    if oracle is None:
        start_rates = [prover.success_rate(t) for t, group in zip(termination_rewards, continuation_rewards)
                       for _ in group]                                              # J_r(mu | q, z_{0:j})
    else:
        start_rates = [oracle(q, p["prefix"]) for q, p, group in zip(problems, partial, continuations) for _ in group]
    items, traces, seeds = [], [], []   # items: per continuation (thought prefixes, token ends, truncated, index in traces)
    prompt_seeds = termination_seeds(cfg, step, len(problems))
    for i, (q, p, group) in enumerate(zip(problems, partial, continuations)):
        for s in group:
            thought_prefixes, ends, _ = continuation_episodes(tok, s, p["prefix"], cfg.thinking, cfg.episode_end)
            cut = s.finish_reason == "length"
            asked = bool(thought_prefixes) and not cut   # a truncated continuation earns no progress: mu is not asked
            items.append((thought_prefixes, ends, cut, len(traces) if asked else None))
            if asked:
                traces.append((q, thought_prefixes, p["prefix_ids"] + list(s.token_ids)))
                seeds.append(prompt_seeds[i])
    if oracle is None:
        mu = prover.MetaProver(engine, m=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p,
                               max_tokens=cfg.prover_max_tokens, thinking=cfg.thinking)
        scores = mu.score([(q["problem"], q["answer"], tp, ids) for q, tp, ids in traces], seeds=seeds)
        rates_of = [score.success_rates for score in scores]
        mu_tokens = sum(n for score in scores for row in score.num_tokens for n in row)
    else:
        rates_of = [[oracle(q, tp) for tp in thought_prefixes] for q, thought_prefixes, _ in traces]
        mu_tokens = 0
    bonuses, ends = [], []
    for (thought_prefixes, e, cut, trace), r, start_rate in zip(items, flat_r, start_rates):
        rates = rates_of[trace] if trace is not None else [start_rate] * len(thought_prefixes)
        bonuses.append(episode_bonuses(start_rate, rates, r, cut))
        ends.append(e)
    per_episode = [b for (_, _, cut, _), bs in zip(items, bonuses) if not cut for b in bs[:-1]]
    metrics = {"mu_prefixes": (sum(len(t[2]) for t in traces), 1), "mu_tokens": (mu_tokens, 1),
               "seconds_mu": (time.time() - t0, 1),
               "episode_progress": (sum(per_episode), max(len(per_episode), 1)),
               "episodes_without_progress": (sum(b <= 0 for b in per_episode), max(len(per_episode), 1))}
    return bonuses, ends, metrics


def step_metrics(partial, continuations, continuation_rewards, termination_rewards):
    """What a step logs beyond GRPO's own: {name: (sum, count)}, means over ranks."""
    n = len(partial)
    j_r = [prover.success_rate(t) for t in termination_rewards]
    bonus = [r - jr for c, jr in zip(continuation_rewards, j_r) for r in c]
    lengths = [s.num_tokens for g in continuations for s in g]
    return {"prefix_j": (sum(p["j"] for p in partial), n), "prefix_k": (sum(p["k"] for p in partial), n),
            "j_r_prefix": (sum(j_r), n), "continuation_reward": (sum(map(sum, continuation_rewards)), len(bonus)),
            "progress_bonus": (sum(bonus), len(bonus)),
            "terminations_all_succeed": (sum(min(t) == 1.0 for t in termination_rewards), n),
            "terminations_all_fail": (sum(max(t) == 0.0 for t in termination_rewards), n),
            "continuation_length": (sum(lengths), len(lengths))}


# ==============================================================================================
# Algorithm 2, one step at a time (grpo.train calls it once per step, on every rank)
# ==============================================================================================

@dataclass
class Iteration:
    """One iteration of Algorithm 2 (lines 2-12): its index and pi_ref's partial rollouts for each of its
    steps, sampled at its first step (line 3) or read back on --resume."""
    index: int
    partial_rollouts: dict          # step -> [{"id", "j", "k", "prefix", "prefix_ids", "rollout_ids"}] (line 7)
    seconds_sampling: float = 0.0   # logged once, by the step that sampled them


class Algorithm2:
    """Algorithm 2 (MRT-RL, App. B.1) as grpo.train's step function: algorithm(engine, problems, cfg, step)
    -> grpo.Rollout, with `problems` this rank's prompts at `step`. It holds the current Iteration."""

    def __init__(self, cfg, tokenizer, oracle=None):
        self.problems, self.total_steps = grpo.training_problems(cfg, tokenizer)
        self.oracle = oracle   # --progress-credit episode: an exact J_r(q, thought prefix) in place of mu (toy world)
        self.steps_per_iteration = cfg.steps_per_iteration or self.total_steps
        self.iteration = None

    def start_iteration(self, engine, cfg, index):
        """Line 3, pi_ref <- pi_theta: at the iteration's first step the engine still holds pi_theta, so
        one rollout per prompt of every step of the iteration, cut at j (line 7), is an exact pi_ref
        sample, with no second engine. They are saved, so a resumed run reads the same ones back."""
        path = os.path.join(cfg.out, "prefixes", f"iter_{index}.rank{dist.get_rank()}.json")
        if cfg.resume and os.path.exists(path):
            with open(path) as f:
                return Iteration(index, {int(s): rows for s, rows in json.load(f).items()})
        t0 = time.time()
        steps = range(index * self.steps_per_iteration, min((index + 1) * self.steps_per_iteration, self.total_steps))
        partial = sample_partial_rollouts(engine, [(s, grpo.step_problems(self.problems, cfg, s)) for s in steps],
                                          cfg, index)
        policy.write_atomic(path, json.dumps(partial))
        return Iteration(index, partial, time.time() - t0)

    def __call__(self, engine, problems, cfg, step):
        tok = engine.tokenizer
        # ---- line 3: a new iteration begins with pi_ref <- pi_theta ---------------------------------------
        index = step // self.steps_per_iteration
        if self.iteration is None or self.iteration.index != index:
            self.iteration = self.start_iteration(engine, cfg, index)
        # ---- line 7: this step's partial rollouts z_{0:j} ~ pi_ref -----------------------------------------
        if step not in self.iteration.partial_rollouts:
            done = self.iteration.partial_rollouts
            raise ValueError(f"--resume: iteration {index} sampled pi_ref's prefixes for steps {min(done)}-{max(done) + 1} "
                             f"only, not step {step + 1}: resume with the run's --max-steps and --steps-per-iteration "
                             f"(a run meant to grow takes --steps-per-iteration K)")
        partial = self.iteration.partial_rollouts[step]
        assert [p["id"] for p in partial] == [q["id"] for q in problems], "partial rollouts out of step with the data"
        contexts = [prover.build_prompt(tok, q["problem"], thinking=cfg.thinking) + p["prefix_ids"]
                    for q, p in zip(problems, partial)]
        suffixes = [tok.encode(prover.time_is_up_suffix(p["prefix"], cfg.thinking), add_special_tokens=False)
                    for p in partial]
        # ---- lines 8-9: G continuations and G forced terminations on q + z_{0:j} ---------------------------
        # the partial rollout and its continuation share the response budget, as one rollout would
        budgets = [cfg.max_completion_length - len(p["prefix_ids"]) for p in partial]
        continuations, terminations, metrics = sample_on_shared_context(engine, contexts, suffixes, budgets, cfg, step)
        # ---- grade: r(x, z) of every continuation, and of every termination (an answer after a closed thought)
        t0 = time.time()
        continuation_rewards = [[0.0 if cfg.zero_truncated and s.finish_reason == "length"
                                 else grader.reward(s.text, q["answer"], thinking=cfg.thinking) for s in group]
                                for q, group in zip(problems, continuations)]
        termination_rewards = [[grader.reward(s.text, q["answer"], thinking=False) for s in group]
                               for q, group in zip(problems, terminations)]
        # ---- lines 10-11: advantages, one of Eq. 3's forms (or Sec. 6.2's per-episode credit) --------------
        if cfg.progress_credit == "episode":
            bonuses, ends, credit_metrics = mu_at_episode_ends(engine, problems, partial, continuations,
                                                               continuation_rewards, termination_rewards, cfg, step,
                                                               self.oracle)
            advantages = episode_advantages(continuation_rewards, bonuses, ends,
                                            [s.num_tokens for g in continuations for s in g], cfg.alpha, cfg.scale_rewards)
            metrics.update(credit_metrics)
        elif cfg.advantage == "progress":
            advantages = progress_advantages(continuation_rewards, termination_rewards, cfg.alpha, cfg.scale_rewards)
        elif cfg.advantage == "baseline":
            advantages = termination_baseline(continuation_rewards, termination_rewards)
        elif cfg.advantage == "joint":
            advantages = joint_advantages(continuation_rewards, termination_rewards, cfg.scale_rewards)
        else:
            raise ValueError(f"--advantage must be progress, baseline or joint, got {cfg.advantage!r}")
        # ---- the step's record, and the rollout grpo.train trains on ----------------------------------------
        metrics.update(step_metrics(partial, continuations, continuation_rewards, termination_rewards))
        metrics["accuracy"] = metrics["continuation_reward"]   # joint trains on terminations too: grade continuations
        metrics["seconds_prefixes"] = (self.iteration.seconds_sampling, 1)   # on the step that sampled them
        self.iteration.seconds_sampling = 0.0
        seconds_score = time.time() - t0
        if cfg.advantage == "joint":   # the terminations are trained on too, each on its own context
            both = [c + t for c, t in zip(continuation_rewards, termination_rewards)]
            return grpo.flatten_groups(
                [[c] * len(g) + [c + s] * len(h) for c, s, g, h in zip(contexts, suffixes, continuations, terminations)],
                [list(g) + list(h) for g, h in zip(continuations, terminations)], advantages, both, both, metrics,
                seconds_score)
        return grpo.flatten_groups(contexts, continuations, advantages, continuation_rewards, continuation_rewards,
                                   metrics, seconds_score)


# ==============================================================================================
# Flags
# ==============================================================================================

def add_algorithm_2_args(p):
    """Algorithm 2's own flags, on top of grpo.add_grpo_args."""
    p.add_argument("--advantage", choices=("progress", "baseline", "joint"), default="progress",
                   help="how the G forced terminations enter: progress (Alg. 2 / Eq. 3, default), baseline "
                        "(advantage r - J_r), joint (one GRPO group with the terminations); see mrt_rl.py")
    p.add_argument("--progress-credit", choices=("trace", "episode"), default="trace",
                   help="where the progress bonus goes (Sec. 6.2): trace (default, Alg. 2 as written: alpha * "
                        "(r - J_r) on every token of a continuation) or episode (each episode's tokens get alpha * "
                        "its own progress, Def. 6.1, with mu at every episode boundary; the answer gets r - J_r "
                        "at the end of the thought; nothing in a truncated response); needs --advantage progress")
    p.add_argument("--alpha", type=flags.nonnegative_float, default=1.0,
                   help="weight of the progress bonus in r + alpha * r_prg (the paper gives no value; the authors' "
                        "fork swept 0 to 1.6; default 1.0)")
    p.add_argument("--steps-per-iteration", type=flags.nonnegative_int, default=0,
                   help="steps between pi_ref <- pi_theta refreshes (Alg. 2 line 3; default 0: one iteration, the "
                        "partial rollouts all from the starting model, as in the authors' fork)")
    p.add_argument("--min-prefix-episodes", type=flags.nonnegative_int, default=0,
                   help="the smallest j drawn for a partial rollout (default 0: the empty prefix is allowed)")
    flags.add_prover(p, samples=None, max_tokens=4096, temperature=False)   # m = G: the terminations are a group


def add_args(p):
    """MRT-RL's flags: GRPO's (Table 3 defaults) and Algorithm 2's."""
    grpo.add_grpo_args(p)
    add_algorithm_2_args(p)


def check_args(p, cfg):
    """grpo.check_args; an engine context not given also holds a forced termination (suffix and answer)."""
    given = cfg.max_model_len
    if cfg.progress_credit == "episode" and cfg.advantage != "progress":
        p.error(f"--progress-credit episode replaces the progress term of --advantage progress; "
                f"it does not combine with --advantage {cfg.advantage}")
    cfg = grpo.check_args(p, cfg)
    if given is None:
        cfg.max_model_len += 256 + cfg.prover_max_tokens
    return cfg


def config(**values):
    """MRT-RL's config from Python: the flags of add_args by name, checked as on the command line."""
    return flags.config(add_args, check_args, **values)
