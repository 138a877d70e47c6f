"""grpo.py: a hand-written FSDP2 GRPO loop with colocated rollouts and in-place weight sync.

    torchrun --nproc_per_node 8 grpo.py --model PATH --train data/aime_1983_2023.jsonl --train-years 1989-2023 --out runs/grpo
    python grpo.py --model PATH --train ... --batch-size 8 --num-generations 4 ...   # one process (CPU ok)

The outcome-reward RL baseline of the paper (Table 1 "outcome-reward RL (GRPO)", Sec. 3, 7.1, 8.1)
and the loop that MRT's RL variant (mrt_rl.py, Algorithm 2) plugs its step function into. Defaults are
Table 3's (App. B.2). Every step, top to bottom:

    generate   each rank samples G completions for its share of the prompts on its own engine
    score      rewards r(x, z) (or a pluggable reward), GRPO group advantages
    train      token log-probs under the FSDP2 policy, clipped ratio loss, gradient accumulation
               over token-budgeted micro-batches, clip, AdamW, cosine schedule
    sync       the new weights stream into every rank's engine, one parameter at a time

Loss aggregation (--loss-agg): "token-mean" averages the per-token loss over every completion token
of the global batch (long and short completions weigh the same per token, as in DAPO); "seq-mean"
averages each completion's tokens first, then the completions (the original GRPO).

Imports: policy (process group, FSDP2 policy, micro-batches, optimizer, checkpoints, weight sync),
prover (prompts, engines), grader (r(x, z)), flags (the shared command-line flags).
"""

import argparse
import math
import os
import random
import time
import typing
from dataclasses import dataclass, field

import policy
import flags
import grader
import machine
import prover
from policy import all_sum, device

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import AutoConfig, AutoTokenizer


# ==============================================================================================
# The objective
# ==============================================================================================

def group_advantages(rewards, group_size, scale="std", eps=1e-4):
    """GRPO advantages: each reward minus the mean of its group of G samples of the same prompt,
    divided by the group's standard deviation (scale="std", as in DeepSeekMath) or not ("none",
    as in Dr. GRPO). A group whose rewards are all equal gets advantage 0 (no NaN).

    rewards: [B * G] (groups contiguous) -> advantages [B * G].
    """
    r = torch.as_tensor(rewards, dtype=torch.float32)
    if r.numel() % group_size:
        raise ValueError(f"group_advantages: {r.numel()} rewards do not split into groups of {group_size}")
    groups = r.view(-1, group_size)                                   # [B, G]
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale == "std":
        std = groups.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(groups[:, :1])
        centered = centered / (std + eps)
    elif scale != "none":
        raise ValueError(f"group_advantages: scale must be 'std' or 'none', got {scale!r}")
    return centered.view(-1)


def grpo_loss(logp, old_logp, advantages, mask, eps_low=0.2, eps_high=0.2, beta=0.0, ref_logp=None,
              loss_agg="token-mean", num_tokens=None, num_seqs=None):
    """The clipped GRPO surrogate, summed over this micro-batch and divided by the global batch size.

    logp, old_logp, ref_logp, mask: [N, T] over completion tokens; advantages: [N] (one per sequence,
    the same for each of its tokens) or [N, T] (one per token: dense credit, zero off the mask).
    Per token: -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A), ratio = pi / pi_old
    (eps_high > eps_low is DAPO's clip-higher), plus beta * KL(pi || pi_ref) with the k3 estimator
    exp(ref - logp) - (ref - logp) - 1. token-mean divides the masked sum by num_tokens (every
    completion token of the global batch); seq-mean divides each sequence by its own length, then
    by num_seqs. Passing the global counts makes micro-batches and ranks add up to the full-batch
    loss. Returns (loss, stats) with the clip fraction and the mean KL over these tokens.
    """
    mask = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)
    a = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages   # [N, 1] or [N, T]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * a)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if beta > 0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1
        per_token = per_token + beta * kl
    if loss_agg == "token-mean":
        total = num_tokens if num_tokens is not None else mask.sum()
        loss = (per_token * mask).sum() / total
    elif loss_agg == "seq-mean":
        total = num_seqs if num_seqs is not None else logp.shape[0]
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).sum() / total
    else:
        raise ValueError(f"grpo_loss: loss_agg must be 'token-mean' or 'seq-mean', got {loss_agg!r}")
    with torch.no_grad():
        clipped = ((ratio < 1 - eps_low) & (a < 0)) | ((ratio > 1 + eps_high) & (a > 0))
        n = mask.sum().clamp(min=1)
        stats = {"clip_fraction": float((clipped.to(mask.dtype) * mask).sum() / n),
                 "kl": float((kl * mask).sum() / n)}
    return loss, stats


