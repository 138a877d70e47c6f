"""MRT: Meta Reinforcement Fine-Tuning (Qu et al., ICML 2025) -- the entry point.

    python mrt.py                     # smoke run: tiny model, vLLM, a few traces cut into episodes
    python mrt.py --model PATH ...    # the same on a real checkpoint

For now this is the smoke run of the pipeline's first half: sample responses z ~ pi(.|x), split the
thought (<think> ... </think>), cut it into episodes z_0 .. z_{k-1} (Sec. 5, App. D), and score every
thought prefix with the meta-prover: J_r(mu | x, z_{0:j}) (Eq. 4) and progress r_prg (Def. 6.1).
Algorithm 2 (the RL variant) and the choice of variant and baseline land here in later issues.
"""

import argparse
import os
import tempfile

import episodes
import prover
import toy


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None,
                   help="HF model folder to sample from; default: build a random-weight tiny model in a temp folder")
    p.add_argument("--problems", default=os.path.join(prover.DATA_DIR, "aime24.jsonl"),
                   help="JSONL file with 'problem' and 'answer' fields per line (default: data/aime24.jsonl)")
    p.add_argument("--num-problems", type=int, default=3, help="how many problems to sample for (default 3)")
    p.add_argument("--num-samples", dest="n", type=int, default=2, help="responses per problem (default 2)")
    p.add_argument("--max-tokens", type=int, default=256, help="max generated tokens per response (default 256)")
    p.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (App. D: 0.7)")
    p.add_argument("--min-steps", type=int, default=3, help="min steps per episode (App. D: 3)")
    p.add_argument("--prover-samples", dest="m", type=int, default=4,
                   help="m: forced-termination samples per prefix for J_r (App. D: 8)")
    p.add_argument("--prover-max-tokens", type=int, default=32, help="max tokens of each forced answer (App. D: 4096)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    prover.add_engine_args(p)
    args = p.parse_args(argv)
    for flag in ("num_problems", "n", "max_tokens", "min_steps", "m", "prover_max_tokens"):
        if getattr(args, flag) < 1:
            p.error(f"{prover.option_name(p, flag)} must be >= 1, got {getattr(args, flag)}")
    prover.check_engine_args(p, args)
    try:
        args.problems = prover.load_problems(args.problems)[:args.num_problems]
    except (OSError, ValueError) as e:
        p.error(f"--problems: {e}")
    if args.model is not None and not os.path.isdir(args.model):
        p.error(f"--model: no such folder: {args.model}")
    return args


def smoke(args):
    tmp = None
    model = args.model
    if model is None:
        tmp = tempfile.TemporaryDirectory(prefix="mrt-tiny-")
        model = toy.build_tiny_model(tmp.name)
        print(f"built tiny random-weight model in {model}")
    engine = prover.make_engine(model, engine=args.engine, dtype=args.dtype, max_model_len=args.max_model_len,
                                gpu_memory_utilization=args.gpu_memory_utilization, seed=args.seed)
    problems = [(q["problem"], q["answer"]) for q in args.problems]
    thinking = prover.resolve_thinking(args.thinking, engine.tokenizer)
    print(f"thinking: {'on' if thinking else 'off'} (--thinking {args.thinking})")
    mu = prover.MetaProver(engine, m=args.m, max_tokens=args.prover_max_tokens, seed=args.seed, thinking=thinking)

    # ---- generate: z ~ pi(.|x) -------------------------------------------------------------------
    prompts = [prover.build_prompt(engine.tokenizer, x, thinking=thinking) for x, _ in problems]
    outputs = engine.generate(prompts, n=args.n, temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed)

    # ---- segment: z -> <think> z_0 .. z_{k-1} </think> answer (Sec. 5, App. D) --------------------
    traces = []
    for (x, gold), samples in zip(problems, outputs):
        for sample in samples:
            thought, closed = episodes.reasoning_stream(sample.text, thinking, finished=sample.finish_reason == "stop")
            traces.append((x, gold, sample, closed, episodes.split_episodes(thought, min_steps=args.min_steps)))

    # ---- score: J_r(mu | x, z_{0:j}) for every prefix (Eq. 4), progress (Def. 6.1) ----------------
    scores = mu.score([(x, gold, episodes.thought_prefixes(eps), s.token_ids) for x, gold, s, _, eps in traces])

    for (x, gold, sample, closed, eps), score in zip(traces, scores):
        per_episode, _ = prover.progress(score.success_rates)
        print("=" * 100)
        print(f"problem: {x[:150]!r}  gold: {gold!r}")
        print(f"response: {sample.num_tokens} tokens, finish={sample.finish_reason}, "
              f"{'thought closed' if thinking else 'finished'}={closed}, "
              f"episodes k={len(eps)}, reward r(x, z)={prover.reward(sample.text, gold, thinking=thinking)}")
        print(f"   J_r(mu | x, z_0:0) = {score.success_rates[0]:.2f}")
        for j, ep in enumerate(eps):
            print(f"   z_{j}: {ep[:100]!r}{'...' if len(ep) > 100 else ''}")
            print(f"        J_r(mu | x, z_0:{j + 1}) = {score.success_rates[j + 1]:.2f}   r_prg = {per_episode[j]:+.2f}")
    engine.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    smoke(parse_args())
