"""star.py: Algorithm 1, MRT (STaR), its STaR baseline, and the FSDP2 SFT loop both train with.

    python star.py --model M --train data/math_train_4k.jsonl --out D --iterations T --variant {mrt,star}
    torchrun --nproc_per_node 8 star.py --model M ...     # rollouts and mu sharded over ranks, SFT on FSDP2
    python star.py sft --data F --model M --out D          # SFT on a JSONL file (the warm start of App. A.2)

Paper: Sec. 7.1 and Fig. 6 (left), App. B.1 Algorithm 1, App. B.2 Table 2 (SFT hyperparameters),
Sec. 8.1 ("rolling out each prefix 20 times" for the progress estimates), App. A.2 (warm-start SFT).
The baseline STaR (Zelikman et al., 2022; Table 1 and Fig. 7) keeps whole rollouts that are correct.

Per iteration t, with pi_theta in the engine (Algorithm 1):
    generate   one rollout z ~ pi_theta(.|x) per training problem (--rollouts for more)
    score      mrt: episodes (episodes.py), J_r(mu | x, z_{0:j}) for every prefix (Eq. 4, m samples),
               progress (Def. 6.1); star: the 0/1 reward r(x, z)
    select     mrt: traces whose largest cumulative progress reaches --progress-threshold (default sqrt(2/m),
               above mu's noise; Alg. 1 line 7 has > 0), cut at that prefix z_{0:i}, then the thought is closed
               and the policy answers (line 9: y ~ pi_theta(.|x, z_{0:i}), kept if r(x, y) = 1; --answer-source
               mu takes one of mu's correct forced answers instead); star: correct rollouts
    write      D/iter_t/data.jsonl (every example with its k, i, progress and J_r curve)
    train      SFT of pi_theta on the data of iterations 1..t (Algorithm 1 keeps one growing D_ft)
    sync       the new weights into the engine

Run folder D: iter_<t>/data.jsonl, iter_<t>/checkpoints/step_N (each iteration's SFT run, HF folders),
metrics.jsonl (one row per SFT step and one per iteration). A killed run resumes where it stopped:
a finished data file is not rebuilt, an iteration's SFT resumes from its last checkpoint.


The SFT data format: see SFT_FORMAT below, or `python star.py sft --help`.
"""

import argparse
import json
import math
import os
import random
import time

import sys

import policy
import episodes
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
# SFT data
# ==============================================================================================

SFT_FORMAT = """SFT data (star.py sft --data F, and the files Algorithm 1 writes): one JSON object per line,
    {"problem": str | "prompt": [chat messages], "completion": str, "weight": float (optional, 1),
     "context": str (optional)}
The prompt is built with prover.build_prompt, as for rollouts, so SFT and RL see the same prompts;
the completion is the assistant's continuation (thought, answer) and ends with EOS. A "context"
continues the assistant turn before the completion and is not trained on (a thought prefix and
Fig. 22's suffix, when the example teaches the answer mu should give there)."""

ANSWER_HEAD = prover.TIME_IS_UP.split("</think>\n\n", 1)[1]  # "**Step-by-Step Explanation and Answer:**..."