# ==============================================================================================
# Rewards (pluggable: a function of (problems, groups) -> rewards per group)
# ==============================================================================================

def outcome_reward(problems, groups, cfg=None):
    """r(x, z) in {0, 1} per completion (Sec. 3). A completion cut at the length limit is graded like
    any other, as in the paper's codebase (open-r1 / TRL of early 2025) and as evaluate.py grades it
    (a cut thought has no answer anyway); cfg.zero_truncated gives it 0 instead."""
    thinking = cfg.thinking if cfg is not None else True
    zero_truncated = getattr(cfg, "zero_truncated", False)
    return [[0.0 if zero_truncated and s.finish_reason == "length" else grader.reward(s.text, q["answer"], thinking=thinking)
             for s in group] for q, group in zip(problems, groups)]


def length_penalty_reward(problems, groups, cfg):
    """The length-penalty baseline of Table 1, Arora & Zanette (2025), "Training Language Models to
    Reason Efficiently", Sec. 3: r(x, y) = 1{y correct} * (1 - alpha * sigmoid((len(y) - mean(x)) / std(x))),
    where mean(x) and std(x) are over the lengths of the correct completions of prompt x (here its G
    samples). Shorter-than-average correct completions get more than 1 - alpha/2, longer ones less,
    wrong ones 0. Their alpha is in [0, 1) (they report 0.05 to 0.4); std is the population std, and
    a prompt with one correct completion (std 0) gives it 1 - alpha/2.
    """
    rewards = []
    for group, correct in zip(groups, outcome_reward(problems, groups, cfg)):
        lengths = [s.num_tokens for s, c in zip(group, correct) if c]
        mean = sum(lengths) / len(lengths) if lengths else 0.0
        std = math.sqrt(sum((n - mean) ** 2 for n in lengths) / len(lengths)) if lengths else 0.0
        z = [(s.num_tokens - mean) / std if std > 0 else 0.0 for s in group]  # |z| <= sqrt(G - 1)
        rewards.append([c * (1.0 - cfg.length_penalty_alpha / (1.0 + math.exp(-zi))) for zi, c in zip(z, correct)])
    return rewards


REWARDS = {"outcome": outcome_reward, "length-penalty": length_penalty_reward}


# ==============================================================================================
# A step's rollouts
# ==============================================================================================

@dataclass
class Rollout:
    """One rank's share of a step, as a step function returns it and train_step trains on it.

    Every list has one entry per trained sequence (N of them). advantages is a [N] tensor (one per
    sequence) or a list of N per-token lists, each as long as its completion (dense credit).
    """
    prompts: list                 # [N] token ids of each sequence's context (the prompt, or prompt + prefix)
    completions: list             # [N] token ids of each completion: what the loss is taken over
    advantages: typing.Any        # [N] tensor, or N lists of per-token advantages
    rewards: list = field(default_factory=list)     # [N] the reward each sequence was scored with (logged)
    truncated: list = field(default_factory=list)   # [N] cut at the length limit
    correct: list = field(default_factory=list)     # [N] r(x, z) in {0, 1} (logged as accuracy)
    metrics: dict = field(default_factory=dict)     # {name: (sum, count)} on this rank: see mean_over_ranks
    seconds_score: float = 0.0    # of the step function's time, what grading and advantages took (the rest
                                  # is logged as seconds_generate)


