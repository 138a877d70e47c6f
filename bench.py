"""Benchmarks: each prints its figures; none is a test. Run `python bench.py NAME --help`.

    python bench.py episodes     # segmentation of a synthetic 16k-token R1-style trace (Sec. 5, App. D)
    python bench.py reward       # the 0/1 grader on every math500 + minerva gold answer (Sec. 3)
    python bench.py prefix-cache # scoring all prefixes of one trace with mu (Eq. 4): vLLM cache on/off, HF
    python bench.py padding      # padded share of training tokens: padded vs packed rows (--pack-sequences)
    python bench.py decode       # decode speed per engine, dtype and mode, random models 0.6M-77M: where a CPU
                                 # decode step stops being overhead (machine.OVERHEAD_BOUND_PARAMS)
    python bench.py grpo         # GRPO steps on the tiny model under torchrun, 1 and 2 ranks: tokens/s;
                                 # then training FLOP/s of a 135M-shape model against fp32 matmul FLOP/s
    python bench.py memory --model ID_OR_PATH [grpo.py flags]   # the per-GPU memory preflight (memory.py)
    python bench.py gpu          # the GPU check: R1-1.5B-shaped bf16 FSDP2 steps at 16k/24k tokens (peak
                                 # memory vs the preflight, tokens/s), then mrt.py 2 steps + resume on vLLM,
                                 # then evaluate.py; each check in its own process, with its time and disk

Every run first prints the machine line: what the CPU computes natively (machine.cpu_capability) and
the torch threads; the engine benchmarks print the dtype --dtype auto resolved to (machine.resolve_dtype).
Imports: the modules it measures, and memory (the preflight it prints and checks).
"""

import argparse
import collections
import json
import math
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

import policy
import episodes
import flags
import grader
import grpo
import memory
import machine
import prover
import toy

import torch

# Paragraph openings of an R1-style thought: mostly plain steps, some episode phrases (Fig. 21),
# and words that must not open an episode.
_OPENINGS = ["So", "Then", "Let me compute", "Hmm,", "Now", "Therefore,", "Waiting on that,", "Okay,"] * 6 + \
            list(episodes.EPISODE_PHRASES)
_WORDS = ("the sum of x and y is 12 so x = 12 - y and substituting gives 3y + 2 = 14 hence y = 4 "
          "which means the area equals \\frac{1}{2} b h = 10 and we check the constraint again").split()


def synthetic_trace(num_tokens, tokenizer, seed=0):
    """An R1-style thought of about num_tokens tokens: blank-line steps, some opening with phrases."""
    rng = random.Random(seed)
    steps, count = [], 0
    while count < num_tokens:
        step = rng.choice(_OPENINGS) + " " + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(8, 60))) + "."
        steps.append(step)
        count += len(tokenizer.encode(step + "\n\n", add_special_tokens=False))
    return "\n\n".join(steps), count


def bench_episodes(argv):
    p = argparse.ArgumentParser(prog="bench.py episodes", description="Episode segmentation throughput.")
    p.add_argument("--tokens", type=int, default=16384, help="tokens per synthetic trace (default 16384)")
    p.add_argument("--traces", type=int, default=20, help="distinct synthetic traces (default 20)")
    p.add_argument("--repeats", type=int, default=5, help="timed passes over all traces (default 5)")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = AutoTokenizer.from_pretrained(toy.build_tiny_model(tmp))
    traces = [synthetic_trace(args.tokens, tokenizer, seed=i) for i in range(args.traces)]
    thoughts = [t for t, _ in traces]
    counts = [len(episodes.split_episodes(t)) for t in thoughts]
    seconds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for t in thoughts:
            episodes.thought_prefixes(episodes.split_episodes(t))
        seconds.append(time.perf_counter() - t0)
    best = min(seconds)
    print(f"synthetic traces: {args.traces} x ~{statistics.mean(c for _, c in traces):.0f} tokens "
          f"(~{statistics.mean(len(t) for t in thoughts) / 1e3:.0f}k chars), "
          f"{statistics.mean(len(episodes.split_steps(t)) for t in thoughts):.0f} steps each")
    print(f"episodes per trace (min_steps=3): mean {statistics.mean(counts):.1f}, min {min(counts)}, max {max(counts)}")
    print(f"segmentation + prefixes: {args.traces / best:.0f} traces/s "
          f"({best / args.traces * 1e3:.2f} ms per trace, best of {args.repeats})")


def perturb(answer):
    """A wrong answer close to the gold one: its first integer plus one, or "+1" appended."""
    m = re.search(r"\d+", answer)
    return answer[:m.start()] + str(int(m.group()) + 1) + answer[m.end():] if m else answer + "+1"


