"""flags.py: the command-line flags the programs share, each defined once, and the types that check them.

Imports: prover (the data folder, the engine's dtypes, load_problems to check --train early), policy
(gpu_choice), memory (the preflight of check_memory). Every
CLI (grpo.py, star.py, mrt.py, evaluate.py, backtrack.py, compare.py) builds its parser from these
groups and adds only the flags that are its own; a flag means the same thing wherever it appears
(a default may differ: Table 2's SFT learning rate is not Table 3's RL one).

    positive_int, nonnegative_int, positive_float, nonnegative_float, fraction, int_list   argparse types
    add_model, add_seed, add_thinking, add_engine, add_train_data, add_optimizer, add_batching,
    add_checkpoints, add_prover                                                           flag groups
    check_model, check_train, check_engine, check_memory                                  checks after parsing
    resolve_memory_flags, memory_plan                                                     the preflight's inputs (bench.py memory)
    config                                                                                a CLI's config from Python
"""

import argparse
import importlib.util
import os
import re

import memory
import policy
import machine
import prover


# ==============================================================================================
# Types: a bad value is an argparse error naming the flag
# ==============================================================================================

def _number(kind, test, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    parse.__name__ = what   # argparse names the type in its message
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
probability = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def int_list(minimum=0):
    """A comma-separated list of integers >= minimum ("1,2,4,8" -> [1, 2, 4, 8])."""
    def parse(text):
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
        if not values or min(values) < minimum:
            raise argparse.ArgumentTypeError(f"expected comma-separated integers >= {minimum}, got {text!r}")
        return values
    parse.__name__ = "integer list"
    return parse


# ==============================================================================================
# Flag groups
# ==============================================================================================

def add_model(p, required=True, help="the model to start from: an HF model folder or a Hugging Face model id "
                                      "(downloaded once into the local HF cache; HF_HUB_OFFLINE=1 reads the cache only)"):
    p.add_argument("--model", required=required, default=None, help=help)


def add_seed(p, help="data order and sampling seed (default 0)"):
    p.add_argument("--seed", type=int, default=0, help=help)


def add_thinking(p):
    p.add_argument("--thinking", choices=("auto", "on", "off"), default="auto",
                   help="does the model think in a <think> block? on: prompts open <think>, episodes are cut "
                        "from the thought, only the text after </think> is graded; off (instruct models with no "
                        "thought block, App. A): the whole response is segmented and graded; auto (default): on "
                        "when the chat template opens <think> or the tokenizer knows <think>")
    p.add_argument("--episode-end", default=None, metavar="REGEX",
                   help="cut an episode right after every match of this regular expression (a statement of the "
                        "search state; the toy world's is its interval statement) instead of at Fig. 21's phrases "
                        "(default: Fig. 21's phrases at a step or sentence start, App. D's >= 3 steps)")


def add_engine(p, max_model_len=None, max_model_len_help=None):
    """The generation engine's flags (prover.make_engine), and --thinking."""
    add_thinking(p)
    p.add_argument("--engine", choices=("vllm", "hf"), default=None,
                   help="generation backend: vllm (default when importable) or hf (transformers, prover.HFEngine)")
    p.add_argument("--dtype", choices=machine.DTYPES, default="auto",
                   help="the engine's compute dtype. auto (default): on GPU the checkpoint's bf16/fp16, an fp32 "
                        "checkpoint in bf16; on a CPU with native bf16 (AVX512-BF16, AMX, ARM BF16) bf16; on any "
                        "other CPU float32, where bf16 would be emulated and 1.5-3.5x slower; the hf engine on a model "
                        "under machine.OVERHEAD_BOUND_PARAMS float32 on a CPU without AMX (faster there). Printed at start")
    p.add_argument("--max-model-len", type=positive_int, default=max_model_len,
                   help=max_model_len_help or "engine context length, prompt + generation (default: the model's own, "
                                              "at most 28672 = 4096 prompt + 24576 completion of Table 3)")
    p.add_argument("--enforce-eager", action="store_true",
                   help="run the model eagerly, without torch.compile: vLLM without compilation and CUDA graphs "
                        "(on CPU ~7-20 s less start-up, ~30%% slower decoding of a tiny model); the hf engine, "
                        "which compiles its decode step only for a model under machine.OVERHEAD_BOUND_PARAMS on CPU, "
                        "decodes eagerly")
    p.add_argument("--gpu-memory-utilization", type=probability, default=None,
                   help="vLLM's share of the GPU, per engine (default: a trainer's engine 0.7 in sleep mode, 0.3 "
                        "awake; an engine alone on its GPU 0.8 as in Table 3, halved for each of evaluate.py's two "
                        "engines with --direct-model, as a given value is; on CPU 0.1 of host RAM)")


def add_train_data(p):
    p.add_argument("--train", default=os.path.join(prover.DATA_DIR, "math_train_4k.jsonl"),
                   help="training problems, JSONL with problem/answer (default data/math_train_4k.jsonl)")
    p.add_argument("--train-years", default=None, metavar="FIRST-LAST",
                   help="keep the training problems whose id holds a year in this range; the paper's DeepScaleR "
                        "runs used AIME 1989-2023 (--train data/aime_1983_2023.jsonl --train-years 1989-2023)")


def add_optimizer(p, lr, epochs, batch_size, source, batch_help):
    """AdamW, its schedule and the run length (policy.make_optimizer); defaults from `source` (a table)."""
    p.add_argument("--lr", type=positive_float, default=lr, help=f"AdamW learning rate ({source}: {lr:g})")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01, help=f"AdamW weight decay ({source}: 0.01)")
    p.add_argument("--warmup-ratio", type=fraction, default=0.1, help=f"linear warmup fraction, then cosine ({source}: 0.1)")
    p.add_argument("--max-grad-norm", type=positive_float, default=1.0, help="gradient-norm clip (default 1.0)")
    p.add_argument("--epochs", type=positive_int, default=epochs, help=f"passes over the data ({source}: {epochs})")
    p.add_argument("--max-steps", type=positive_int, default=None, help="stop after this many optimizer steps "
                                                                         "(default: the epochs')")
    p.add_argument("--batch-size", type=positive_int, default=batch_size, help=f"{batch_help} ({source}: {batch_size})")