def mean_over_ranks(metrics):
    """A step's own measurements, logged as means over the whole batch: each rank reports {name: (sum,
    count)} for its share (a mean needs both: ranks can hold different numbers of traces, prefixes or
    episodes), and the logged value is the sum over ranks divided by the count over ranks (a collective:
    every rank calls it with the same names)."""
    if not metrics:
        return {}
    totals = all_sum(*[v for pair in metrics.values() for v in pair])
    return {name: totals[2 * i] / max(totals[2 * i + 1], 1) for i, name in enumerate(metrics)}


def flatten_groups(contexts, groups, advantages, rewards, correct, metrics=None, seconds_score=0.0):
    """A Rollout from per-prompt results: contexts[b] is one prompt's ids (shared by its group) or a
    list of ids per sample; groups[b] its samples; rewards and correct per group; advantages [N]."""
    per_sample = [ctx if ctx and isinstance(ctx[0], list) else [ctx] * len(group) for ctx, group in zip(contexts, groups)]
    return Rollout(prompts=[p for ps in per_sample for p in ps],
                   completions=[list(s.token_ids) for group in groups for s in group],
                   advantages=advantages, rewards=[r for group in rewards for r in group],
                   truncated=[s.finish_reason == "length" for group in groups for s in group],
                   correct=[c for group in correct for c in group], metrics=metrics or {}, seconds_score=seconds_score)


def token_advantages(advantages, indices, comp):
    """The [n, T] advantages of one micro-batch: per-sequence ones broadcast by grpo_loss, per-token
    ones laid on the completion mask comp [n, T] (pad_sequences' layout: a completion is one run of
    True per row)."""
    if isinstance(advantages, torch.Tensor):
        return advantages[indices] if indices else torch.zeros(1, device=device())
    out = torch.zeros(comp.shape, dtype=torch.float32, device=comp.device)
    for row, i in enumerate(indices):
        out[row, comp[row]] = torch.as_tensor(advantages[i], dtype=torch.float32, device=comp.device)
    return out


# ==============================================================================================
# One optimizer step (used by the loop and by the tests)
# ==============================================================================================

def train_step(model, optimizer, scheduler, rollout, cfg, pad_id, ref_model=None):
    """cfg.ppo_epochs passes of the clipped loss over this rank's rollout, each ending with a
    gradient-norm clip and an AdamW step. Returns the step's metrics."""
    lengths = [len(p) + len(c) for p, c in zip(rollout.prompts, rollout.completions)]
    num_tokens, num_seqs = all_sum(sum(len(c) for c in rollout.completions), len(rollout.completions))
    batches = policy.rank_micro_batches(lengths, cfg.micro_batch_tokens, getattr(cfg, "pack_sequences", False))
    world = dist.get_world_size()
    advantages = rollout.advantages
    if isinstance(advantages, torch.Tensor):
        advantages = advantages.to(device())
    elif any(len(a) != len(c) for a, c in zip(advantages, rollout.completions)):
        raise ValueError("train_step: a per-token advantage list must be as long as its completion")

    def forward(net, rows):   # -> log-probs [n, T-1] and completion mask of the micro-batch's sequences
        return policy.sequence_logprobs(net, rows, rollout.prompts, rollout.completions, pad_id)

    # old log-probs (pi_old = the policy that sampled) and reference log-probs, once per step
    old, ref = {}, {}
    if cfg.ppo_epochs > 1 or cfg.beta > 0:
        with torch.no_grad():
            for b, rows in enumerate(batches):
                if cfg.ppo_epochs > 1:
                    old[b] = forward(model, rows)[0]
                if cfg.beta > 0:
                    ref[b] = forward(ref_model, rows)[0]
    stats = {"clip_fraction": 0.0, "kl": 0.0, "loss": 0.0}
    grad_norm = 0.0
    for _ in range(cfg.ppo_epochs):
        optimizer.zero_grad(set_to_none=True)
        for b, rows in enumerate(batches):
            indices = [i for row in rows for i in row]
            logp, comp = forward(model, rows)
            old_logp = old[b] if cfg.ppo_epochs > 1 else logp.detach()
            adv = token_advantages(advantages, indices, comp)
            loss, s = grpo_loss(logp, old_logp, adv, comp, cfg.epsilon, cfg.epsilon_high, cfg.beta,
                                ref.get(b), cfg.loss_agg, num_tokens=num_tokens, num_seqs=num_seqs)
            if not indices:
                loss = loss * 0.0   # an empty micro-batch only keeps the collectives in step
            # FSDP averages gradients over ranks; the loss is already divided by the global count,
            # so scale by the world size to make the average a sum.
            (loss * world).backward()
            if indices:
                weight = comp.sum().item() / max(num_tokens, 1)
                stats["clip_fraction"] += s["clip_fraction"] * weight / cfg.ppo_epochs
                stats["kl"] += s["kl"] * weight / cfg.ppo_epochs
            stats["loss"] += loss.item() / cfg.ppo_epochs
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
        grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else float(grad_norm)
        optimizer.step()
    scheduler.step()
    clip_fraction, kl, loss = all_sum(stats["clip_fraction"], stats["kl"], stats["loss"])
    return {"clip_fraction": clip_fraction, "kl": kl, "loss": loss, "grad_norm": grad_norm, "completion_tokens": num_tokens}