def bench_reward(argv):
    p = argparse.ArgumentParser(prog="bench.py reward", description="Grader throughput, latency and agreement.")
    p.add_argument("--sets", default="math500,minerva", help="comma-separated data/ sets (default math500,minerva)")
    p.add_argument("--timeout", type=float, default=None, help="per-pair bound in seconds (default grader.EQUIV_TIMEOUT)")
    args = p.parse_args(argv)

    timeout = grader.EQUIV_TIMEOUT if args.timeout is None else args.timeout
    golds = []
    for name in args.sets.split(","):
        with open(os.path.join(prover.DATA_DIR, f"{name}.jsonl"), encoding="utf-8") as f:
            golds += [json.loads(line)["answer"] for line in f if line.strip()]
    grader._sympy_equal("1", "1", 60.0)  # start the sympy helper outside the timed part
    grader.SYMPY_STATS.update(calls=0, timeouts=0)
    rows = {"(a) boxed gold": [], "(b) perturbed": []}
    wrong = {k: 0 for k in rows}
    for gold in golds:
        for kind, response, expected in (("(a) boxed gold", f"<think>\nok\n</think>\n\n\\boxed{{{gold}}}", 1.0),
                                          ("(b) perturbed", f"</think>\\boxed{{{perturb(gold)}}}", 0.0)):
            t0 = time.perf_counter()
            got = float(grader.is_equiv(grader.extract_answer(response), gold, timeout=timeout))  # = reward()
            rows[kind].append(time.perf_counter() - t0)
            wrong[kind] += got != expected
    everything = sorted(rows["(a) boxed gold"] + rows["(b) perturbed"])
    print(f"{len(golds)} gold answers from {args.sets}; per-pair bound {timeout} s")
    for kind, lat in list(rows.items()) + [("all", everything)]:
        lat = sorted(lat)
        print(f"{kind:15s} {len(lat):5d} pairs  {len(lat) / sum(lat):8.0f} pairs/s  p50 {lat[len(lat) // 2] * 1e3:7.2f} ms  "
              f"p99 {lat[int(len(lat) * 0.99)] * 1e3:7.1f} ms  max {lat[-1] * 1e3:7.1f} ms"
              + (f"  wrong verdicts {wrong[kind]}" if kind in wrong else ""))
    print(f"sympy helper calls {grader.SYMPY_STATS['calls']}, timeouts {grader.SYMPY_STATS['timeouts']}")

    # agreement with the labelled pairs of data/grader_cases.jsonl, family by family (reward() as trained on)
    with open(os.path.join(prover.DATA_DIR, "grader_cases.jsonl"), encoding="utf-8") as f:
        cases = [json.loads(line) for line in f if line.strip()]
    stats = collections.defaultdict(lambda: {"rows": 0, "agree": 0, "fp": 0, "fn": 0, "max": 0.0})
    for case in cases:
        t0 = time.perf_counter()
        got = grader.reward(case["response"], case["gold"], thinking=case["thinking"]) == 1.0
        seconds = time.perf_counter() - t0
        for key in (case["family"], "total"):
            row = stats[key]
            row["rows"] += 1
            row["agree"] += got == case["label"]
            row["fp"] += got and not case["label"]
            row["fn"] += case["label"] and not got
            row["max"] = max(row["max"], seconds)
    print(f"\nagreement with data/grader_cases.jsonl ({len(cases)} labelled pairs; FP: rewarded a wrong answer)")
    print(f"{'family':12s} {'rows':>5s} {'agreement':>9s} {'FP':>4s} {'FN':>4s} {'max s/pair':>10s}")
    for family in sorted(k for k in stats if k != "total") + ["total"]:
        row = stats[family]
        print(f"{family:12s} {row['rows']:5d} {row['agree'] / row['rows']:9.3f} {row['fp']:4d} {row['fn']:4d} {row['max']:10.2f}")


