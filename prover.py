"""The prover side of MRT: prompts, generation engines, and the meta-prover mu.

Paper: Sec. 4.2 and Eq. 4 (meta-prover mu), Definition 6.1 (progress), App. D (Fig. 22, the
"time is up" prompt). The 0/1 reward r(x, z) of Sec. 3 lives in grader.py.

    build_prompt, TIME_IS_UP               the chat prompt, and the suffix that forces an answer
    VLLMEngine, HFEngine                   one generate/update_weights interface, two backends
    MetaProver, progress                   J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), r_prg (Def. 6.1)
    answer_prover, score_backtracks        mu and progress in the backtracking setting (App. A.1)

Imports: episodes (thought prefixes, the backtracking format), grader (r(x, z) of mu's answers) and
machine (model files, dtype, memory fraction: what an engine needs before it starts), memory
(the model's shape, for vLLM-CPU's KV cache size);
torch, transformers and vLLM are imported where an engine is built, so that the text-only parts
(prompts, problems) load without them.
"""

import json
import operator
import os
import re
import typing
from dataclasses import dataclass, field

import episodes
import grader
import machine
import memory


# ==============================================================================================
# Problems and prompts
# ==============================================================================================

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")


def load_problems(name_or_path, years=None):
    """Problems x (a name in data/, or any JSONL path) as dicts with id, problem, answer.

    Every line must be a JSON object with string fields "problem" and "answer"; anything else is an
    error naming the file and line. Lines without an "id" get "<file stem>-<line>". years=(first,
    last) keeps the problems whose id holds a year in that range ("aime1994-3", "aime2004-II-7"):
    the paper's DeepScaleR runs trained on "AIME problems from 1989-2023".
    """
    path = name_or_path if os.path.exists(name_or_path) else os.path.join(DATA_DIR, f"{name_or_path}.jsonl")
    if not os.path.isfile(path):
        known = sorted(f[:-len(".jsonl")] for f in os.listdir(DATA_DIR) if f.endswith(".jsonl"))
        raise FileNotFoundError(f"problems {name_or_path!r}: no file {path} (known in data/: {', '.join(known)})")
    stem = os.path.splitext(os.path.basename(path))[0]
    problems = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            for key in ("problem", "answer"):
                if not isinstance(row.get(key), str) or not row[key].strip():
                    raise ValueError(f"{path}:{lineno}: missing or empty string field {key!r}")
            problems.append({"id": str(row.get("id", f"{stem}-{lineno}")), "problem": row["problem"],
                             "answer": row["answer"]})
            if years is not None:
                year = re.search(r"(?<!\d)(1[89]\d\d|20\d\d)(?!\d)", problems[-1]["id"])
                if year is None:
                    raise ValueError(f"{path}:{lineno}: a year filter needs a year in every id, got {problems[-1]['id']!r}")
                if not years[0] <= int(year.group(1)) <= years[1]:
                    problems.pop()
    if not problems:
        raise ValueError(f"{path}: no problems" + (f" from the years {years[0]}-{years[1]}" if years else ""))
    return problems


# R1-Distill's special tokens (the tiny tokenizer uses the same strings, so prompts built for the
# real model and for the tiny one look alike).
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"

# The instruction after the problem (the paper leaves the prompt open; this is the
# DeepSeek-R1 / DeepScaleR evaluation prompt).
PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."