def add_batching(p):
    """How a step's sequences are cut into micro-batches (memory knobs: the results do not depend on them)."""
    p.add_argument("--micro-batch-tokens", type=positive_int, default=32768,
                   help="padded tokens per forward/backward on one rank (default 32768)")
    p.add_argument("--pack-sequences", action="store_true",
                   help="pack several sequences into each row (position ids restart per sequence, no attention "
                        "across them) instead of padding each to the longest: less padding, same loss")
    p.add_argument("--gradient-checkpointing", choices=("auto", "on", "off"), nargs="?", const="on", default="auto",
                   help="keep only each layer's input for backward and recompute the rest (Table 2: on). auto "
                        "(default): on on GPU, where 32k tokens of Qwen2-1.5B's activations would take ~95 GB "
                        "without it; off on CPU, where the tiny models need no help and it costs ~1/3 more compute")
    p.add_argument("--vllm-sleep", choices=("auto", "on", "off"), default="auto",
                   help="vLLM sleep mode around each training phase: the engine frees its KV cache and weights "
                        "(level 2) while the policy trains, and gets the new weights, then its KV cache, back at "
                        "the weight sync. auto (default): on on GPU with --engine vllm (sleep mode is CUDA-only); "
                        "off: the engine keeps its memory, so --gpu-memory-utilization must leave room to train")