# ==============================================================================================
# The step function: generate and score one step's rollouts (mrt_rl.py and backtrack.py bring their own)
# ==============================================================================================

def sample_rollout(engine, problems, cfg, step):
    """G completions z ~ pi(.|x) per problem, on this rank's engine: (prompt ids per problem, samples
    per problem)."""
    prompts = [prover.build_prompt(engine.tokenizer, q["problem"], thinking=cfg.thinking) for q in problems]
    groups = engine.generate(prompts, n=cfg.num_generations, temperature=cfg.temperature, top_p=cfg.top_p,
                             max_tokens=cfg.max_completion_length, seed=policy.sample_seed(cfg.seed, "rollouts", step + 1))
    return prompts, groups


def reward_step(reward_fn):
    """GRPO's step function (Sec. 3, App. B.1) for a reward reward_fn(problems, groups, cfg) -> rewards per
    group: G completions per prompt, their rewards, group advantages. A step function takes (engine, this
    rank's problems, cfg, step) and returns a Rollout: what the loop trains on and logs."""
    def step_fn(engine, problems, cfg, step):
        prompts, groups = sample_rollout(engine, problems, cfg, step)
        t0 = time.time()
        rewards = reward_fn(problems, groups, cfg)
        correct = rewards if reward_fn is outcome_reward else outcome_reward(problems, groups, cfg)
        advantages = group_advantages([r for group in rewards for r in group], cfg.num_generations, cfg.scale_rewards)
        return flatten_groups(prompts, groups, advantages, rewards, correct, seconds_score=time.time() - t0)
    return step_fn


def grpo_step(engine, problems, cfg, step):
    """The default step function: reward_step with --reward (outcome, or the length-penalty baseline)."""
    return reward_step(REWARDS[cfg.reward])(engine, problems, cfg, step)


# ==============================================================================================
# The loop
# ==============================================================================================

def rollout_engine(cfg, rank):
    """This rank's engine, holding the weights the run starts from (the latest checkpoint on --resume)."""
    weights = (policy.latest_checkpoint(cfg.out) if cfg.resume else None) or cfg.model
    return prover.engine_from_args(cfg, weights, seed=cfg.seed + rank)