def template_thinks(tokenizer):
    """Whether a model writes a thought block (--thinking auto): yes when its chat template's
    generation prompt opens "<think>" or its vocabulary has a "<think>" token (R1-Distill, QwQ),
    no for plain instruct models (Llama-3.x-Instruct, Qwen2.5-Instruct: App. A's setting)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    return text.rstrip().endswith("<think>") or "<think>" in tokenizer.get_vocab()


def resolve_thinking(flag, tokenizer):
    """--thinking {auto, on, off} as a bool; auto asks template_thinks."""
    if flag not in ("auto", "on", "off"):
        raise ValueError(f"--thinking must be auto, on or off, got {flag!r}")
    return template_thinks(tokenizer) if flag == "auto" else flag == "on"


def build_prompt(tokenizer, problem, thought_prefix="", thinking=True):
    """Token ids of the chat prompt for problem x, with the assistant turn continued by z_{0:j}.

    The user turn is the problem followed by PROMPT_SUFFIX (or `problem` is a list of chat messages,
    used as they are: SFT data may carry its own). With thinking=True the assistant turn
    opens the thought (added here if the template does not do it itself); with thinking=False (a
    model with no thought block) it opens nothing, and a "<think>" the template wrote is taken off.
    Then `thought_prefix` (the first episodes of a response) continues the turn. The text is
    tokenized without the tokenizer's own special tokens, so the BOS the template writes is the
    only one.
    """
    messages = problem if isinstance(problem, list) else [{"role": "user", "content": f"{problem} {PROMPT_SUFFIX}"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    opened = text.rstrip().endswith("<think>")
    if thinking and not opened:
        text += "<think>\n"
    elif not thinking and opened:
        text = text.rstrip()[:-len("<think>")]
    return tokenizer.encode(text + thought_prefix, add_special_tokens=False)


# Fig. 22 (App. D), as we read it: appended to a thought prefix z_{0:j}, it makes the model stop
# thinking, closes the thought and primes a step-by-step answer. This is what turns pi into mu (Eq. 4).
# Not verbatim: the figure prints the closing tag as "\think" and has a stray "*"; we write the
# model's real tag </think> and drop the "*".
TIME_IS_UP = ("Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
              "and formulate a final answer based on what I already have.\n\n</think>\n\n"
              "**Step-by-Step Explanation and Answer:**\n\n1. **")
# A model with no thought block (--thinking off) has no </think> to close: its mu gets the same words
# without the tag, so it is told to stop and answer in the same turn (our reading of Eq. 4 for such
# models, App. A's "give the answer now"; the paper shows no suffix for this setting).
TIME_IS_UP_NO_THOUGHT = TIME_IS_UP.replace("</think>\n\n", "")


def paragraph_break(text):
    """What to append to `text` so that what follows starts a new paragraph (a new step)."""
    if not text or text.endswith("\n\n"):
        return ""
    return "\n" if text.endswith("\n") else "\n\n"


def time_is_up_suffix(thought_prefix, thinking=True):
    """TIME_IS_UP on a paragraph of its own after the prefix (prefixes usually end with a blank line)."""
    return paragraph_break(thought_prefix) + (TIME_IS_UP if thinking else TIME_IS_UP_NO_THOUGHT)


# ==============================================================================================
# Engines: one interface, two backends
# ==============================================================================================

def cpu_kv_cache_bytes(model, dtype, max_model_len, cap_gib=1, sequences=512):
    """vllm-cpu's KV cache: room for `sequences` sequences of max_model_len tokens (vllm-cpu schedules 256
    at once, vllm/engine/arg_utils.py:2980; as many again for the prefix cache to keep), at most cap_gib GiB.
    A bigger cache than that only costs time: reset_prefix_cache, after every weight sync, walks every block
    (vllm/v1/core/block_pool.py:827): 1 GiB of the tiny benchmark model's cache is 65,536 blocks, 2.8 ms
    per reset; 64 MiB, 0.4 ms. Bytes per token: keys and values of every layer."""
    import torch
    from transformers import AutoConfig
    shape = memory.model_shape(AutoConfig.from_pretrained(model))
    itemsize = getattr(torch, machine.resolve_dtype(model, dtype, on_gpu=False, engine="vllm")[0]).itemsize
    per_token = 2 * shape.layers * shape.kv_dim * itemsize
    return min(int(cap_gib * 2**30), per_token * max_model_len * sequences)


def load_vllm(model, dtype="auto", max_model_len=4096, gpu_memory_utilization=None, seed=0,
              enforce_eager=None, enable_prefix_caching=True, kv_cache_gib=1, sleep_mode=False, trainer=False):
    """A vLLM engine in the calling process (one per torchrun rank, tensor parallel 1).

    On CPU (vllm-cpu) the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, which also makes
    in-place weight reloads reach it) and the KV cache gets what cpu_kv_cache_bytes says, at most
    `kv_cache_gib` GiB. The model is compiled
    (torch.compile; CUDA graphs on GPU) unless enforce_eager: on this 2-core CPU, compiling the tiny
    benchmark model costs ~7 s more start-up (~20 s with an empty compile cache) and decodes ~30 %
    faster (95 vs 132 ms for 16 x 64 tokens); the tests run eager.
    gpu_memory_utilization defaults to machine.default_memory_fraction(...). sleep_mode (CUDA only: vLLM refuses
    it on other platforms, vllm/config/model.py:655-662) lets VLLMEngine.sleep free the GPU for training.
    """
    import torch
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    machine.quiet_vllm_logs()
    from vllm import LLM
    if enforce_eager is None:
        enforce_eager = False
    if gpu_memory_utilization is None:
        gpu_memory_utilization = machine.default_memory_fraction(on_gpu, trainer, sleep_mode)
    # vllm-cpu 0.32 crashes on a seeded request whose prompt is prefilled in chunks ("CPU Generator
    # does not use offset"), so on CPU a prompt is always prefilled whole.
    # Blocks of 32 tokens on CPU (vllm-cpu's default is 128; its attention needs a multiple of 32): the
    # prefix cache shares only whole blocks, so test-size prompts share theirs as long ones do on GPU.
    cpu_prefill = {} if on_gpu else dict(enable_chunked_prefill=False, max_num_batched_tokens=max_model_len,
                                         block_size=32)
    # Inside a torchrun job whose process group is already up (the trainers), each rank's engine
    # joins it as an "external launcher" instead of starting workers of its own: with tensor
    # parallel 1 every rank is an independent engine (checked on vllm-cpu with gloo, 2 ranks).
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        cpu_prefill["distributed_executor_backend"] = "external_launcher"
    if sleep_mode:
        cpu_prefill["enable_sleep_mode"] = True
    if not on_gpu and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:   # the user's setting wins (vLLM reads it)
        cpu_prefill["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(model, dtype, max_model_len, kv_cache_gib)
    return LLM(model=model, dtype=dtype, max_model_len=max_model_len,
               gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
               enable_prefix_caching=enable_prefix_caching, tensor_parallel_size=1,
               disable_log_stats=False, **cpu_prefill)  # stats on: prompt_stats() reads the cache counters


@dataclass
class Sample:
    """One sampled continuation."""
    text: str            # decoded without special tokens (the EOS is not in the text)
    token_ids: list      # generated ids, the EOS included when the model stopped on it
    finish_reason: str   # "stop" (EOS) or "length" (hit max_tokens or the model's context)

    @property
    def num_tokens(self):
        return len(self.token_ids)


class Engine(typing.Protocol):
    """What every backend offers (VLLMEngine, HFEngine). Prompts are strings or token-id lists;
    strings are tokenized without added special tokens (build_prompt already wrote the BOS)."""
    tokenizer: typing.Any

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None) -> list:
        """n Samples per prompt (a list per prompt). seed: None (the engine's own), an int (each
        prompt gets its own seed derived from it, per_prompt_seeds), or a list of one int per prompt
        (prompt i gets exactly seeds[i]: equal seeds, equal random numbers; MetaProver's
        common_random_numbers)."""
        ...

    def update_weights(self, named_tensors) -> None: ...

    def sleep(self) -> None: ...   # free GPU memory while the policy trains, until update_weights

    def close(self) -> None: ...


def shortest_decoding_prefix(tokenizer, ids, num_chars, **decode_kwargs):
    """The smallest n >= 1 whose ids[:n] decode to at least num_chars characters (binary search: the
    decoded length grows with n)."""
    lo, hi = 1, len(ids)
    while lo < hi:
        mid = (lo + hi) // 2
        if len(tokenizer.decode(ids[:mid], **decode_kwargs)) >= num_chars:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _prompt_ids(tokenizer, prompt, max_model_len, index):
    ids = tokenizer.encode(prompt, add_special_tokens=False) if isinstance(prompt, str) else [int(t) for t in prompt]
    if not ids:
        raise ValueError(f"generate: prompt {index} is empty")
    if len(ids) >= max_model_len:
        raise ValueError(f"generate: prompt {index} has {len(ids)} tokens, which leaves no room to generate "
                         f"within max_model_len={max_model_len}; raise --max-model-len or shorten the prompt")
    return ids


def per_prompt_seeds(seed, count, step):
    """The seed of each of `count` prompts: seed + i * step for an int seed (the engines' rule since
    before lists: vLLM steps by n, its n samples taking consecutive seeds; HF by 1), seeds[i] for a list
    of one int per prompt, None for every prompt when seed is None."""
    if seed is None:
        return [None] * count
    if isinstance(seed, (list, tuple)):
        if len(seed) != count:
            raise ValueError(f"generate: seed is a list of {len(seed)} seeds for {count} prompts; "
                             f"give one seed per prompt (or one int for all)")
        return [operator.index(s) for s in seed]
    seed = operator.index(seed)
    return [seed + i * step for i in range(count)]


def _budget(max_tokens, i):
    """Prompt i's token budget: max_tokens is one number for all prompts, or a list."""
    return max(1, max_tokens[i] if isinstance(max_tokens, (list, tuple)) else max_tokens)