def bench_prefix_cache(argv):
    p = argparse.ArgumentParser(prog="bench.py prefix-cache",
                                description="Time and prompt compute of MetaProver.success_rates on one k-episode trace.")
    p.add_argument("--episodes", type=int, default=10, help="episodes k of the trace (default 10)")
    p.add_argument("--prover-samples", type=int, default=8, help="m, forced-termination samples per prefix (default 8, App. D)")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per forced answer (default 32)")
    p.add_argument("--trace-tokens", type=int, default=8000, help="synthetic trace length before cutting to k episodes")
    p.add_argument("--min-steps", type=int, default=3, help="min steps per episode (App. D: 3); more = longer episodes")
    p.add_argument("--variant", choices=("vllm-cache", "vllm-nocache", "hf"), default=None,
                   help="run one variant in this process (default: all three, each in a fresh process)")
    p.add_argument("--model", default=None, help="model folder (default: a tiny model built here)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="engine dtype (default auto: machine.resolve_dtype's rule for this machine)")
    args = p.parse_args(argv)

    if args.variant is None:
        with tempfile.TemporaryDirectory() as tmp:
            toy.build_tiny_model(tmp, max_position_embeddings=16384)
            rows = []
            for variant in ("vllm-cache", "vllm-nocache", "hf"):
                cmd = [sys.executable, os.path.abspath(__file__), "prefix-cache", "--variant", variant, "--model", tmp,
                       "--episodes", str(args.episodes), "--prover-samples", str(args.prover_samples), "--max-tokens", str(args.max_tokens),
                       "--trace-tokens", str(args.trace_tokens), "--min-steps", str(args.min_steps),
                       "--dtype", args.dtype]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
                rows.append(json.loads([line for line in out.splitlines() if line.startswith("{")][-1]))
        r = rows[0]
        print(f"one trace: k = {r['k']} episodes, {r['thought_tokens']} thought tokens, {r['k'] + 1} prefixes, "
              f"m = {args.prover_samples} forced answers of <= {args.max_tokens} tokens each")
        print(f"naive prompt tokens = sum of the k+1 prompt lengths = {r['naive']}; "
              f"x m samples = {r['naive'] * args.prover_samples} (what vLLM without the cache and transformers compute)")
        for r in rows:
            computed = r["prompt_tokens"] - r["cached"] if r["prompt_tokens"] is not None else None
            print(f"{r['variant']:13s} {r['dtype']:8s} {r['seconds']:7.2f} s" + (
                f"   prompt tokens computed {computed} of {r['prompt_tokens']} scheduled "
                f"({r['cached']} from the prefix cache); naive sum / computed = {r['naive'] / max(computed, 1):.1f}, "
                f"naive x m / computed = {r['naive'] * args.prover_samples / max(computed, 1):.1f}"
                if computed is not None else "   (transformers: each prompt computed in full for its batch of m)"))
        return

    problem = "Let $x$ be a real number with $2x + 3 = 11$. Find $x$."
    model = args.model
    engine = prover.make_engine(model, engine="hf" if args.variant == "hf" else "vllm", dtype=args.dtype,
                                max_model_len=16384, **({} if args.variant == "hf" else
                                                        {"enable_prefix_caching": args.variant == "vllm-cache"}))
    thought, count = synthetic_trace(args.trace_tokens, engine.tokenizer)
    eps = episodes.split_episodes(thought, min_steps=args.min_steps)[:args.episodes]
    prefixes = episodes.thought_prefixes(eps)
    mu = prover.MetaProver(engine, m=args.prover_samples, max_tokens=args.max_tokens, seed=0)
    engine.generate([prover.build_prompt(engine.tokenizer, "warm up")], n=1, max_tokens=2)  # not timed
    before = engine.prompt_stats() if args.variant != "hf" else None
    t0 = time.perf_counter()
    mu.success_rates(problem, "4", prefixes)
    seconds = time.perf_counter() - t0
    after = engine.prompt_stats() if args.variant != "hf" else None
    print(json.dumps({"variant": args.variant, "dtype": engine.dtype, "seconds": seconds, "k": len(eps),
                      "thought_tokens": len(engine.tokenizer.encode("".join(eps), add_special_tokens=False)),
                      "naive": sum(len(q) for q in mu.prompts(problem, prefixes)),
                      "prompt_tokens": after and after["prompt_tokens"] - before["prompt_tokens"],
                      "cached": after and after["cached_prompt_tokens"] - before["cached_prompt_tokens"]}))


DECODE_SHAPES = {   # hidden, layers, heads, kv heads, ffn: random Qwen2 models, vocab 2048, head_dim 64
    "0.6M": (128, 2, 2, 1, 256), "3.7M": (256, 4, 4, 2, 768), "10M": (384, 6, 6, 2, 1024),
    "25M": (512, 8, 8, 2, 1536), "77M": (768, 12, 12, 4, 2048)}


def bench_decode(argv):
    p = argparse.ArgumentParser(prog="bench.py decode",
                                description="Decode speed of each engine, dtype and mode on random models of several sizes: "
                                            "where a CPU decode step stops being framework overhead "
                                            "(machine.OVERHEAD_BOUND_PARAMS). Each variant in a fresh process.")
    p.add_argument("--sizes", default=",".join(DECODE_SHAPES), help=f"model sizes (default all: {','.join(DECODE_SHAPES)})")
    p.add_argument("--variants", default="hf-eager,hf-compiled,vllm",
                   help="engines: hf-eager, hf-compiled (HFEngine's compiled decode step), vllm (compiled) (default all)")
    p.add_argument("--dtypes", default="float32,bfloat16", help="dtypes (default float32,bfloat16)")
    p.add_argument("--prompts", type=int, default=4, help="prompts per generate call (default 4)")
    p.add_argument("--n", type=int, default=4, help="samples per prompt (default 4: 16 rows, the side-by-side's batch)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per sample (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed generate calls after one warm-up; the median is printed")
    p.add_argument("--one", nargs=3, metavar=("MODEL", "VARIANT", "DTYPE"), help=argparse.SUPPRESS)  # a child process
    args = p.parse_args(argv)
    if args.one:
        model, variant, dtype = args.one
        t0 = time.perf_counter()
        engine = prover.make_engine(model, engine=variant.split("-")[0], dtype=dtype, max_model_len=512,
                                    enforce_eager=variant == "hf-eager")
        start = time.perf_counter() - t0
        prompts = [[5, 6, 7, 8, 9, 10 + i] for i in range(args.prompts)]
        times, tokens = [], 0
        for r in range(args.repeats + 1):
            t0 = time.perf_counter()
            out = engine.generate(prompts, n=args.n, temperature=0.9, max_tokens=args.max_tokens, seed=r)
            times.append(time.perf_counter() - t0)
            tokens = sum(len(s.token_ids) for row in out for s in row)
        print(json.dumps({"start_s": start, "generate_s": statistics.median(times[1:]), "tokens": tokens}))
        return
    print(f"{args.prompts} prompts x {args.n} samples x <= {args.max_tokens} tokens, temperature 0.9; median of "
          f"{args.repeats} generate calls after a warm-up; start = engine construction (compilation included)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            hidden, layers, heads, kv_heads, ffn = DECODE_SHAPES[size]
            model = toy.build_tiny_model(os.path.join(tmp, size), vocab_size=2048, hidden_size=hidden, num_layers=layers,
                                         num_heads=heads, num_kv_heads=kv_heads, intermediate_size=ffn,
                                         max_position_embeddings=1024, corpus_lines=200)
            from transformers import AutoConfig
            count = machine.parameter_count(AutoConfig.from_pretrained(model))
            for variant in args.variants.split(","):
                for dtype in args.dtypes.split(","):
                    cmd = [sys.executable, os.path.abspath(__file__), "decode", "--one", model, variant, dtype,
                           "--prompts", str(args.prompts), "--n", str(args.n), "--max-tokens", str(args.max_tokens),
                           "--repeats", str(args.repeats)]
                    out = subprocess.run(cmd, capture_output=True, text=True)
                    if out.returncode:
                        print(f"{size:5s} {variant:12s} {dtype:9s} failed: {out.stderr.strip().splitlines()[-1:]}")
                        continue
                    r = json.loads([line for line in out.stdout.splitlines() if line.startswith("{")][-1])
                    print(f"{size:5s} ({count / 1e6:5.1f}M) {variant:12s} {dtype:9s} generate {r['generate_s'] * 1000:7.1f} ms "
                          f"({r['tokens'] / r['generate_s']:7.0f} tok/s), start {r['start_s']:5.1f} s", flush=True)


def bench_grpo(argv):
    p = argparse.ArgumentParser(prog="bench.py grpo", description="GRPO throughput on the tiny model, 1 and 2 ranks.")
    p.add_argument("--engine", choices=("vllm", "hf"), default="vllm", help="rollout engine (default vllm)")
    p.add_argument("--dtype", choices=("auto", "bfloat16", "float16", "float32"), default="auto",
                   help="engine dtype (default auto: machine.resolve_dtype's rule for this machine)")
    p.add_argument("--steps", type=int, default=6, help="steps per run; the first is left out as warm-up (default 6)")
    p.add_argument("--ranks", default="1,2", help="world sizes to run (default 1,2)")
    p.add_argument("--batch-size", type=int, default=64, help="completions per step, all ranks (default 64)")
    p.add_argument("--max-completion-length", type=int, default=256, help="tokens per completion (default 256)")
    p.add_argument("--flops-steps", type=int, default=3,
                   help="timed training steps of the FLOP/s measurement after one warm-up (default 3; 0 skips it)")
    p.add_argument("--flops-only", action="store_true", help="only the FLOP/s measurement, not the tiny-model runs")
    p.add_argument("--flops-shape", default="576,30,9,3,1536,49152",
                   help="hidden,layers,heads,kv_heads,ffn,vocab of the FLOP/s model (default: a 135M-parameter "
                        "SmolLM-like shape)")
    p.add_argument("--flops-seqs", type=int, default=8, help="sequences per FLOP/s step (default 8)")
    p.add_argument("--flops-tokens", type=int, default=256, help="tokens per sequence, 1/4 prompt (default 256)")
    args = p.parse_args(argv)
    if args.flops_only:
        return training_flops(args)

    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        model = toy.build_tiny_model(os.path.join(tmp, "model"))
        print(f"tiny model, {args.engine} engine in {machine.resolve_dtype(model, args.dtype, engine=args.engine)[0]}, training in "
              f"float32, batch {args.batch_size} completions of <= "
              f"{args.max_completion_length} tokens (G = 8), steps 2..{args.steps} averaged")
        for world in [int(w) for w in args.ranks.split(",")]:
            out = os.path.join(tmp, f"run{world}")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(world),
                   os.path.join(here, "grpo.py"), "--model", model, "--out", out, "--engine", args.engine,
                   "--batch-size", str(args.batch_size), "--num-generations", "8", "--max-prompt-length", "512",
                   "--max-completion-length", str(args.max_completion_length), "--max-steps", str(args.steps),
                   "--save-every", "1000000", "--lr", "1e-4", "--temperature", "1.0", "--dtype", args.dtype]
            subprocess.run(cmd, check=True, capture_output=True, cwd=here)
            rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))][1:]
            mean = lambda key: statistics.mean(r[key] for r in rows)  # noqa: E731
            print(f"{world} rank(s): generation {mean('generation_tokens_per_s'):8.0f} completion tokens/s, "
                  f"training {mean('training_tokens_per_s'):8.0f} tokens/s (prompt + completion), "
                  f"step {mean('seconds_generate') + mean('seconds_score') + mean('seconds_train') + mean('seconds_sync'):.2f} s "
                  f"(generate {mean('seconds_generate'):.2f}, score {mean('seconds_score'):.2f}, "
                  f"train {mean('seconds_train'):.2f}, sync {mean('seconds_sync'):.2f})")
    if args.flops_steps:
        training_flops(args)


