"""mrt.py: MRT, Meta Reinforcement Fine-Tuning (Qu et al., ICML 2025), the entry point.

    torchrun --nproc_per_node 8 mrt.py --model PATH                  # MRT (RL), Algorithm 2, Table 3 defaults
             ... --progress-credit episode                            # Sec. 6.2's per-episode reward instead
    torchrun --nproc_per_node 8 mrt.py --model PATH --method grpo    # outcome-reward GRPO (Table 1)
             ... --method length-penalty                              # GRPO with Arora & Zanette's length penalty
             ... --method mrt-star | star                             # Algorithm 1 / its STaR baseline
    python mrt.py [--quick]                                           # no --model: the toy-world comparison
    python mrt.py --smoke [--model PATH]                              # sample, segment, score every prefix with mu

One program per mode; this file only picks one and hands it a checked config:
    mrt-rl                  mrt_rl.py   Algorithm 2 as a step function of grpo.py's loop (Eq. 3's three forms)
    grpo, length-penalty    grpo.py     the GRPO loop and its step function (Table 1's RL baselines)
    mrt-star, star          star.py     Algorithm 1, the STaR baseline and the SFT loop
    (no --model)            compare.py  every method from the toy world's warm start, evaluated, one table
    --smoke                 evaluate.py smoke(): the measurement half of the pipeline, printed trace by trace

Algorithm 2's trace-level forms update as outcome GRPO does in expectation, and --progress-credit episode
(Sec. 6.2) does not: the argument is written once, in mrt_rl.py above progress_advantages, and checked
exactly in test_mrt.py. The toy run (compare.py) measures both beside GRPO and the length penalty.

Imports: the programs above (grpo, mrt_rl, star, compare, evaluate), policy (the process's end), toy (the
tiny model of --smoke without --model). Nothing imports mrt.py.
"""

import argparse
import sys
import tempfile

import compare
import evaluate
import grpo
import mrt_rl
import policy
import star
import toy

from transformers import AutoTokenizer

RL_METHODS = ("mrt-rl", "grpo", "length-penalty")
STAR_METHODS = ("mrt-star", "star")
METHODS = RL_METHODS + STAR_METHODS


# ==============================================================================================
# One parser per mode
# ==============================================================================================

def rl_parser():
    p = argparse.ArgumentParser(prog="mrt.py --model PATH [--method mrt-rl|grpo|length-penalty]",
                                description="MRT (RL), Algorithm 2 (mrt_rl.py), and the Table 1 RL baselines on "
                                            "grpo.py's loop; defaults from Table 3 (App. B.2).")
    p.add_argument("--method", choices=RL_METHODS, default="mrt-rl",
                   help="mrt-rl (Algorithm 2, default), grpo (outcome reward), length-penalty (Table 1 baselines)")
    mrt_rl.add_args(p)
    return p


def star_parser():
    p = argparse.ArgumentParser(prog="mrt.py --model PATH --method mrt-star|star",
                                description="MRT (STaR), Algorithm 1, and the STaR baseline (star.py); SFT defaults "
                                            "from Table 2 (App. B.2).")
    p.add_argument("--method", choices=STAR_METHODS, required=True,
                   help="mrt-star (Algorithm 1: progress-selected prefixes) or star (correct rollouts only)")
    star.add_star_args(p, variant_flag=False)   # --method says it here
    return p


def smoke_parser():
    p = argparse.ArgumentParser(prog="mrt.py --smoke", description="Sample responses, cut their thoughts into "
                                "episodes and score every thought prefix with mu (Eq. 4, Def. 6.1).")
    evaluate.add_smoke_args(p)
    return p


def full_help():
    """`python mrt.py --help`: every mode, with all of its flags."""
    parts = [__doc__, "=" * 100, compare.toy_parser(prog="mrt.py (no --model)").format_help()]
    for parser in (rl_parser(), star_parser(), smoke_parser()):
        parts += ["=" * 100, parser.format_help()]
    return "\n".join(parts)


# ==============================================================================================
# Dispatch
# ==============================================================================================

def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", choices=METHODS, default=None)
    pre.add_argument("--model", default=None)
    pre.add_argument("--smoke", action="store_true")
    known, _ = pre.parse_known_args(argv)
    if ("-h" in argv or "--help" in argv) and known.model is None and known.method is None and not known.smoke:
        print(full_help())
        return None
    if known.smoke:
        p = smoke_parser()
        args = evaluate.check_smoke_args(p, p.parse_args(argv))
        if args.model is not None:
            return evaluate.smoke(args, args.model)
        with tempfile.TemporaryDirectory(prefix="mrt-tiny-") as tmp:
            print(f"built tiny random-weight model in {toy.build_tiny_model(tmp)}")
            return evaluate.smoke(args, tmp)
    if known.model is None and known.method is None:
        return compare.toy_run(compare.parse_toy_args(argv, prog="mrt.py"))     # the default run
    if known.method in STAR_METHODS:
        p = star_parser()
        cfg = p.parse_args(argv)
        cfg.variant = "mrt" if cfg.method == "mrt-star" else "star"
        cfg = star.check_star_args(p, cfg)
        cfg.command = "star"
        return star.main(cfg=cfg)
    p = rl_parser()
    cfg = p.parse_args(argv)
    if cfg.method == "mrt-rl":
        cfg = mrt_rl.check_args(p, cfg)
        return grpo.main(cfg=cfg, step_fn=mrt_rl.Algorithm2(cfg, AutoTokenizer.from_pretrained(cfg.model)))
    if cfg.method == "length-penalty":
        cfg.reward = "length-penalty"
    return grpo.main(cfg=grpo.check_args(p, cfg))


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"mrt.py: {e}")
    policy.exit_process()