class VLLMEngine:
    """vLLM in the calling process (vllm-cpu here, CUDA vLLM on GPU), prefix caching on.

    Prompt i gets seed + i * n: vLLM seeds the n samples of a request with consecutive seeds, so
    this keeps every sample's random stream distinct across the batch, and reproducible.
    """

    def __init__(self, model, dtype="auto", max_model_len=4096, gpu_memory_utilization=None, seed=0,
                 enable_prefix_caching=True, enforce_eager=None, kv_cache_gib=1, sleep_mode=False, trainer=False):
        self.dtype = machine.resolve_dtype(model, dtype, engine="vllm")[0]
        self.llm = load_vllm(model, dtype=self.dtype, max_model_len=max_model_len,
                             gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
                             enable_prefix_caching=enable_prefix_caching, kv_cache_gib=kv_cache_gib,
                             sleep_mode=sleep_mode, trainer=trainer)
        self.sleep_mode, self.asleep = sleep_mode, False
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = max_model_len
        from transformers import AutoConfig
        self.tied_embeddings = bool(getattr(AutoConfig.from_pretrained(model), "tie_word_embeddings", False))

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        """n samples per prompt; generation also ends at any string in `stop` (left out of the text).
        max_tokens: one budget for all prompts, or a list with one per prompt. seed: None, an int (prompt
        i is seeded seed + i * n) or a list of one int per prompt (prompt i is seeded seeds[i]); a
        prompt's n samples take consecutive seeds from its own (vLLM's parallel sampling)."""
        from vllm import SamplingParams
        if self.asleep:
            raise RuntimeError("generate: the engine is asleep and its weights were discarded (level 2): "
                               "update_weights first (policy.sync_weights)")
        ids = [_prompt_ids(self.tokenizer, p, self.max_model_len, i) for i, p in enumerate(prompts)]
        seeds = per_prompt_seeds(seed, len(ids), n)   # an int: seed + i * n, as always
        copies = n if temperature == 0 else 1  # vLLM allows n = 1 only when greedy: copy the one sample
        # without stop strings vLLM need not detokenize every step (~5 % of a CPU decode step): the
        # texts are decoded once at the end instead
        detokenize = bool(stop)
        params = [SamplingParams(n=n // copies, temperature=temperature, top_p=top_p,
                                 max_tokens=min(_budget(max_tokens, i), self.max_model_len - len(p)),
                                 seed=seeds[i], stop=stop, detokenize=detokenize)
                  for i, p in enumerate(ids)]
        outputs = self.llm.generate([{"prompt_token_ids": p} for p in ids], params, use_tqdm=False)
        samples = []
        for out in outputs:
            samples.append([Sample(c.text if detokenize else self.tokenizer.decode(c.token_ids, skip_special_tokens=True),
                                   list(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                            for c in out.outputs for _ in range(copies)])
        return samples

    def prompt_stats(self):
        """Prompt tokens scheduled so far (each of a request's n samples counts) and how many of them
        came from the prefix cache, from vLLM's own counters: computed = total - cached."""
        counters = {m.name: m.value for m in self.llm.get_metrics() if hasattr(m, "value")}
        return {"prompt_tokens": int(counters.get("vllm:prompt_tokens", 0)),
                "cached_prompt_tokens": int(counters.get("vllm:prompt_tokens_cached", 0))}

    def update_weights(self, named_tensors):
        """Load new policy weights into the live engine, one tensor at a time, and drop the prefix
        cache (its KV entries were computed by the old weights). HF parameter names.

        With tied embeddings a policy streams only model.embed_tokens.weight, and vLLM 0.32's reload
        then updates the input embedding but not the output head, so its greedy decoding would drift
        from the policy's. The embedding is therefore sent a second time under the name lm_head.weight.
        """
        def stream():
            for name, tensor in named_tensors:
                yield name, tensor
                if self.tied_embeddings and name == "model.embed_tokens.weight":
                    yield "lm_head.weight", tensor
        if self.asleep:
            # wake in two steps so that the weights and the KV cache are never both allocated beside
            # the trainer's cached blocks: hand those back to the driver first (vLLM's sleep-mode
            # memory comes from its own cuMem pool, vllm/device_allocator/cumem.py, not torch's cache)
            import torch
            torch.cuda.empty_cache()
            self.llm.wake_up(tags=["weights"])   # restores the buffers saved at sleep (gpu_worker.py:338-346)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream()})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()          # reload_weights keeps the cache of the old weights

    def sleep(self):
        """Free this engine's GPU memory while the policy trains (an engine built with sleep_mode; else
        nothing): level 2 discards the weights and the KV cache (vllm/entrypoints/llm.py:836-867; the
        prefix cache is reset with them, v1/engine/core.py:973-974). The next update_weights brings
        both back; generate refuses until then."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def close(self):
        """Shut the engine down now, not in an exit handler. Call it before the process group is
        destroyed: vLLM's teardown destroys its own groups and then torch's default group too (it
        joined ours as external launcher, or reused it), and run at exit after our teardown it raises
        "Invalid process group specified". Idempotent."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()


def race_noise(row_keys, step, vocab):
    """Exp(1) noise [rows, vocab] for the exponential race, from a counter-based hash: entry (r, v) is a
    function of (row_keys[r], step, v) alone, so a row's draws never depend on its batch.

    The hash is the 32-bit integer mixer x ^= x >> 16; x *= 0x45D9F3B (twice), on int64 tensors whose
    values stay below 2^32 (the multiplier is below 2^27: no product overflows). Its top 24 bits give
    u in (0, 1), never 0 or 1, and E = -log(u).
    """
    import torch

    def mix(x):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
        return x ^ (x >> 16)
    start = mix((row_keys + (step & 0xFFFFFFFF) * 0x2545F49) & 0xFFFFFFFF)                        # [rows]
    h = mix((start[:, None] + torch.arange(vocab, device=row_keys.device) * 0x27D4EB3) & 0xFFFFFFFF)  # [rows, V]
    u = ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))
    return -torch.log(u)