def matmul_flops(n=2048, repeats=5):
    """The machine's own fp32 matmul rate (FLOP/s): the best of `repeats` n x n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def train_step_config():
    """grpo.train_step's config for a synthetic rollout: grpo.py's defaults, beta 0 (no reference model),
    token-mean loss; no model folder or data is checked."""
    p = argparse.ArgumentParser()
    grpo.add_grpo_args(p)
    cfg = p.parse_args(["--model", ".", "--beta", "0", "--loss-agg", "token-mean"])
    cfg.epsilon_high = cfg.epsilon
    return cfg


def training_flops(args):
    """The training phase of a GRPO step (grpo.train_step: FSDP2 forward, log-probs, clipped loss,
    backward, clip, AdamW) on a compute-bound random-weight model, in achieved FLOP/s against the
    fp32 matmul rate measured in the same process. FLOPs per token: 6 N (N = the parameters that
    multiply: every weight matrix and the output head, not the input embedding lookup) plus
    12 L H Q T for attention (PaLM's count, App. B of Chowdhery et al. 2022: L layers, H heads of
    size Q, sequence length T)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    hidden, layers, heads, kv_heads, ffn, vocab = (int(v) for v in args.flops_shape.split(","))
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, intermediate_size=ffn, vocab_size=vocab,
                         tie_word_embeddings=True, max_position_embeddings=4096)
    policy.setup_distributed()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        Qwen2ForCausalLM(config).save_pretrained(tmp)
        model = policy.load_policy(tmp)
    n_matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2)  # embed = tied output head
    head = config.hidden_size // heads
    cfg = train_step_config()
    optimizer, scheduler = policy.make_optimizer(model, 1e-5, 0.0, args.flops_steps + 1, 0.0)
    g = torch.Generator().manual_seed(0)
    prompt_len = args.flops_tokens // 4
    ids = torch.randint(0, vocab, (args.flops_seqs, args.flops_tokens), generator=g).tolist()
    rollout = grpo.Rollout(prompts=[row[:prompt_len] for row in ids], completions=[row[prompt_len:] for row in ids],
                           advantages=torch.randn(args.flops_seqs, generator=g))
    tokens = args.flops_seqs * args.flops_tokens
    flops = tokens * (6 * n_matmul + 12 * layers * heads * head * args.flops_tokens)
    peak_before = matmul_flops()
    grpo.train_step(model, optimizer, scheduler, rollout, cfg, pad_id=0)       # warm-up
    seconds = []
    for _ in range(args.flops_steps):
        t0 = time.perf_counter()
        grpo.train_step(model, optimizer, scheduler, rollout, cfg, pad_id=0)
        seconds.append(time.perf_counter() - t0)
    peak = max(peak_before, matmul_flops())
    step = statistics.median(seconds)
    print(f"training FLOP/s (float32), {args.flops_shape} (hidden, layers, heads, kv heads, ffn, vocab): {n_matmul / 1e6:.0f} M "
          f"matmul parameters, {args.flops_seqs} x {args.flops_tokens} tokens per step, {torch.get_num_threads()} threads")
    print(f"  train_step {step:.2f} s (median of {len(seconds)}), {flops / 1e12:.2f} TFLOP per step: "
          f"{flops / step / 1e9:.0f} GFLOP/s achieved")
    print(f"  fp32 matmul 2048^3 in this process: {peak / 1e9:.0f} GFLOP/s; training reaches "
          f"{100 * flops / step / peak:.0f}% of it")