def training_problems(cfg, tokenizer):
    """The training problems whose prompt fits --max-prompt-length, and the run's number of steps."""
    prompts_per_step = cfg.batch_size // cfg.num_generations
    problems = [q for q in prover.load_problems(cfg.train, years=cfg.train_years)
                if len(prover.build_prompt(tokenizer, q["problem"], thinking=cfg.thinking)) <= cfg.max_prompt_length]
    if len(problems) < prompts_per_step:
        raise ValueError(f"--train {cfg.train}: {len(problems)} problems fit --max-prompt-length "
                         f"{cfg.max_prompt_length}, fewer than one step's {prompts_per_step}")
    return problems, cfg.max_steps or cfg.epochs * (len(problems) // prompts_per_step)


def step_problems(problems, cfg, step):
    """This rank's prompts at a step: a seeded shuffle per epoch, each rank a contiguous share."""
    world, rank = dist.get_world_size(), dist.get_rank()
    prompts_per_step = cfg.batch_size // cfg.num_generations
    per_rank = prompts_per_step // world
    epoch, offset = divmod(step * prompts_per_step, len(problems))
    order = list(range(len(problems)))
    random.Random(cfg.seed + epoch).shuffle(order)
    return [problems[order[(offset + rank * per_rank + i) % len(problems)]] for i in range(per_rank)]


def train(cfg, engine=None, step_fn=grpo_step):
    """The policy-gradient loop of GRPO (Sec. 3, App. B.1) around one step function: grpo_step (the
    outcome and length-penalty baselines), mrt_rl.Algorithm2 (MRT-RL) or backtrack.rl_step.

    engine: an Engine already holding the starting weights (main() builds it with rollout_engine and
    closes it in teardown); None builds one here. step_fn(engine, problems, cfg, step) -> Rollout.
    Returns the final step's metrics.
    """
    rank, world = policy.setup_distributed()
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)

    # ---- data and run length ------------------------------------------------------------------------
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    problems, total_steps = training_problems(cfg, tokenizer)

    # ---- policy, optimizer, schedule; resume -----------------------------------------------------------
    start_step = 0
    resume_from = policy.latest_checkpoint(cfg.out) if cfg.resume else None
    model = policy.load_policy(resume_from or cfg.model, cfg.gradient_checkpointing)
    optimizer, scheduler = policy.make_optimizer(model, cfg.lr, cfg.weight_decay, total_steps, cfg.warmup_ratio)
    ref_model = policy.load_policy(cfg.model, trainable=False) if cfg.beta > 0 else None
    if resume_from:
        start_step = policy.load_checkpoint(resume_from, model, optimizer, scheduler)
        if rank == 0:
            print(f"resumed from {resume_from} at step {start_step}")
    if engine is None:
        engine = rollout_engine(cfg, rank)
    elif resume_from:
        policy.sync_weights(model, engine)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    save_dtype = machine.save_dtype(cfg.save_dtype, cfg.model)
    os.makedirs(cfg.out, exist_ok=True)
    bar = tqdm(total=total_steps, initial=start_step, desc="grpo", unit="step", disable=rank != 0)
    metrics = {}
    for step in range(start_step, total_steps):
        t = {"start": time.time()}
        # ---- generate and score: the step function's rollouts, rewards and advantages -----------------
        mine = step_problems(problems, cfg, step)
        rollout = step_fn(engine, mine, cfg, step)
        rollout.completions = [c or [pad_id] for c in rollout.completions]   # an empty completion trains on a pad
        engine.sleep()   # sleep mode: the engine's weights and KV cache leave the GPU until the sync
        t["score"] = time.time()
        t["generate"] = t["score"] - rollout.seconds_score

        # ---- train: clipped loss over token-budgeted micro-batches, clip, AdamW ------------------------------
        lr = scheduler.get_last_lr()[0]
        gpu = {}
        if torch.cuda.is_available():   # what the engine left free (asleep: nearly all) and what training took
            torch.cuda.reset_peak_memory_stats()
            gpu["gpu_free_gib_at_train"] = torch.cuda.mem_get_info()[0] / 2 ** 30
        step_stats = train_step(model, optimizer, scheduler, rollout, cfg, pad_id, ref_model)
        optimizer.zero_grad(set_to_none=True)   # free the gradients: the engine wakes into this memory
        if gpu:
            gpu["gpu_peak_allocated_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        t["train"] = time.time()

        # ---- sync: the new weights into this rank's engine (woken first in sleep mode) -----------------------
        policy.sync_weights(model, engine)
        t["sync"] = time.time()

        # ---- log and checkpoint ---------------------------------------------------------------------------------
        flat = rollout.rewards
        s, s2, n, n_correct, n_trunc, comp_tokens, all_tokens = all_sum(
            sum(flat), sum(r * r for r in flat), len(flat), sum(rollout.correct), sum(rollout.truncated),
            sum(len(c) for c in rollout.completions),
            sum(len(p) + len(c) for p, c in zip(rollout.prompts, rollout.completions)))
        extra = mean_over_ranks(rollout.metrics)
        phases = {k: t[k] - t[prev] for prev, k in zip(["start", "generate", "score", "train"],
                                                        ["generate", "score", "train", "sync"])}
        metrics = {"step": step + 1, "lr": lr, "reward_mean": s / n, "reward_std": math.sqrt(max(s2 / n - (s / n) ** 2, 0.0)),
                   "accuracy": n_correct / n, "response_length": comp_tokens / n, "truncation_rate": n_trunc / n,
                   **step_stats, "generation_tokens_per_s": comp_tokens / max(phases["generate"], 1e-9),
                   "training_tokens_per_s": all_tokens / max(phases["train"], 1e-9),
                   **extra, **gpu, **{f"seconds_{k}": v for k, v in phases.items()}}
        policy.log_metrics(cfg.out, metrics)
        shown = {"reward": f"{metrics['reward_mean']:.3f}", "acc": f"{metrics['accuracy']:.3f}"}
        if "mu_prefixes" in metrics:   # the cost of per-episode credit (mrt_rl.mu_at_episode_ends), per step
            shown.update(mu_prefixes=f"{metrics['mu_prefixes']:.0f}", mu_tokens=f"{metrics['mu_tokens']:.0f}",
                         mu_s=f"{metrics['seconds_mu']:.1f}")
        bar.set_postfix(**shown)
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == total_steps:
            policy.save_checkpoint(cfg.out, step + 1, model, optimizer, scheduler, tokenizer, vars(cfg),
                                   cfg.keep_checkpoints, save_dtype)
    bar.close()
    return metrics


# ==============================================================================================
# CLI
# ==============================================================================================

def add_grpo_args(p):
    """GRPO flags, defaults from Table 3 (App. B.2); mrt.py and backtrack.py add their own on top."""
    flags.add_model(p)
    flags.add_train_data(p)
    p.add_argument("--out", default="runs/grpo", help="run folder: metrics.jsonl and checkpoints/ (default runs/grpo)")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    flags.add_optimizer(p, lr=1e-6, epochs=1, batch_size=256, source="Table 3",
                        batch_help="completions per optimizer step, all ranks")
    p.add_argument("--num-generations", type=flags.positive_int, default=4, help="G, completions per prompt (Table 3: 4)")
    p.add_argument("--max-prompt-length", type=flags.positive_int, default=4096,
                   help="longer prompts are left out (Table 3: 4096)")
    p.add_argument("--max-completion-length", type=flags.positive_int, default=24576,
                   help="completion budget (Table 3: 24576)")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=0.9, help="rollout temperature (Table 3: 0.9)")
    p.add_argument("--top-p", type=flags.probability, default=1.0, help="rollout top-p (default 1.0)")
    p.add_argument("--epsilon", type=flags.positive_float, default=0.2, help="PPO clip range below 1 (default 0.2)")
    p.add_argument("--epsilon-high", type=flags.positive_float, default=None,
                   help="clip range above 1 (default = --epsilon; DAPO's clip-higher uses 0.28)")
    p.add_argument("--ppo-epochs", type=flags.positive_int, default=1,
                   help="optimizer passes over each batch of rollouts (default 1: on-policy; TRL calls it num_iterations)")
    # Defaults follow the paper's runs: the first author's fork (CohenQU/grpo-metaMATH) trains with a copy
    # of TRL's GRPOTrainer of Feb. 2025 (between v0.14 and v0.15): per-completion mean loss, beta 0.04
    # with a reference model, rewards scaled by the group std.
    p.add_argument("--beta", type=flags.nonnegative_float, default=0.04,
                   help="KL coefficient to the initial model, k3 estimator (default 0.04, TRL's of early 2025; 0 loads "
                        "no reference model)")
    p.add_argument("--loss-agg", choices=("token-mean", "seq-mean"), default="seq-mean",
                   help="seq-mean (default, TRL of early 2025): per completion, then over completions; "
                        "token-mean (DAPO, TRL >= 0.16): over all completion tokens of the batch")
    p.add_argument("--scale-rewards", choices=("std", "none"), default="std",
                   help="divide group-centred rewards by the group std (GRPO) or not (Dr. GRPO)")
    p.add_argument("--reward", choices=tuple(REWARDS), default="outcome",
                   help="outcome: r(x, z) in {0,1}; length-penalty: the Table 1 baseline of Arora & Zanette (2025)")
    p.add_argument("--zero-truncated", action="store_true",
                   help="reward 0 for a completion cut at --max-completion-length (default: graded like any other, "
                        "as the paper's codebase and evaluate.py do)")
    p.add_argument("--length-penalty-alpha", type=flags.fraction, default=0.1,
                   help="alpha of the length-penalty reward, in [0, 1) (Arora & Zanette: 0.05-0.4; default 0.1)")
    flags.add_batching(p)
    flags.add_checkpoints(p, save_every=50)
    flags.add_seed(p)
    flags.add_engine(p)