def row_keys(seeds, n):
    """The noise key of each of a batch's rows: prompt k (seed seeds[k]) has rows k*n .. k*n+n-1, and
    row j of a prompt gets its own key, a hash of (seed, j) below 2^32."""
    import hashlib
    return [int.from_bytes(hashlib.blake2b(f"{s}/{j}".encode(), digest_size=4).digest(), "little")
            for s in seeds for j in range(n)]


class HFEngine:
    """transformers forward passes in a hand-written decode loop: the engine for machines without vLLM, and
    on CPU the faster one for plain sampling from a model so small that a decode step is framework overhead
    (machine.overhead_bound): 16 rows x 64 tokens of the side-by-side's tiny Qwen2 take 54 ms compiled, 104 ms
    eager, 95 ms on vLLM-CPU (README, Speed). vLLM keeps the toy run: its prefix cache serves mu's prompts.

    Every prompt x n samples goes in one batch, left padded, with a static KV cache (transformers'
    StaticCache: preallocated, written in place), so every decode step has the same shapes and, for an
    overhead-bound model on CPU, runs compiled (torch.compile of forward pass + sampling, one graph for every
    batch size and cache length, built when the engine starts; enforce_eager=True decodes eagerly). Rows that
    finish decode on (their tokens discarded) until half of the batch is done; then they leave it and its cache.

    Sampling is the exponential race (argmax of p / E with E ~ Exp(1), the same draw as sampling from p)
    with counter-based noise (race_noise): row j of prompt i draws from a key of (seed + i, j) ((seeds[i], j)
    for a list of seeds), so a prompt's samples do not depend on which other prompts share its batch, up to
    float rounding of the padded forward, and a batch's noise is a few vectorised integer ops per step, not
    one generator call per prompt.
    """

    def __init__(self, model, dtype="auto", max_model_len=4096, device=None, seed=0, max_batch_tokens=65536,
                 enforce_eager=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.dtype = machine.resolve_dtype(model, dtype, on_gpu=self.device != "cpu", engine="hf")[0]
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, self.dtype)).to(self.device).eval()
        self.max_model_len = max_model_len
        self.seed = seed
        self.max_batch_tokens = max_batch_tokens  # rows x cache length per batch: bounds the KV cache
        if enforce_eager is None:
            enforce_eager = self.device != "cpu" or not machine.overhead_bound(model)
        self.compiled = not enforce_eager
        self._step = self._decode_step
        if self.compiled:
            # Build the graphs now, not inside a timed generate: one decode step of a 2-token prompt for 2 rows
            # and a 64-token cache, then 3 rows and 128 (after which torch.compile treats the batch size and
            # the cache length as symbolic: no more graphs for them), then a single row (sizes 0 and 1 always
            # get their own graph): ~20 s on 2 cores. Greedy decoding and top-p < 1 build theirs when first used.
            self._step = torch.compile(self._decode_step, fullgraph=True)
            for rows, length in ((2, 64), (3, 128), (1, 64)):
                if length <= max_model_len:
                    self._decode([[0, 0]], [length - 2], [0], rows, 1.0, 1.0, stop_after=1)

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        """n samples per prompt; a string in `stop` ends a sample (cut after generation, left out of the text).
        max_tokens: one budget for all prompts, or a list with one per prompt. seed: None (the engine's
        seed), an int (prompt i draws from row_keys of seed + i) or a list of one int per prompt (prompt i
        draws from row_keys of seeds[i])."""
        ids = [_prompt_ids(self.tokenizer, p, self.max_model_len, i) for i, p in enumerate(prompts)]
        budgets = [min(_budget(max_tokens, i), self.max_model_len - len(p)) for i, p in enumerate(ids)]
        seeds = per_prompt_seeds(self.seed if seed is None else seed, len(ids), 1)   # an int: seed + i, as always
        samples = []
        # whole prompts per batch (a prompt's n rows share its seed), bounded in cache tokens
        batch = []
        for i in range(len(ids) + 1):
            grown = batch + [i] if i < len(ids) else batch
            if batch and (i == len(ids) or n * len(grown) * self._cache_length(
                    max(len(ids[j]) for j in grown), max(budgets[j] for j in grown)) > self.max_batch_tokens):
                rows = self._decode([ids[j] for j in batch], [budgets[j] for j in batch], [seeds[j] for j in batch],
                                    n, temperature, top_p)
                samples.extend(self._samples(rows[k * n:(k + 1) * n], stop) for k in range(len(batch)))
                batch = []
            if i < len(ids):
                batch.append(i)
        return samples

    def _cache_length(self, width, budget):
        """The static cache's length for prompts of `width` tokens and `budget` new ones: the next power of
        two, at least 64 (the decode step's cost grows with it: a model with fewer KV heads than heads
        copies the whole cache each step in transformers' SDPA path, repeat_kv). Compiled, a second length makes
        it symbolic (transformers' mask code reads it as a Python int): the warm-up in __init__ covers that."""
        need = width + budget
        return min(max(64, 1 << (need - 1).bit_length()), max(self.max_model_len, need))

    def _forward(self, x, attention_mask, positions, cache_position, cache):
        """One forward pass over the static cache: the last position's logits [rows, V] in fp32."""
        return self.model(input_ids=x, attention_mask=attention_mask, position_ids=positions, past_key_values=cache,
                          cache_position=cache_position, use_cache=True).logits[:, -1].float()

    @staticmethod
    def _next_token(logits, keys, step, temperature, top_p, greedy, nucleus):
        """Each row's next token [rows] from its logits [rows, V]: greedy, or the race at `temperature`
        with the nucleus cut at `top_p` when `nucleus`. temperature and top_p are 0-dim tensors, so a
        compiled step serves every value; greedy and nucleus (bools) pick its graph."""
        import torch
        if greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if nucleus:   # keep the smallest set of top tokens with mass >= top_p
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p >= top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        return (probs / race_noise(keys, step, probs.shape[-1])).argmax(-1)

    def _decode_step(self, token, mask, position, cache_position, cache, keys, step, temperature, top_p, greedy, nucleus):
        """One decode step, the part that runs compiled: the forward pass of the last tokens and the
        next ones sampled from it."""
        logits = self._forward(token[:, None], mask, position, cache_position, cache)
        return self._next_token(logits, keys, step, temperature, top_p, greedy, nucleus)

    def _decode(self, prompt_ids, budgets, seeds, n, temperature, top_p, stop_after=None):
        """The decode loop: the generated ids of every row (prompt k's n rows are k*n .. k*n+n-1).
        stop_after: end after that many decode steps (the warm-up's: the graph is built by the first)."""
        import torch
        from transformers import StaticCache
        dev = self.device
        eos = -1 if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id
        rows = [p for p in prompt_ids for _ in range(n)]
        width, B, T = max(len(p) for p in rows), len(rows), max(budgets)
        length = self._cache_length(width, T)
        ids = torch.zeros((B, width), dtype=torch.long)
        # the mask covers the whole cache: prompt tokens and every position from `width` on (the causal
        # mask hides the ones not written yet), left padding 0; it never changes while decoding
        mask = torch.ones((B, length), dtype=torch.long)
        for r, p in enumerate(rows):                     # left padding: every row's last token is at width - 1
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, :width - len(p)] = 0
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask[:, :width].cumsum(1) - 1).clamp(min=0)                               # [B, width]
        keys = torch.tensor(row_keys(seeds, n), dtype=torch.long, device=dev)                   # [B]
        budget = torch.tensor([b for b in budgets for _ in range(n)], device=dev)               # [B]
        out = torch.zeros((B, T), dtype=torch.long, device=dev)
        lengths = torch.zeros(B, dtype=torch.long, device=dev)     # tokens kept per row (0: still going)
        alive = torch.arange(B, device=dev)                        # the batch's rows, as rows of `out`
        cache = StaticCache(config=self.model.config, max_cache_len=length)
        with torch.no_grad():
            logits = self._forward(ids, mask, positions, torch.arange(width, device=dev), cache)   # prefill [B, V]
            sampling = dict(temperature=torch.tensor(max(temperature, 1e-6), device=dev), top_p=torch.tensor(top_p, device=dev),
                            greedy=temperature <= 0, nucleus=temperature > 0 and top_p < 1.0)
            token = self._next_token(logits, keys, torch.tensor(0, device=dev), **sampling)               # [B]
            position = positions[:, -1:]                                                           # [B, 1]
            if self.compiled:
                # transformers marks the cache's tensors as static addresses (for CUDA graphs), which fixes the
                # batch size of the graph; unmarked, the batch size and cache length are symbolic after a
                # second shape (torch/_dynamo/decorators.py, mark_static_address sets _dynamo_static_input_type)
                for layer in cache.layers:
                    for tensor in (layer.keys, layer.values):
                        if hasattr(tensor, "_dynamo_static_input_type"):
                            del tensor._dynamo_static_input_type
            for t in range(T):
                out[alive, t] = token
                still = lengths[alive] == 0
                ends = still & ((token == eos) | (t + 1 >= budget[alive]))
                lengths[alive[ends]] = t + 1
                going = still & ~ends
                count = int(going.sum())
                if count == 0:
                    break
                if 2 * count <= len(alive) and len(alive) > 8:   # half the batch is done: drop those rows
                    index = going.nonzero().squeeze(1)
                    for layer in cache.layers:
                        layer.keys, layer.values = layer.keys[index], layer.values[index]
                    alive, token, keys, mask, position = alive[index], token[index], keys[index], mask[index], position[index]
                position = position + 1
                token = self._step(token, mask, position, torch.tensor([width + t], device=dev), cache, keys,
                                   torch.tensor(t + 1, device=dev), **sampling)
                if stop_after is not None and t + 1 >= stop_after:
                    break
        lengths = lengths.tolist()
        return [row[:k] for row, k in zip(out.tolist(), lengths)]

    def _samples(self, rows, stop):
        eos = self.tokenizer.eos_token_id
        samples = []
        for tokens in rows:
            stopped = tokens[-1] == eos
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            found = min(((text.find(s), s) for s in stop or () if s in text), default=None)
            if found is not None:  # keep the tokens up to the one that completes the stop string
                cut, end = found[0], found[0] + len(found[1])
                stopped, text = True, text[:cut]
                tokens = tokens[:shortest_decoding_prefix(self.tokenizer, tokens, end, skip_special_tokens=True)]
            samples.append(Sample(text, tokens, "stop" if stopped else "length"))
        return samples

    def update_weights(self, named_tensors):
        """Copy new weights into the model in place, one tensor at a time (HF parameter names)."""
        import torch
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"update_weights: {name!r} is not a weight of this model")
                state[name].copy_(tensor.to(state[name].dtype))

    def sleep(self):
        """Nothing to free: the HF engine keeps no KV cache between calls."""

    def close(self):
        self.model = None