def bench_padding(argv):
    p = argparse.ArgumentParser(prog="bench.py padding", description=(
        "Padded share of the training tokens, padded rows vs packed rows (--pack-sequences), on a length "
        "distribution like the paper's RL runs: Table 3's 256 completions per step over 8 ranks, prompts of "
        "100-400 tokens, completions log-normal around --median tokens and cut at the 16k budget."))
    p.add_argument("--median", type=int, default=6000, help="median completion length (default 6000)")
    p.add_argument("--sigma", type=float, default=0.7, help="log-normal sigma of completion lengths (default 0.7)")
    p.add_argument("--budget", type=int, default=16384, help="completion budget (default 16384)")
    p.add_argument("--ranks", type=int, default=8, help="ranks (default 8)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per step, all ranks (default 256)")
    p.add_argument("--steps", type=int, default=50, help="simulated steps (default 50)")
    args = p.parse_args(argv)
    rng = random.Random(0)
    print(f"{args.batch_size} sequences per step over {args.ranks} ranks, completions log-normal (median "
          f"{args.median}, sigma {args.sigma}) cut at {args.budget}, {args.steps} steps")
    for max_tokens in (32768, 65536):
        for pack in (False, True):
            computed = real = batches = 0
            for _ in range(args.steps):
                lengths = [rng.randint(100, 400) + min(args.budget, int(rng.lognormvariate(math.log(args.median), args.sigma)))
                           for _ in range(args.batch_size)]
                per_rank = args.batch_size // args.ranks
                for r in range(args.ranks):   # each rank batches its own share (grpo.step_problems)
                    mine = lengths[r * per_rank:(r + 1) * per_rank]
                    b = policy.micro_batches(mine, max_tokens, pack=pack)
                    computed += sum(mine) / (1 - policy.padded_fraction(mine, b))
                    real += sum(mine)
                    batches += len(b)
            print(f"--micro-batch-tokens {max_tokens}, {'packed' if pack else 'padded'} rows: padded fraction "
                  f"{1 - real / computed:.3f}, {batches / args.steps / args.ranks:.1f} micro-batches per rank and step")


