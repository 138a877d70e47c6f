"""MRT: Meta Reinforcement Fine-Tuning (Qu et al., ICML 2025) -- the entry point.

    python mrt.py                     # smoke run: tiny model, vLLM, a few traces cut into episodes
    python mrt.py --model PATH ...    # the same on a real checkpoint

For now this is the smoke run of the pipeline's first half: sample responses z ~ pi(.|x) with vLLM,
split the thought (<think> ... </think>) and cut it into episodes z_0 .. z_{k-1} (Sec. 5, App. D).
Algorithm 2 (the RL variant) and the choice of variant and baseline land here in later issues.
"""

import argparse
import json
import os
import sys
import tempfile

import episodes
import prover


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="HF model folder to sample from; default: build a random-weight tiny model in a temp folder")
    p.add_argument("--problems", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "aime24.jsonl"),
                   help="JSONL file with a 'problem' field per line (default: data/aime24.jsonl)")
    p.add_argument("--num-problems", type=int, default=3, help="how many problems to sample for (default 3)")
    p.add_argument("--n", type=int, default=2, help="responses per problem (default 2)")
    p.add_argument("--max-tokens", type=int, default=256, help="max generated tokens per response (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (App. D: 0.7)")
    p.add_argument("--min-steps", type=int, default=3, help="min steps per episode (App. D: 3)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    for flag in ("num_problems", "n", "max_tokens", "min_steps"):
        if getattr(args, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if not os.path.isfile(args.problems):
        p.error(f"--problems: no such file: {args.problems}")
    if args.model is not None and not os.path.isdir(args.model):
        p.error(f"--model: no such folder: {args.model}")
    return args


def read_problems(path, limit):
    problems = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if len(problems) == limit:
                break
            if not line.strip():
                continue
            try:
                problems.append(json.loads(line)["problem"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                sys.exit(f"{path}:{lineno}: expected a JSON object with a 'problem' field ({e})")
    return problems


def smoke(args):
    from transformers import AutoTokenizer
    from vllm import SamplingParams

    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="mrt-tiny-")
        model = prover.build_tiny_model(tmp.name)
        print(f"built tiny random-weight model in {model}")
    tokenizer = AutoTokenizer.from_pretrained(model)
    problems = read_problems(args.problems, args.num_problems)
    prompts = [{"prompt_token_ids": prover.build_prompt(tokenizer, x)} for x in problems]
    llm = prover.load_vllm(model, max_model_len=max(len(p["prompt_token_ids"]) for p in prompts) + args.max_tokens,
                           seed=args.seed)
    # One engine-wide seed (load_vllm): a per-request seed would give every prompt the same random stream.
    params = SamplingParams(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens)

    # ---- generate: z ~ pi(.|x) -------------------------------------------------------------------
    outputs = llm.generate(prompts, params)

    # ---- segment: z -> <think> z_0 .. z_{k-1} </think> answer (Sec. 5, App. D) --------------------
    for x, out in zip(problems, outputs):
        print("=" * 100)
        print("problem:", x[:200].replace("\n", " "))
        for i, sample in enumerate(out.outputs):
            thought, outside, closed = episodes.split_think(sample.text)
            eps = episodes.split_episodes(thought, min_steps=args.min_steps)
            print(f"-- response {i}: {len(sample.token_ids)} tokens, finish={sample.finish_reason}, "
                  f"thought closed={closed}, episodes k={len(eps)}")
            for j, ep in enumerate(eps):
                print(f"   z_{j}: {ep[:120]!r}{'...' if len(ep) > 120 else ''}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    smoke(parse_args())