def vllm_available():
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def engine_from_args(args, model, seed):
    """make_engine with the shared engine flags of add_engine_args. A trainer's args carry vllm_sleep
    (flags.add_batching, resolved to a bool by flags.check_memory): its engine is built colocated."""
    # sleep mode only once flags.check_memory has resolved --vllm-sleep to True (an unchecked "auto" is off)
    colocated = {"sleep_mode": args.vllm_sleep is True, "trainer": True} if hasattr(args, "vllm_sleep") else {}
    return make_engine(model, engine=args.engine, dtype=args.dtype, max_model_len=args.max_model_len,
                       gpu_memory_utilization=args.gpu_memory_utilization, seed=seed,
                       **({"enforce_eager": True} if args.enforce_eager else {}), **colocated)


def make_engine(model, engine=None, dtype="auto", max_model_len=None, gpu_memory_utilization=None, seed=0, **kwargs):
    """VLLMEngine or HFEngine by name; engine=None picks vllm when it can be imported.

    max_model_len=None takes the model's max_position_embeddings, capped at 28672 (Table 3's 4096 +
    24576); a larger value than the model supports is an error here, before any engine starts.
    """
    machine.check_gpu_install()
    from transformers import AutoConfig
    limit = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
    if max_model_len is None:
        max_model_len = min(limit or 28672, 28672)
    elif limit is not None and max_model_len > limit:
        raise ValueError(f"--max-model-len {max_model_len} exceeds the model's max_position_embeddings {limit} ({model})")
    engine = engine or ("vllm" if vllm_available() else "hf")
    if engine not in ("vllm", "hf"):
        raise ValueError(f"--engine must be vllm or hf, got {engine!r}")
    dtype, why = machine.resolve_dtype(model, dtype, engine=engine)
    if os.environ.get("RANK", "0") == "0":
        print(f"engine {engine}: dtype {dtype} ({why})", flush=True)
    if engine == "vllm":
        return VLLMEngine(model, dtype=dtype, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization, seed=seed, **kwargs)
    # hf: vLLM's own options (prefix caching, sleep mode) do not apply; enforce_eager does (compiled decode)
    return HFEngine(model, dtype=dtype, max_model_len=max_model_len, seed=seed, enforce_eager=kwargs.get("enforce_eager"))