def bench_memory(argv):
    p = argparse.ArgumentParser(prog="bench.py memory", description=(
        "The memory preflight of one GPU of a colocated run (memory.py): every term of the training phase and "
        "of the engine's wake, against the device. Takes grpo.py's / mrt.py's flags (the ones that matter: "
        "--micro-batch-tokens, --max-prompt-length + --max-completion-length, --gradient-checkpointing, "
        "--vllm-sleep, --gpu-memory-utilization, --beta, --engine). Exit status 1 when a phase does not fit."))
    grpo.add_grpo_args(p)
    p.add_argument("--nproc", type=int, default=int(os.environ.get("WORLD_SIZE", 8)),
                   help="GPUs the run shards over (default 8, or WORLD_SIZE)")
    p.add_argument("--gpu-memory-gib", type=float, default=None,
                   help="memory of one GPU in GiB (default: this machine's GPU 0, else 79.19, what an 80 GB H100 reports)")
    p.add_argument("--max-seq-length", type=int, default=None,
                   help="the longest training sequence (default --max-prompt-length + --max-completion-length; "
                        "star.py: its --max-seq-length)")
    args = p.parse_args(argv)
    name = args.model
    try:
        args.model = machine.resolve_model(name)
    except ValueError as e:
        p.error(f"--model: {e}")
    if args.gpu_memory_gib is not None:
        device_bytes = int(args.gpu_memory_gib * memory.GiB)
    else:
        device_bytes = torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else int(memory.H100_GIB * memory.GiB)
    fraction = flags.resolve_memory_flags(p, args, on_gpu=True)   # the run this plans is a GPU run
    longest = args.max_seq_length or args.max_prompt_length + args.max_completion_length
    result = flags.memory_plan(args, fraction, longest, args.nproc, device_bytes)
    from transformers import AutoConfig
    shape = memory.model_shape(AutoConfig.from_pretrained(args.model))
    print(f"{name}: {shape.params / 1e9:.2f} B parameters ({shape.layers} layers, hidden {shape.hidden}, "
          f"vocab {shape.vocab}), {args.nproc} GPUs, micro-batches of {max(args.micro_batch_tokens, longest)} tokens, "
          f"checkpointing {'on' if args.gradient_checkpointing else 'off'}, "
          f"vLLM {'asleep while training' if args.vllm_sleep else 'awake'} at {fraction:g}")
    print(result.table())
    for problem in result.problems:
        print(f"DOES NOT FIT: {problem}")
    if not result.problems:
        print("fits")
    return 1 if result.problems else 0


# R1-Distill-Qwen-1.5B's shape (config.json of deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B)
R1_1P5B = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
               intermediate_size=8960, vocab_size=151936, max_position_embeddings=131072, tie_word_embeddings=False)
TINY = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
            intermediate_size=256, vocab_size=2048, max_position_embeddings=4096, tie_word_embeddings=False)