def add_checkpoints(p, save_every):
    p.add_argument("--save-every", type=positive_int, default=save_every,
                   help=f"checkpoint every N steps, and at the end (default {save_every})")
    p.add_argument("--keep-checkpoints", type=positive_int, default=2, help="checkpoints kept on disk (default 2)")
    p.add_argument("--save-dtype", choices=("auto", "float32", "bfloat16", "float16"), default="auto",
                   help="dtype of a checkpoint's HF weights (what transformers and vLLM load). auto (default): the "
                        "starting model's (bf16 for R1-Distill-Qwen). Below fp32 the fp32 master weights go into "
                        "trainer_state.pt beside the optimizer, so --resume continues exactly")


def add_prover(p, samples, max_tokens, temperature=True, samples_source="App. D", max_tokens_source="App. D: 4096"):
    """The meta-prover mu (Eq. 4): m forced terminations per prefix (samples=None: m is set otherwise,
    e.g. Algorithm 2's G), their budget and temperature."""
    if samples is not None:
        p.add_argument("--prover-samples", type=positive_int, default=samples,
                       help=f"m, forced terminations per prefix behind each J_r(mu | x, z_0:j) ({samples_source}: {samples})")
    p.add_argument("--prover-max-tokens", type=positive_int, default=max_tokens,
                   help=f"tokens of each forced answer (default {max_tokens}; {max_tokens_source})")
    if temperature:
        p.add_argument("--prover-temperature", type=nonnegative_float, default=0.7,
                       help="temperature of mu's samples (App. D: 0.7)")


# ==============================================================================================
# Checks after parsing: files, data and engines, before any work starts
# ==============================================================================================

def option_name(dest):
    """The command-line spelling argparse gives a long option's destination: --direct-model for direct_model."""
    return "--" + dest.replace("_", "-")


def check_model(p, args, dest="model", coordinate=True):
    """--model (or `dest`): a local folder, or a Hugging Face model id replaced by its local snapshot
    folder (machine.resolve_model: downloaded once per node unless HF_HUB_OFFLINE=1); an error names the
    flag. coordinate: a trainer under torchrun joins its process group here, so that one rank per node
    downloads while the others wait (evaluate.py, which has no group, passes False)."""
    name = getattr(args, dest)
    if name is None or os.path.isdir(name):
        return
    if coordinate and int(os.environ.get("WORLD_SIZE", 1)) > 1:
        policy.setup_distributed()
    try:
        setattr(args, dest, machine.resolve_model(name, coordinate=coordinate))
    except ValueError as e:
        p.error(f"{option_name(dest)}: {e}")


def check_train(p, args):
    """--train (a name in data/ or a JSONL path) and --train-years FIRST-LAST, checked by loading the
    problems once, so that a bad file or range is a clear error before any work starts."""
    if isinstance(args.train_years, str):
        try:
            first, last = (int(y) for y in args.train_years.split("-"))
            assert first <= last
        except (ValueError, AssertionError):
            p.error(f"--train-years: expected FIRST-LAST like 1989-2023, got {args.train_years!r}")
        args.train_years = (first, last)
    try:
        prover.load_problems(args.train, years=args.train_years)
    except (OSError, ValueError) as e:
        p.error(f"--train: {e}")


def check_engine(p, args):
    """An engine that cannot be imported is an error before anything starts."""
    if args.engine == "vllm" and importlib.util.find_spec("vllm") is None:
        p.error("--engine vllm: the vllm module cannot be imported (install requirements.txt, or use --engine hf)")
    if getattr(args, "episode_end", None) is not None:
        try:
            pattern = re.compile(args.episode_end)
        except re.error as e:
            p.error(f"--episode-end {args.episode_end!r}: not a regular expression ({e})")
        if pattern.match(""):
            p.error(f"--episode-end {args.episode_end!r} matches the empty text: every position would end an episode")