# ==============================================================================================
# The meta-prover mu (Eq. 4) and progress (Definition 6.1)
# ==============================================================================================

@dataclass
class PrefixScores:
    """mu's results on the k + 1 thought prefixes z_{0:j}, j = 0..k, of one trace."""
    success_rates: list                          # J_r(mu | x, z_{0:j}): mean 0/1 reward of the m samples
    answers: list                                # answers[j]: the m extracted answers (None: no answer)
    rewards: list = field(default_factory=list)  # rewards[j]: the m 0/1 rewards
    num_tokens: list = field(default_factory=list)  # num_tokens[j]: tokens of each forced answer
    texts: list = field(default_factory=list)    # texts[j]: the m forced answers themselves (star.py trains on one)


def prefix_token_ids(tokenizer, response_ids, prefix):
    """Token ids of a thought prefix: a slice of the response's own ids when one decodes to exactly
    `prefix` (no re-tokenisation drift), else the prefix tokenized afresh."""
    if response_ids is not None and prefix:
        n = shortest_decoding_prefix(tokenizer, response_ids, len(prefix))
        if tokenizer.decode(response_ids[:n]) == prefix:
            return list(response_ids[:n])
    return tokenizer.encode(prefix, add_special_tokens=False) if prefix else []


def success_rate(rewards):
    """J_r(mu | x, z_{0:j}) (Eq. 4) estimated from the 0/1 rewards of m forced terminations: their mean.
    The one place J_r is computed (MetaProver, Algorithm 2's terminations, the analyses)."""
    return sum(rewards) / len(rewards)