def gpu_training_check(shape_args, token_counts, steps):
    """bf16 FSDP2 training steps (grpo.train_step, gradient checkpointing on) of a random-weight model
    on one sequence of each length: peak allocated memory against the preflight's training terms, and
    tokens/s. Runs in a process of its own (bench.py gpu --check train), which gives the GPU back whole
    when it ends. Returns the lines it printed."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    on_gpu = torch.cuda.is_available()
    config = Qwen2Config(**shape_args)
    shape = memory.model_shape(config)
    policy.setup_distributed()
    torch.manual_seed(0)
    lines = [f"device: {torch.cuda.get_device_name() if on_gpu else 'CPU (no CUDA)'}, torch {torch.__version__}"]
    print(lines[-1], flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        # saved in bf16: half the disk (3.6 GB for R1-1.5B's shape); load_policy reads it back as fp32
        Qwen2ForCausalLM(config).to(torch.bfloat16).save_pretrained(tmp)
        t0 = time.perf_counter()
        model = policy.load_policy(tmp, gradient_checkpointing="on")
        load_s = time.perf_counter() - t0
    assert model.training, "load_policy must return the trainable policy in train mode (checkpointing runs only then)"
    if on_gpu:
        loaded = torch.cuda.max_memory_allocated()
        lines.append(f"load_policy: {load_s:.0f} s, peak {loaded / memory.GiB:.2f} GiB on the GPU while sharding "
                     f"(fp32 params {4 * shape.params / memory.GiB:.2f} GiB: never there whole)")
        print(lines[-1], flush=True)
    cfg = train_step_config()
    optimizer, scheduler = policy.make_optimizer(model, 1e-6, 0.0, 100, 0.0)
    for tokens in token_counts:
        cfg.micro_batch_tokens = tokens
        g = torch.Generator().manual_seed(tokens)
        ids = torch.randint(0, shape.vocab, (tokens,), generator=g).tolist()
        rollout = grpo.Rollout(prompts=[ids[:512]], completions=[ids[512:]], advantages=torch.ones(1))
        seconds = []
        for _ in range(steps):
            if on_gpu:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            grpo.train_step(model, optimizer, scheduler, rollout, cfg, pad_id=0)
            optimizer.zero_grad(set_to_none=True)
            if on_gpu:
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - t0)
        predicted = sum(memory.training_terms(shape, 1, tokens, True, on_gpu, 0.0).values())
        if on_gpu:
            peak, reserved = torch.cuda.max_memory_allocated(), torch.cuda.max_memory_reserved()
            memory_part = (f"peak allocated {peak / memory.GiB:.2f} GiB (reserved {reserved / memory.GiB:.2f}), "
                           f"preflight {predicted / memory.GiB:.2f} GiB ({100 * (peak - predicted) / predicted:+.0f}%)")
        else:
            memory_part = f"preflight {predicted / memory.GiB:.2f} GiB (no GPU: peak not measured)"
        lines.append(f"train_step at {tokens} tokens, checkpointing on: {memory_part}; "
                     f"{tokens / min(seconds[1:] or seconds):.0f} tokens/s")
        print(lines[-1], flush=True)
    policy.teardown()
    return lines


def run_check(name, cmd, cwd, disk_root):
    """One check of `bench.py gpu` as a process of its own (the GPU is whole again when it ends), its
    output passed through; prints its time and its peak disk use (sampled every 0.2 s on the file system
    of disk_root: what other processes write there meanwhile counts too). Returns the exit code."""
    import shutil
    import threading
    start_used, peak = shutil.disk_usage(disk_root).used, [0]
    done = threading.Event()

    def sample():
        while not done.wait(0.2):
            peak[0] = max(peak[0], shutil.disk_usage(disk_root).used - start_used)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    done.set()
    sampler.join()
    print(proc.stdout, end="", flush=True)
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})\n{proc.stderr[-4000:]}"
    print(f"[{name}: {status}; {time.perf_counter() - t0:.0f} s, peak disk {peak[0] / 1e9:.1f} GB]", flush=True)
    return proc.returncode


def bench_gpu(argv):
    p = argparse.ArgumentParser(prog="bench.py gpu", description=(
        "The project's GPU check, for the first machine with a GPU (one GPU, under 8 minutes and 20 GB of disk, "
        "nothing downloaded). Each check runs in a process of its own, so each finds the GPU empty: "
        "(1) bf16 FSDP2 training steps of a random-weight model of R1-Distill-Qwen-1.5B's shape at 16k and 24k "
        "tokens with gradient checkpointing: peak memory against the preflight (memory.py) and tokens/s; "
        "(2) `mrt.py` (MRT-RL, Algorithm 2) for 2 steps and a resume to 3 under torchrun --nproc_per_node 1, with "
        "the colocated vLLM engine in sleep mode (sleep, wake, weight sync, mu) and bf16 checkpoints, on a model "
        "with --rl-layers of R1-1.5B's layers and a 2k-token toy vocabulary; (3) evaluate.py on that checkpoint with "
        "--direct-model (two engines in one process, half the fraction each). Each check ends with its time and "
        "peak disk. --shape tiny runs the same code small, on CPU too. A CPU-only install on a GPU machine is "
        "refused in one line."))
    p.add_argument("--shape", choices=("r1-1.5b", "tiny"), default="r1-1.5b", help="model shape (default r1-1.5b)")
    p.add_argument("--tokens", type=flags.int_list(1), default=None,
                   help="sequence lengths of the training check (default 16384,24576; tiny: 1024,1536)")
    p.add_argument("--steps", type=int, default=2, help="training steps per length, the first untimed (default 2)")
    p.add_argument("--rl-layers", type=flags.positive_int, default=4,
                   help="decoder layers of the mrt.py check's model (default 4: 0.19 B parameters, a 2.7 GB "
                        "checkpoint with its AdamW state; all 28 would write 18 GB per checkpoint)")
    p.add_argument("--skip-mrt", action="store_true", help="only the training check")
    p.add_argument("--out", default=None, help="folder for the mrt.py run (default: a temp folder)")
    p.add_argument("--check", choices=("train",), default=None,
                   help="run one check in this process (what the parent does for each; not needed by hand)")
    args = p.parse_args(argv)
    machine.check_gpu_install()
    tiny = args.shape == "tiny"
    tokens = args.tokens or ([1024, 1536] if tiny else [16384, 24576])
    shape_args = TINY if tiny else R1_1P5B
    if args.check == "train":
        gpu_training_check(shape_args, tokens, args.steps)
        policy.exit_process(0)
    t_start = time.perf_counter()
    here = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        train = [sys.executable, "bench.py", "gpu", "--check", "train", "--shape", args.shape,
                 "--tokens", ",".join(map(str, tokens)), "--steps", str(args.steps)]
        if run_check("training check", train, here, tmp):
            return 1
        if args.skip_mrt:
            return 0
        if not prover.vllm_available():
            print("mrt.py check: skipped (vLLM cannot be imported)")
            return 0
        out = args.out or os.path.join(tmp, "run")
        trunk = {k: v for k, v in shape_args.items() if k not in ("vocab_size", "tie_word_embeddings")}
        model_dir = toy.build_tiny_model(os.path.join(tmp, "model"), hidden_size=trunk["hidden_size"],
                                         num_layers=min(args.rl_layers, trunk["num_hidden_layers"]),
                                         num_heads=trunk["num_attention_heads"],
                                         num_kv_heads=trunk["num_key_value_heads"],
                                         head_dim=trunk["hidden_size"] // trunk["num_attention_heads"],
                                         intermediate_size=trunk["intermediate_size"], max_position_embeddings=4096)
        common = ["mrt.py", "--model", model_dir, "--method", "mrt-rl", "--out", out, "--batch-size", "8",
                  "--num-generations", "4", "--max-prompt-length", "512", "--max-completion-length", "256",
                  "--max-model-len", "2048", "--save-every", "1", "--keep-checkpoints", "1", "--beta", "0",
                  "--steps-per-iteration", "1", "--save-dtype", "bfloat16"]
        cpu = [] if torch.cuda.is_available() else ["--dtype", "float32", "--enforce-eager"]
        common += cpu
        for steps, extra in ((2, []), (3, ["--resume"])):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                   *common, "--max-steps", str(steps), *extra]
            label = f"mrt.py --max-steps {steps} {' '.join(extra)}".strip()
            if run_check(label, cmd, here, tmp):
                return 1
            rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
            last = rows[-1]
            memory_part = (f", free GPU memory when training began {last['gpu_free_gib_at_train']:.1f} GiB "
                           f"(vLLM asleep), training peak {last['gpu_peak_allocated_gib']:.1f} GiB"
                           if "gpu_free_gib_at_train" in last else "")
            print(f"{label}: steps {[r['step'] for r in rows]}, "
                  f"reward {last['reward_mean']:.3f}{memory_part}", flush=True)
        # the bf16 checkpoint evaluated by vLLM, beside a second engine (--direct-model): each gets half the
        # default fraction, where two at the full one would not start
        final = policy.latest_checkpoint(out)
        evaluate_cmd = [sys.executable, "evaluate.py", "--model", final, "--direct-model", model_dir,
                        "--analysis", "episodes", "--benchmarks", "aime24", "--limit", "1", "--traces", "1",
                        "--max-tokens", "256", "--prover-samples", "2", "--prover-max-tokens", "32",
                        "--direct-n", "2", "--direct-max-tokens", "32", "--max-model-len", "2048",
                        "--no-plots", "--out", os.path.join(tmp, "eval.json"), *(cpu or ["--enforce-eager"])]
        if run_check("evaluate.py on the bf16 checkpoint with --direct-model (two engines in one process)",
                     evaluate_cmd, here, tmp):
            return 1
    print(f"gpu check: {time.perf_counter() - t_start:.0f} s in all")
    return 0


BENCHES = {"episodes": bench_episodes, "padding": bench_padding, "reward": bench_reward, "prefix-cache": bench_prefix_cache,
           "decode": bench_decode, "grpo": bench_grpo, "memory": bench_memory, "gpu": bench_gpu}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in BENCHES:
        sys.exit(f"usage: python bench.py {{{','.join(BENCHES)}}} [--help]")
    if "-h" not in sys.argv and "--help" not in sys.argv and "--variant" not in sys.argv and "--one" not in sys.argv:
        # every figure below is read with this line: what the CPU computes natively, how many threads
            print(f"machine: {machine.cpu_capability()}, {torch.get_num_threads()} torch threads")
    sys.exit(BENCHES[sys.argv[1]](sys.argv[2:]))