def resolve_memory_flags(p, args, on_gpu):
    """--gradient-checkpointing and --vllm-sleep as bools for a machine with (on_gpu) or without CUDA
    (auto: on with CUDA; sleep mode also needs --engine vllm); returns the engine's memory fraction
    there (0 for a trainer without a vLLM engine)."""
    args.gradient_checkpointing = policy.gpu_choice(args.gradient_checkpointing, on_gpu)
    engine = getattr(args, "engine", None)
    has_engine = hasattr(args, "gpu_memory_utilization")
    sleep = policy.gpu_choice(args.vllm_sleep, on_gpu)
    if sleep and (not on_gpu or engine == "hf" or not has_engine):
        if args.vllm_sleep == "on" and has_engine:
            p.error("--vllm-sleep on: vLLM's sleep mode needs CUDA and --engine vllm")
        sleep = False
    args.vllm_sleep = sleep
    if not has_engine or engine == "hf":
        return 0.0
    return args.gpu_memory_utilization or machine.default_memory_fraction(on_gpu, trainer=True, sleep_mode=sleep)


def memory_plan(args, fraction, sequence_tokens, world, device_bytes):
    """memory.plan for a GPU run with these (resolved) flags: `sequence_tokens` the longest sequence it
    trains on (it goes alone if longer than --micro-batch-tokens)."""
    from transformers import AutoConfig
    return memory.plan(memory.model_shape(AutoConfig.from_pretrained(args.model)), world=world,
                       tokens=max(args.micro_batch_tokens, sequence_tokens),
                       gradient_checkpointing=args.gradient_checkpointing, bf16=True,
                       beta=getattr(args, "beta", 0.0), fraction=fraction, sleep=args.vllm_sleep,
                       device_bytes=device_bytes)


def check_memory(p, args, sequence_tokens):
    """A trainer's memory flags resolved for this machine (resolve_memory_flags), then on CUDA the
    preflight of one rank (memory_plan): a phase that cannot fit is an error naming the flag to change."""
    import torch
    on_gpu = torch.cuda.is_available()
    fraction = resolve_memory_flags(p, args, on_gpu)
    if not on_gpu:
        return args
    result = memory_plan(args, fraction, sequence_tokens, int(os.environ.get("WORLD_SIZE", 1)),
                         torch.cuda.get_device_properties(policy.device()).total_memory)
    if result.problems:
        p.error("memory preflight (`python bench.py memory` with this run's flags prints every term): "
                + "; ".join(result.problems))
    if int(os.environ.get("RANK", 0)) == 0:
        train, wake = (value for phase, term, value in result.rows if term.startswith(("total", "resident")))
        print(f"memory preflight: training {train / memory.GiB:.1f} GiB, engine awake {wake / memory.GiB:.1f} GiB, "
              f"of {result.device_bytes / memory.GiB:.1f} GiB per GPU", flush=True)
    return args


# ==============================================================================================
# A CLI's config from Python (compare.py trains every method through these, with no argv)
# ==============================================================================================

class RecordingParser(argparse.ArgumentParser):
    """An ArgumentParser that keeps every argument add_argument returns (its documented return value, an
    Action with dest, default, required and option_strings), so that config can list them."""

    def __init__(self, *args, **kwargs):
        self.arguments = []
        super().__init__(*args, **kwargs)
        self.arguments = []          # not -h

    def add_argument(self, *args, **kwargs):
        action = super().add_argument(*args, **kwargs)
        self.arguments.append(action)
        return action


def config(add_args, check=None, **values):
    """The Namespace a CLI would parse: its parser's defaults (add_args(parser)), then `values` by
    destination name (an unknown name is an error), then its check(parser, args) if given. Values are
    Python values, as parsing would have produced them."""
    p = RecordingParser()
    add_args(p)
    defaults = {a.dest: a.default for a in p.arguments}
    unknown = sorted(set(values) - set(defaults))
    if unknown:
        raise TypeError(f"config: no such flag {unknown} (known: {', '.join(sorted(defaults))})")
    args = argparse.Namespace(**{**defaults, **values})
    missing = [a.option_strings[0] for a in p.arguments if a.required and getattr(args, a.dest) is None]
    if missing:
        raise TypeError(f"config: {', '.join(missing)} required")
    return check(p, args) if check else args