def forced_success_rate(samples, gold, lead=""):
    """Equation 4: J_r(mu | x, z_{0:j}) = E_{y ~ mu(.|x, z_{0:j})} r(x, y), estimated by the mean 0/1
    reward of the m forced-termination samples y_1..y_m. Returns (rate, answers, rewards).

    mu's samples are answers after a closed thought, so each is graded whole (thinking=False), after
    `lead` (the part of the answer the forcing suffix already wrote, such as "Answer:").
    """
    answers = [grader.extract_answer(lead + s.text, thinking=False) for s in samples]
    rewards = [grader.reward(lead + s.text, gold, thinking=False) for s in samples]   # r(x, y), as every other grade
    return success_rate(rewards), answers, rewards


class MetaProver:
    """The meta-prover mu(.|x, z_{0:j}) = pi(.|x, z_{0:j}, "Time is up...", </think>) (Eq. 4, Fig. 22).

    For every thought prefix of a trace it samples m forced-termination answers and grades them
    with the 0/1 reward: J_r(mu | x, z_{0:j}) = mean reward. The defaults are App. D's: m = 8 samples
    at temperature 0.7, 4096 max tokens. thinking=False (a model with no thought block): the prefix
    is the start of the response itself and the suffix is TIME_IS_UP_NO_THOUGHT. `suffix` replaces
    the forcing text for other formats (the backtracking setting forces "Answer:", App. A), with
    `stop` strings that end its samples; a sample is graded after the suffix.

    common_random_numbers=True samples all k + 1 prefixes of one trace with ONE seed (trace t of a
    score call, counted over all its traces: seed + t * m; the engines' list seed), so the m samples
    at every boundary share their random numbers and a difference of J_r between two boundaries
    (Def. 6.1's progress) keeps less sampling noise: in a simulation the sd of such a difference was
    ~3x lower, at no cost (as many samples as before, only their seeds change). Off by default: the old seeds
    (prompt i of a generate call: seed + i * m), so existing results do not change.
    """

    def __init__(self, engine, m=8, temperature=0.7, top_p=1.0, max_tokens=4096, seed=0, batch_prompts=256,
                 thinking=True, suffix=None, stop=None, common_random_numbers=False):
        if common_random_numbers and seed is None:
            raise ValueError("MetaProver: common_random_numbers needs an int seed (the traces' seeds derive from it)")
        self.engine, self.tokenizer, self.thinking = engine, engine.tokenizer, thinking
        self.m, self.temperature, self.top_p, self.max_tokens, self.seed = m, temperature, top_p, max_tokens, seed
        self.batch_prompts, self.suffix, self.stop = batch_prompts, suffix, stop
        self.common_random_numbers = common_random_numbers

    def prompts(self, problem, thought_prefixes, response_ids=None):
        """Token ids of x, z_{0:j}, TIME_IS_UP for every prefix: shared heads, so one prefix cache."""
        head = build_prompt(self.tokenizer, problem, thinking=self.thinking)
        return [head + prefix_token_ids(self.tokenizer, response_ids, prefix)
                + self.tokenizer.encode(time_is_up_suffix(prefix, self.thinking) if self.suffix is None
                                        else paragraph_break(prefix) + self.suffix, add_special_tokens=False)
                for prefix in thought_prefixes]

    def score(self, traces, m=None, max_tokens=None, progress_bar=False, seeds=None):
        """PrefixScores for many traces: (problem, gold, thought_prefixes[, response_ids]) tuples.

        Traces are packed into generate calls of about batch_prompts prompts; a trace's prefixes
        always go into the same call, so the engine (vLLM prefix caching) computes their shared
        prefix once (bench.py prefix-cache counts the prompt tokens actually computed).
        With common_random_numbers, trace t (t counted over all of `traces`) seeds every one of its
        prompts with self.seed + t * m: its m samples take seeds self.seed + t * m + 0 .. m - 1 (vLLM) or the
        same row keys (HF), so traces never share seeds, prefixes of one trace always do.
        seeds: one seed per trace, given by the caller (common random numbers whatever the option says):
        mrt_rl.py gives a continuation's boundaries the seed of its prompt's forced terminations.
        """
        if seeds is not None and len(seeds) != len(traces):
            raise ValueError(f"MetaProver.score: {len(seeds)} seeds for {len(traces)} traces")
        from tqdm import tqdm
        m, max_tokens = m or self.m, max_tokens or self.max_tokens
        results, batch, size = [], [], 0
        bar = tqdm(total=len(traces), desc="meta-prover", unit="trace", disable=not progress_bar)

        def flush():
            prompts = [q for _, ps in batch for q in ps]
            seed = self.seed
            first = len(results)             # traces already scored: t of this batch's first trace
            if seeds is not None:            # the caller's seed per trace, repeated over its prefixes
                seed = [seeds[first + k] for k, (_, ps) in enumerate(batch) for _ in ps]
            elif self.common_random_numbers:   # one seed per trace, repeated over its prefixes
                seed = [self.seed + (first + k) * m for k, (_, ps) in enumerate(batch) for _ in ps]
            samples = self.engine.generate(prompts, n=m, temperature=self.temperature, top_p=self.top_p,
                                           max_tokens=max_tokens, seed=seed, stop=self.stop)
            at = 0
            for gold, ps in batch:
                rows = samples[at:at + len(ps)]  # rows[j]: the m samples of mu at prefix z_{0:j}
                at += len(ps)
                scored = [forced_success_rate(row, gold, self.suffix or "") for row in rows]
                results.append(PrefixScores(success_rates=[rate for rate, _, _ in scored],
                                            answers=[answers for _, answers, _ in scored],
                                            rewards=[rewards for _, _, rewards in scored],
                                            num_tokens=[[s.num_tokens for s in row] for row in rows],
                                            texts=[[s.text for s in row] for row in rows]))
            bar.update(len(batch))
            batch.clear()

        for trace in traces:
            problem, gold, thought_prefixes = trace[:3]
            response_ids = trace[3] if len(trace) > 3 else None
            ps = self.prompts(problem, thought_prefixes, response_ids)
            if batch and size + len(ps) > self.batch_prompts:
                flush()
                size = 0
            batch.append((gold, ps))
            size += len(ps)
        if batch:
            flush()
        bar.close()
        return results

    def success_rates(self, problem, gold, thought_prefixes, m=None, max_tokens=None, response_ids=None):
        """J_r(mu | x, z_{0:j}) for j = 0..k (Eq. 4), with the answers behind them, in one generate call."""
        return self.score([(problem, gold, thought_prefixes, response_ids)], m=m, max_tokens=max_tokens)[0]