def load_sft_data(path, tokenizer, thinking, max_seq_length, truncate=False, allow_empty=False):
    """Tokenized SFT examples [(prompt ids, completion ids + EOS, weight)] and the number of rows
    skipped as too long (or cut to max_seq_length when truncate=True: the completion's tail goes).
    Malformed rows are errors that name the file and line."""
    examples, skipped = [], 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
            prompt = row.get("prompt", row.get("problem"))
            if isinstance(prompt, list):
                if not prompt or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                         and isinstance(m.get("content"), str) for m in prompt):
                    raise ValueError(f"{where}: \"prompt\" must be a non-empty list of {{role, content}} messages")
            elif not isinstance(prompt, str) or not prompt.strip():
                raise ValueError(f"{where}: needs a \"problem\" string or a \"prompt\" list of chat messages")
            if not isinstance(row.get("completion"), str) or not row["completion"]:
                raise ValueError(f"{where}: missing or empty string field \"completion\"")
            context = row.get("context", "")
            if not isinstance(context, str):
                raise ValueError(f"{where}: \"context\" must be a string, got {type(context).__name__}")
            weight = row.get("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
                raise ValueError(f"{where}: \"weight\" must be a finite number >= 0, got {weight!r}")
            prompt_ids = prover.build_prompt(tokenizer, prompt, context, thinking=thinking)
            completion_ids = tokenizer.encode(row["completion"], add_special_tokens=False) + [tokenizer.eos_token_id]
            if len(prompt_ids) + len(completion_ids) > max_seq_length:
                if not truncate or len(prompt_ids) >= max_seq_length:
                    skipped += 1
                    continue
                completion_ids = completion_ids[:max_seq_length - len(prompt_ids)]
            examples.append((prompt_ids, completion_ids, float(weight)))
    if not examples and not allow_empty:
        raise ValueError(f"{path}: no usable examples ({skipped} longer than --max-seq-length {max_seq_length})")
    return examples, skipped


# ==============================================================================================
# The SFT loss and one optimizer step
# ==============================================================================================

def sft_loss(logp, mask, weights, num_tokens):
    """Negative log-likelihood of the completion tokens (Alg. 1 line 13), optionally weighted:

        L = -(1 / N) * sum_seq w_seq * sum_{t in completion} log pi(y_t | x, y_<t)

    logp, mask: [n, T-1] (mask: positions whose next token is a completion token; prompt and padding
    are 0); weights: [n]; N: completion tokens of the whole global batch, all ranks. Dividing by the
    global (unweighted) count makes micro-batches and ranks add up to the full-batch loss, and keeps a
    weight's meaning plain: w = 2 counts a sequence's tokens twice. (App. B.2 weights by progress.)
    """
    return -(logp * mask * weights[:, None]).sum() / max(num_tokens, 1)


def sft_step(model, optimizer, scheduler, batch, cfg, pad_id):
    """One optimizer step on this rank's share of a global batch [(prompt ids, completion ids, weight)]:
    sft_loss over token-budgeted micro-batches, gradient-norm clip, AdamW, schedule. Returns metrics."""
    lengths = [len(p) + len(c) for p, c, _ in batch]
    num_tokens, num_seqs = all_sum(sum(len(c) for _, c, _ in batch), len(batch))
    world = dist.get_world_size()
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for rows in policy.rank_micro_batches(lengths, cfg.micro_batch_tokens, getattr(cfg, "pack_sequences", False)):
        logp, mask = policy.sequence_logprobs(model, rows, [p for p, _, _ in batch], [c for _, c, _ in batch], pad_id)
        weights = torch.tensor([batch[i][2] for row in rows for i in row] or [0.0], device=device())
        loss = sft_loss(logp, mask, weights, num_tokens)
        # FSDP averages gradients over ranks; the loss is already divided by the global count, so
        # scale by the world size to make that average a sum (an empty micro-batch adds 0).
        (loss * world).backward()
        total += loss.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
    grad_norm = grad_norm.full_tensor().item() if hasattr(grad_norm, "full_tensor") else float(grad_norm)
    optimizer.step()
    scheduler.step()
    (loss_sum,) = all_sum(total)
    return {"loss": loss_sum, "grad_norm": grad_norm, "completion_tokens": num_tokens, "sequences": num_seqs,
            "tokens": all_sum(sum(lengths))[0]}


# ==============================================================================================
# The SFT loop (shared by star.py sft, Algorithm 1 and the warm start)
# ==============================================================================================

def sft(cfg, examples, start_weights, tokenizer, out_dir, engine=None):
    """Fine-tune the model at `start_weights` (loaded here as an FSDP2 policy) on `examples`, for
    cfg.epochs epochs of global batches of cfg.batch_size sequences (Table 2: 3 epochs, 256, lr 1e-6,
    warmup 0.1; cosine as in Table 3). Checkpoints go to out_dir/checkpoints every cfg.save_every steps and at the
    end; a run that finds one there resumes from it exactly (weights, optimizer, schedule, data order).
    With an engine, it sleeps while the policy trains (sleep mode) and the final weights are synced into
    it. The policy is freed on return, so that
    between SFT runs the GPU holds only the engine. Returns the last step's metrics."""
    rank, world = policy.setup_distributed()
    if engine is not None:
        engine.sleep()   # sleep mode: the engine's memory is the policy's until the sync below
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    start = 0
    resume_from = policy.latest_checkpoint(out_dir)
    model = policy.load_policy(resume_from or start_weights, cfg.gradient_checkpointing)
    optimizer, scheduler = policy.make_optimizer(model, cfg.lr, cfg.weight_decay, total_steps, cfg.warmup_ratio)
    if resume_from:
        start = policy.load_checkpoint(resume_from, model, optimizer, scheduler)
        if rank == 0:
            print(f"sft: resumed from {resume_from} at step {start}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    save_dtype = machine.save_dtype(cfg.save_dtype, cfg.model)
    bar = tqdm(total=total_steps, initial=start, desc="sft", unit="step", disable=rank != 0)
    metrics = {}
    for step in range(start, total_steps):
        t0 = time.time()
        epoch, at = divmod(step, steps_per_epoch)
        order = list(range(len(examples)))
        random.Random(cfg.seed + epoch).shuffle(order)      # the same order on every rank, and on resume
        global_batch = order[at * cfg.batch_size:(at + 1) * cfg.batch_size]
        mine = [examples[i] for i in global_batch[rank::world]]
        lr = scheduler.get_last_lr()[0]
        stats = sft_step(model, optimizer, scheduler, mine, cfg, pad_id)
        optimizer.zero_grad(set_to_none=True)   # free the gradients between steps (the engine wakes after the last)
        seconds = time.time() - t0
        metrics = {"sft_step": step + 1, "epoch": epoch + at / steps_per_epoch, "lr": lr,
                   **stats, "tokens_per_s": stats["tokens"] / max(seconds, 1e-9), "seconds": seconds}
        policy.log_metrics(cfg.out, {"phase": "sft", "run": os.path.relpath(out_dir, cfg.out), **metrics})
        bar.set_postfix(loss=f"{stats['loss']:.4f}")
        bar.update(1)
        if (step + 1) % cfg.save_every == 0 or step + 1 == total_steps:
            policy.save_checkpoint(out_dir, step + 1, model, optimizer, scheduler, tokenizer, vars(cfg),
                                   cfg.keep_checkpoints, save_dtype)
    bar.close()
    if engine is not None:
        policy.sync_weights(model, engine)
    # the scheduler holds the optimizer (LambdaLR.optimizer), which holds the fp32 states: drop all three
    # before the data phase, where the GPU holds only the engine
    del model, optimizer, scheduler
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return metrics


# ==============================================================================================
# Algorithm 1: which traces to keep, and where to cut them
# ==============================================================================================

def select_prefix(success_rates, rewards):
    """Alg. 1 lines 6-9 (Sec. 7.1's two criteria) on one trace scored by mu.

    success_rates[j] = J_r(mu | x, z_{0:j}) for j = 0..k; rewards[j] = the 0/1 rewards of mu's m
    samples at prefix j. Returns (i, s, cumulative progress at i) or None when no prefix has positive
    cumulative progress (line 7). i (line 8) maximises the cumulative progress sum_{j<i} r_prg(z_j) =
    J_r(z_{0:i}) - J_r(z_{0:0}) over i = 1..k; on a tie the shortest prefix wins (the same progress
    for fewer tokens). s (line 9) is the first of mu's samples at prefix i with r(x, y) = 1; one
    exists, since J_r(z_{0:i}) > J_r(z_{0:0}) >= 0.
    """
    _, cumulative = prover.progress(success_rates)
    if not cumulative or max(cumulative) <= 0:
        return None
    best = max(cumulative)
    i = cumulative.index(best) + 1            # cumulative[j] is the progress after episode j
    s = rewards[i].index(1.0)
    return i, s, best


def default_progress_threshold(m):
    """The smallest cumulative progress an MRT-STaR example needs by default: sqrt(2 / m), two standard
    errors of a difference of two m-sample success rates at their largest variance (1/4 each), i.e.
    progress that mu's sampling noise alone rarely produces (0.32 at Sec. 8.1's m = 20). Alg. 1 line 7
    keeps any positive progress; with m = 20, a trace that gave up after two tries and met one of mu's
    lucky correct guesses passes that test (toy world: 2/3 of the kept traces), and SFT on them teaches
    stopping early."""
    return math.sqrt(2.0 / m)


def thought_closing(prefix, thinking):
    """What closes the thought after the prefix z_{0:i}: a paragraph break, then "</think>" and a blank
    line (nothing more for a model with no thought block)."""
    return prover.paragraph_break(prefix) + ("</think>\n\n" if thinking else "")


def closed_thought_context(tokenizer, problem, prefix, prefix_ids, thinking):
    """Alg. 1 line 9's context for y ~ pi_theta(.|x, z_{0:i}): the prompt, the thought prefix, and the
    thought closed (the model's own format for what follows a thought), as token ids."""
    close = thought_closing(prefix, thinking)
    return (prover.build_prompt(tokenizer, problem, thinking=thinking) + list(prefix_ids)
            + (tokenizer.encode(close, add_special_tokens=False) if close else []))


def mrt_completion(prefix, answer, thinking, keep_time_is_up=False):
    """The SFT target of an MRT-STaR example: the thought z_{0:i}, then the answer y mu wrote there.

    The paper's example is (x, z_{0:i}, y) and leaves open what joins them. By default the thought
    is closed right after z_{0:i} and the answer starts with Fig. 22's answer heading, which y
    continues: the model learns to stop thinking where progress peaked and to answer, and never sees
    the forcing text, which nothing appends at test time. keep_time_is_up=True keeps the whole
    "Time is up..." suffix mu saw, i.e. exactly mu's input and output.
    """
    if keep_time_is_up:
        return prefix + prover.time_is_up_suffix(prefix, thinking) + answer
    return prefix + thought_closing(prefix, thinking) + ANSWER_HEAD + answer


def build_examples(engine, problems, cfg, iteration):
    """One iteration's new SFT rows on this rank's problems (Alg. 1 lines 4-12), and its metrics.

    mrt: one (or cfg.rollouts) rollout per problem, every thought prefix scored by mu with cfg.prover_samples
    forced terminations, select_prefix, mrt_completion. star: the correct rollouts, whole.
    """
    tok = engine.tokenizer
    prompts = [prover.build_prompt(tok, q["problem"], thinking=cfg.thinking) for q in problems]
    # ---- generate: z ~ pi_theta(.|x) ---------------------------------------------------------------
    t0 = time.time()
    outputs = engine.generate(prompts, n=cfg.rollouts, temperature=cfg.temperature, top_p=cfg.top_p,
                              max_tokens=cfg.max_tokens,
                              seed=policy.sample_seed(cfg.seed, "rollouts", iteration))
    traces = [(q, s) for q, samples in zip(problems, outputs) for s in samples]
    correct = [grader.reward(s.text, q["answer"], thinking=cfg.thinking) for q, s in traces]
    stats = {"rollouts": len(traces), "accuracy_sum": sum(correct), "kept": 0, "i_over_k_sum": 0.0,
             "progress_sum": 0.0, "j_r_empty_sum": 0.0, "tokens_sum": sum(s.num_tokens for _, s in traces),
             "seconds_rollout": time.time() - t0, "seconds_mu": 0.0}
    rows = []
    if cfg.variant == "star":
        for (q, s), c in zip(traces, correct):
            if c == 1.0:
                rows.append({"id": q["id"], "problem": q["problem"], "completion": s.text, "weight": 1.0,
                             "iteration": iteration, "variant": "star"})
        stats["kept"] = len(rows)
        return rows, stats
    # ---- score: J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), progress (Def. 6.1) -----------------
    segmented = []
    for q, s in traces:
        stream, _ = episodes.reasoning_stream(s.text, cfg.thinking, finished=s.finish_reason == "stop")
        segmented.append(episodes.thought_prefixes(episodes.split_episodes(stream, ends=cfg.episode_end)))
    t1 = time.time()
    # mu draws from the rollouts' stream, as it always has here (a stream of its own would change the
    # MRT-STaR results this reading-only change must keep; its prompts differ from the rollouts' anyway)
    mu = prover.MetaProver(engine, m=cfg.prover_samples, temperature=cfg.prover_temperature, max_tokens=cfg.prover_max_tokens,
                           seed=policy.sample_seed(cfg.seed, "rollouts", iteration), thinking=cfg.thinking)
    scores = mu.score([(q["problem"], q["answer"], prefixes, s.token_ids)
                       for (q, s), prefixes in zip(traces, segmented)])
    stats["seconds_mu"] = time.time() - t1
    # ---- select: the prefix of largest cumulative progress, if it clears the threshold (line 7) ------
    threshold = default_progress_threshold(cfg.prover_samples) if cfg.progress_threshold is None else cfg.progress_threshold
    chosen = []
    for (q, s), prefixes, score in zip(traces, segmented, scores):
        stats["j_r_empty_sum"] += score.success_rates[0]
        pick = select_prefix(score.success_rates, score.rewards)
        if pick is not None and pick[2] >= threshold:
            chosen.append((q, s, prefixes, score, pick))
    stats["below_threshold"] = len(traces) - len(chosen)
    # ---- the answer y at the chosen prefix (line 9) --------------------------------------------------
    if cfg.answer_source == "policy":
        # y ~ pi_theta(.|x, z_{0:i}) after the thought is closed, in the model's own answer format; kept
        # when r(x, y) = 1 (mu's criterion), else the trace is dropped
        t2 = time.time()
        contexts = [closed_thought_context(tok, q["problem"], prefixes[i], prover.prefix_token_ids(tok, s.token_ids, prefixes[i]),
                                           cfg.thinking) for q, s, prefixes, _, (i, _, _) in chosen]
        answers = engine.generate(contexts, n=cfg.prover_samples, temperature=cfg.temperature, top_p=cfg.top_p,
                                  max_tokens=cfg.prover_max_tokens,
                                  seed=policy.sample_seed(cfg.seed, "policy_answers", iteration)) if contexts else []
        completions = []
        for (q, _, prefixes, _, (i, _, _)), ys in zip(chosen, answers):
            right = [y.text for y in ys if y.finish_reason == "stop" and grader.reward(y.text, q["answer"], thinking=False) == 1.0]
            completions.append(prefixes[i] + thought_closing(prefixes[i], cfg.thinking) + right[0] if right else None)
        stats["seconds_answers"] = time.time() - t2
    else:   # mu's own correct forced answer there (the answer heading of Fig. 22, or the whole suffix)
        completions = [mrt_completion(prefixes[i], score.texts[i][sample], cfg.thinking, cfg.keep_time_is_up)
                       for _, _, prefixes, score, (i, sample, _) in chosen]
    stats["no_correct_answer"] = sum(c is None for c in completions)
    for (q, s, prefixes, score, (i, _, gain)), completion in zip(chosen, completions):
        if completion is None:
            continue
        k = len(prefixes) - 1
        per_episode, _ = prover.progress(score.success_rates)
        rows.append({"id": q["id"], "problem": q["problem"], "completion": completion,
                     "weight": gain if cfg.weight_by_progress else 1.0, "iteration": iteration, "variant": "mrt",
                     "k": k, "i": i, "cumulative_progress": gain, "progress": per_episode,
                     "success_rates": score.success_rates})
        stats["i_over_k_sum"] += i / k
        stats["progress_sum"] += gain
    stats["kept"] = len(rows)
    return rows, stats


# ==============================================================================================
# The loop
# ==============================================================================================

def resume_point(cfg):
    """(first iteration still to do, the weights it starts from): the last checkpoint of the last
    iteration whose SFT finished, or --model."""
    first, weights = 1, cfg.model
    for t in range(1, cfg.iterations + 1):
        folder = os.path.join(cfg.out, f"iter_{t}")
        if not os.path.exists(os.path.join(folder, "trained")):
            break
        first, weights = t + 1, policy.latest_checkpoint(folder) or weights
    return first, weights


def run(cfg, engine=None):
    """Algorithm 1 for cfg.iterations iterations (--variant mrt), or STaR (--variant star).

    engine: an Engine holding the weights resume_point names (main() builds it); None builds one here.
    Returns the metrics of every iteration this call ran.
    """
    rank, world = policy.setup_distributed()
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(cfg.model)
    problems = prover.load_problems(cfg.train, years=cfg.train_years)[:cfg.num_problems]
    first, weights = resume_point(cfg)
    if engine is None:
        engine = prover.engine_from_args(cfg, weights, seed=cfg.seed + rank)
    if rank == 0 and first > 1:
        print(f"star: iterations 1..{first - 1} done, resuming at iteration {first} from {weights}")
    history = []
    for t in range(first, cfg.iterations + 1):
        folder = os.path.join(cfg.out, f"iter_{t}")
        data_path = os.path.join(folder, "data.jsonl")
        t0 = time.time()
        # ---- data: rollouts, mu, selection, on this rank's share of the problems; gathered -----------
        if not os.path.exists(data_path):
            rows, stats = build_examples(engine, problems[rank::world], cfg, t)
            gathered = [None] * world
            dist.all_gather_object(gathered, (rows, stats))
            if rank == 0:
                policy.write_atomic(data_path, "".join(json.dumps(r) + "\n" for rows_r, _ in gathered for r in rows_r))
                totals = {key: sum(s[key] for _, s in gathered) for key in stats}
                kept = max(totals["kept"], 1)
                row = {"phase": "iteration", "iteration": t, "variant": cfg.variant, "rollouts": totals["rollouts"],
                       "kept": totals["kept"], "accuracy": totals["accuracy_sum"] / totals["rollouts"],
                       "mean_response_tokens": totals["tokens_sum"] / totals["rollouts"],
                       "seconds_data": time.time() - t0, "seconds_rollout": max(s["seconds_rollout"] for _, s in gathered),
                       "seconds_mu": max(s["seconds_mu"] for _, s in gathered)}
                if cfg.variant == "mrt":
                    row.update(mean_i_over_k=totals["i_over_k_sum"] / kept, mean_progress=totals["progress_sum"] / kept,
                               j_r_empty=totals["j_r_empty_sum"] / totals["rollouts"])
                policy.log_metrics(cfg.out, row)
                history.append(row)
                print(json.dumps(row))
            dist.barrier()
        # ---- train: SFT on D_ft, the data of iterations 1..t (Alg. 1 keeps one growing dataset) ---------
        t1 = time.time()
        examples, skipped = [], 0
        for u in range(1, t + 1):
            path = os.path.join(cfg.out, f"iter_{u}", "data.jsonl")
            if os.path.getsize(path) == 0:
                continue
            more, more_skipped = load_sft_data(path, tokenizer, cfg.thinking, cfg.max_seq_length, cfg.truncate,
                                               allow_empty=True)   # an iteration whose rows are all too long
            examples += more
            skipped += more_skipped
        if examples:
            sft(cfg, examples, weights, tokenizer, folder, engine)
            weights = policy.latest_checkpoint(folder)
        elif rank == 0:
            print(f"star: iteration {t} kept no trace; the model is unchanged")
        if rank == 0:
            policy.log_metrics(cfg.out, {"phase": "iteration_sft", "iteration": t, "examples": len(examples),
                                         "skipped_too_long": skipped, "seconds_sft": time.time() - t1})
            with open(os.path.join(folder, "trained"), "w") as f:
                f.write("done\n")
        dist.barrier()
    return history


# ==============================================================================================
# CLI
# ==============================================================================================

def add_sft_args(p):
    """SFT flags, defaults from Table 2 (App. B.2)."""
    flags.add_model(p)
    p.add_argument("--out", required=True, help="run folder: metrics.jsonl and checkpoints")
    flags.add_optimizer(p, lr=1e-6, epochs=3, batch_size=256, source="Table 2",
                        batch_help="sequences per optimizer step, all ranks")
    p.add_argument("--max-seq-length", type=flags.positive_int, default=16384,
                   help="prompt + completion tokens (Table 2: 16384)")
    p.add_argument("--truncate", action="store_true",
                   help="cut over-long examples to --max-seq-length (default: skip them, counted in the log)")
    flags.add_batching(p)
    flags.add_checkpoints(p, save_every=100)
    flags.add_seed(p)


def add_sft_command_args(p):
    """`star.py sft`: the SFT flags, the data file, --thinking."""
    add_sft_args(p)
    p.add_argument("--data", required=True, help="SFT data, JSONL (format above)")
    flags.add_thinking(p)


def add_star_args(p, variant_flag=True):
    """Algorithm 1 flags; the SFT flags come from add_sft_args. variant_flag=False hides --variant from
    --help (mrt.py's --method sets it)."""
    add_sft_args(p)
    flags.add_train_data(p)
    p.add_argument("--num-problems", type=flags.positive_int, default=None,
                   help="use the first N training problems (default all)")
    p.add_argument("--iterations", type=flags.positive_int, default=1, help="T, iterations of Algorithm 1 (default 1)")
    p.add_argument("--variant", choices=("mrt", "star"), default="mrt",
                   help="mrt: Algorithm 1 (progress-selected prefixes); star: the outcome-only STaR baseline"
                   if variant_flag else argparse.SUPPRESS)
    p.add_argument("--rollouts", type=flags.positive_int, default=1,
                   help="rollouts per problem and iteration (Alg. 1 line 5: 1)")
    p.add_argument("--temperature", type=flags.nonnegative_float, default=0.7,
                   help="rollout temperature (default 0.7, App. D)")
    p.add_argument("--top-p", type=flags.probability, default=1.0, help="rollout top-p (default 1.0)")
    p.add_argument("--max-tokens", type=flags.positive_int, default=16384, help="rollout budget in tokens (Sec. 8.1: 16K)")
    flags.add_prover(p, samples=20, max_tokens=4096, samples_source="Sec. 8.1, progress estimates")
    p.add_argument("--progress-threshold", type=flags.nonnegative_float, default=None,
                   help="keep a trace only when its largest cumulative progress reaches this (default sqrt(2/m), two "
                        "standard errors of mu's noise: 0.32 at m = 20; 0 keeps any positive progress, Alg. 1 line 7)")
    p.add_argument("--answer-source", choices=("auto", "policy", "mu"), default="auto",
                   help="where the example's answer y comes from: policy (Alg. 1 line 9: y ~ pi_theta after the "
                        "thought is closed at z_{0:i}, in the model's own format, kept if correct), mu (one of mu's "
                        "correct forced answers, after Fig. 22's heading); auto (default): policy for a model that "
                        "thinks, mu for one without a thought block")
    p.add_argument("--keep-time-is-up", action="store_true",
                   help="keep Fig. 22's 'Time is up...' text in the SFT target (default: close the thought right "
                        "after the selected prefix, then mu's answer)")
    p.add_argument("--weight-by-progress", action="store_true",
                   help="weight each MRT example's loss by its cumulative progress (App. B.2); default weight 1")
    flags.add_engine(p)


def check_sft_args(p, cfg):
    """The model folder and --thinking; `star.py sft` also its data file."""
    flags.check_model(p, cfg)
    if getattr(cfg, "data", None) is not None and not os.path.isfile(cfg.data):
        p.error(f"--data: no such file: {cfg.data}")
    cfg.thinking = prover.resolve_thinking(cfg.thinking, AutoTokenizer.from_pretrained(cfg.model))
    return flags.check_memory(p, cfg, cfg.max_seq_length)


def check_star_args(p, cfg):
    """check_sft_args, the training data, the engine; the engine's context when not given."""
    flags.check_train(p, cfg)
    flags.check_engine(p, cfg)
    cfg = check_sft_args(p, cfg)
    if cfg.answer_source == "auto":
        cfg.answer_source = "policy" if cfg.thinking else "mu"
    if cfg.keep_time_is_up and cfg.answer_source == "policy":
        p.error("--keep-time-is-up keeps mu's forcing text: it needs --answer-source mu")
    if cfg.max_model_len is None:
        # a rollout (prompt + max_tokens) and a forced termination (prompt + prefix + suffix + answer)
        limit = getattr(AutoConfig.from_pretrained(cfg.model), "max_position_embeddings", None) or 10 ** 9
        cfg.max_model_len = min(limit, 1024 + cfg.max_tokens + 256 + cfg.prover_max_tokens)
    return cfg


def config(**values):
    """Algorithm 1's config from Python: star.py's flags by name, checked as on the command line."""
    return flags.config(add_star_args, check_star_args, **values)


def sft_config(**values):
    """The SFT loop's config from Python (star.sft): the flags of `star.py sft` but --data, unchecked."""
    return flags.config(add_sft_args, None, **values)


def parse_args(argv=None):
    args_list = sys.argv[1:] if argv is None else list(argv)
    if args_list[:1] == ["sft"]:
        p = argparse.ArgumentParser(prog="star.py sft", formatter_class=argparse.RawDescriptionHelpFormatter,
                                    description="SFT on a JSONL file: the warm start of App. A.2, with the loop "
                                                "Algorithm 1 trains with.\n\n" + SFT_FORMAT)
        add_sft_command_args(p)
        cfg = check_sft_args(p, p.parse_args(args_list[1:]))
        cfg.command = "sft"
        return cfg
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_star_args(p)
    cfg = check_star_args(p, p.parse_args(args_list))
    cfg.command = "star"
    return cfg


def main(argv=None, cfg=None):
    """The command line (Algorithm 1, or `star.py sft`): parse argv, or take a checked cfg (mrt.py's
    --method mrt-star | star), then run and end cleanly on every rank (policy.teardown)."""
    cfg = cfg or parse_args(argv)
    rank, _ = policy.setup_distributed()
    engine, clean = None, False
    try:
        if cfg.command == "sft":
            tokenizer = AutoTokenizer.from_pretrained(cfg.model)
            examples, skipped = load_sft_data(cfg.data, tokenizer, cfg.thinking, cfg.max_seq_length, cfg.truncate)
            if rank == 0:
                print(f"sft: {len(examples)} examples from {cfg.data}, {skipped} skipped as longer than "
                      f"--max-seq-length {cfg.max_seq_length}")
                policy.log_metrics(cfg.out, {"phase": "data", "examples": len(examples), "skipped_too_long": skipped})
            sft(cfg, examples, cfg.model, tokenizer, cfg.out)
        else:
            engine = prover.engine_from_args(cfg, resume_point(cfg)[1], seed=cfg.seed + rank)
            run(cfg, engine=engine)
        clean = True
    finally:
        policy.teardown(engine, clean=clean)


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"star.py: {e}")
    policy.exit_process()