def check_args(p, cfg):
    """Missing files, batch shapes, a context that cannot hold prompt + completion: errors before any work."""
    if cfg.epsilon_high is None:
        cfg.epsilon_high = cfg.epsilon
    world = int(os.environ.get("WORLD_SIZE", 1))
    if cfg.batch_size % cfg.num_generations:
        p.error(f"--batch-size {cfg.batch_size} must be a multiple of --num-generations {cfg.num_generations}")
    if (cfg.batch_size // cfg.num_generations) % world:
        p.error(f"--batch-size / --num-generations = {cfg.batch_size // cfg.num_generations} prompts per step "
                f"must be a multiple of the {world} ranks")
    flags.check_model(p, cfg)
    flags.check_train(p, cfg)
    if cfg.resume and policy.latest_checkpoint(cfg.out) is None:
        p.error(f"--resume: no checkpoint in {cfg.out}/checkpoints")
    cfg.thinking = prover.resolve_thinking(cfg.thinking, AutoTokenizer.from_pretrained(cfg.model))
    limit = getattr(AutoConfig.from_pretrained(cfg.model), "max_position_embeddings", None)
    need = cfg.max_prompt_length + cfg.max_completion_length
    if cfg.max_model_len is None:
        cfg.max_model_len = need
    if need > cfg.max_model_len or (limit is not None and need > limit):
        p.error(f"--max-prompt-length + --max-completion-length = {need} does not fit the engine's --max-model-len "
                f"{cfg.max_model_len} or the model's max_position_embeddings {limit}")
    flags.check_engine(p, cfg)
    flags.check_memory(p, cfg, need)
    return cfg


def config(**values):
    """GRPO's config from Python: grpo.py's flags by name, checked as on the command line."""
    return flags.config(add_grpo_args, check_args, **values)


def main(argv=None, cfg=None, step_fn=grpo_step):
    """The command line: parse argv (or take a checked cfg), then train on this rank's engine and end
    cleanly on every rank (policy.teardown). mrt.py runs Algorithm 2 through it with its step function."""
    if cfg is None:
        p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        add_grpo_args(p)
        cfg = check_args(p, p.parse_args(argv))
    rank, _ = policy.setup_distributed()
    engine = None
    try:
        engine = rollout_engine(cfg, rank)
        train(cfg, engine, step_fn)
    except BaseException:
        policy.teardown(engine, clean=False)
        raise
    policy.teardown(engine)


if __name__ == "__main__":
    main()
    policy.exit_process()