def progress(success_rates):
    """Definition 6.1: r_prg(z_j; c_{j-1}) = J_r(mu | x, z_{0:j+1}) - J_r(mu | x, z_{0:j}), for j = 0..k-1.

    success_rates holds J_r for the k + 1 prefixes (the empty one first). Returns (progress per
    episode, cumulative progress), where cumulative[j] = sum_{i<=j} r_prg(z_i) = J_r(z_{0:j+1}) - J_r(empty).
    """
    per_episode = [b - a for a, b in zip(success_rates, success_rates[1:])]
    cumulative = [b - success_rates[0] for b in success_rates[1:]]  # the telescoped sum: equal J_r, equal values
    return per_episode, cumulative


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


def answer_prover(engine, m=8, max_tokens=64, temperature=0.7, seed=0):
    """mu for this setting: prover.MetaProver with "Answer:" as the forcing suffix, one line per answer."""
    return MetaProver(engine, m=m, temperature=temperature, max_tokens=max_tokens, seed=seed, thinking=False,
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
        traces.append((episodes.backtrack_messages(problem), gold, [episodes.kept_prefix(bts, i) for i in range(len(bts))]))
    forced = iter(mu.score(traces))
    out = []
    for (problem, gold, _), bts in zip(items, parsed):
        if bts is None:
            out.append(None)
            continue
        f = next(forced)
        grade = lambda answer: grader.reward(f"Answer: {answer}", gold, thinking=False)  # noqa: E731
        out.append([BacktrackScores(grade(b.attempt_answer), rate, grade(b.revision_answer), answers)
                    for b, rate, answers in zip(bts, f.success_rates, f.answers)])
    return out
