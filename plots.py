"""plots.py: the paper's figures, drawn headless (Agg) from the results JSON a run already wrote.

    python plots.py results/model.json            # evaluate.py's results: Fig. 3, 7, 9 (and 8, 16) per benchmark
    python plots.py runs/toy/results.json         # the toy run (compare.py): one figure, a panel per measure
    python plots.py FILE --out DIR                # the PNGs into DIR instead of beside FILE

Nothing is re-run: every figure is a function of one results dict, and a dict that lacks a field the
figure needs is refused with the field's name. evaluate.py (unless --no-plots) and `python mrt.py` call
the same functions when they write their JSON.

    fig3        accuracy of mu after each episode: [maj@1]_j (blue) and [maj@p]_j at p times the tokens
                (green, dashed), the direct answer's pass@1 (grey); one panel per bucket of episode counts
                (Fig. 3, 24, 25)
    fig7        maj@K against the total tokens of K samples (token efficiency, Fig. 7), one line per model
    fig9        normalized regret against the token budget C0: solid within the budget, dashed for the budget-
                forcing extrapolation (Fig. 9, App. F)
    fig8        maj@K against total tokens, parallel (solid) against linearized (dashed) traces (Fig. 8)
    fig16       histogram of the backtrack episode's progress r_prg(z_1) (Fig. 16)
    toy_figure  the toy run: pass@1, tokens per correct answer, regret against budget, J_r against episode,
                the learning curves, and the share of episodes without progress; one colour per method
                throughout, error bars of one standard error over seeds

Imports: nothing from the project (matplotlib, json). evaluate.py and compare.py import it.
"""

import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")   # headless: no display on the machines this runs on
import matplotlib.pyplot as plt

SIZE = (7.0, 4.5)       # inches at DPI: 700 x 450 pixels, readable at the README's width
DPI = 100
# one colour per toy-run method, the same in every panel
METHOD_COLOURS = {"base": "tab:gray", "grpo": "tab:blue", "mrt-rl": "tab:orange", "mrt-rl-episode": "tab:red",
                  "length-penalty": "tab:purple", "star": "tab:green", "mrt-star": "tab:olive"}


def need(results, *path, where="results"):
    """results[path[0]][path[1]]...; a clear ValueError naming the missing field instead of a KeyError."""
    node = results
    for i, key in enumerate(path):
        if not isinstance(node, dict) or key not in node:
            raise ValueError(f"{where}: missing field {'.'.join(map(str, path[:i + 1]))!r} needed for this figure")
        node = node[key]
    return node


def _save(fig, path):
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=DPI)
    plt.close(fig)
    os.replace(tmp, path)   # atomic: a reader never sees half a PNG
    return path


# ==============================================================================================
# evaluate.py's figures, one benchmark at a time
# ==============================================================================================

def fig3(episodes, path, title):
    """Fig. 3 / 24 / 25 from evaluate.py's episodes analysis: per bucket of episode counts, mu's accuracy
    after each episode against the thought tokens spent."""
    buckets = [b for b in need(episodes, "buckets", where="episodes") if b.get("traces")]
    if not buckets:
        raise ValueError("episodes: no bucket holds a trace; nothing to draw")
    fig, axes = plt.subplots(1, len(buckets), figsize=(SIZE[0] / 2 * max(len(buckets), 2), SIZE[1]), squeeze=False)
    for ax, b in zip(axes[0], buckets):
        tokens = need(b, "prefix_tokens", where="episodes bucket")
        maj = need(b, "maj", where="episodes bucket")
        ax.plot(tokens, need(maj, "1", where="episodes bucket maj"), "o-", color="tab:blue", label="[maj@1]_j")
        for p in sorted((int(k) for k in maj if k != "1")):
            ax.plot([t * p for t in tokens], maj[str(p)], "--", color="tab:green", alpha=0.3 + 0.7 / p,
                    label=f"[maj@{p}]_j at {p}x tokens")
        if "direct_pass@k" in b:
            ax.axhline(b["direct_pass@k"]["1"], color="tab:gray", ls=":", label="direct answer, pass@1")
        ax.set(title=f"{b['episodes']} episodes ({b['traces']} traces)", xlabel="thought tokens",
               ylabel="accuracy of mu after episode j", ylim=(0, 1.02))
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: accuracy after each episode (Fig. 3)")
    return _save(fig, path)


def fig7(curves, path, title):
    """Fig. 7: maj@K against the total tokens of K samples, one line per {label: evaluate.py efficiency rows}."""
    fig, ax = plt.subplots(figsize=SIZE)
    for label, rows in curves.items():
        ax.plot([need(r, "total_tokens", where=f"{label} efficiency") for r in rows],
                [need(r, "maj@K", where=f"{label} efficiency") for r in rows], "o-", label=label,
                color=METHOD_COLOURS.get(label))
    ax.set(title=f"{title}: token efficiency (Fig. 7)", xlabel="total tokens of K samples", ylabel="maj@K accuracy")
    ax.set_xscale("log")
    ax.legend()
    return _save(fig, path)


def fig9(regret, path, title, extrapolate=None):
    """Fig. 9: normalized regret against the budget C0, solid within the budget the traces were sampled
    at, dashed past it (budget forcing, App. F), when the extrapolate analysis ran."""
    fig, ax = plt.subplots(figsize=SIZE)
    within = need(regret, "normalized_regret_by_tokens", where="regret")
    ax.plot([int(c) for c in within], list(within.values()), "o-", color="tab:blue", label="within the budget")
    if extrapolate is not None:
        forced = need(extrapolate, "normalized_regret", where="extrapolate")
        ax.plot([int(c) for c in forced], list(forced.values()), "o--", color="tab:blue", label="budget forcing (App. F)")
    ax.set(title=f"{title}: normalized regret (Fig. 9)", xlabel="token budget C0", ylabel="normalized regret (lower is better)")
    ax.legend()
    return _save(fig, path)


def fig8(parallel, linearized, path, title):
    """Fig. 8: maj@K against total tokens for parallel and linearized (sliding-window) traces."""
    fig, ax = plt.subplots(figsize=SIZE)
    for name, rows, style in (("parallel", parallel, "o-"), ("linearized", linearized, "s--")):
        if rows is not None:
            ax.plot([need(r, "total_tokens", where=name) for r in rows], [need(r, "maj@K", where=name) for r in rows],
                    style, label=name)
    ax.set(title=f"{title}: parallel against linearized (Fig. 8)", xlabel="total tokens", ylabel="maj@K accuracy")
    ax.legend()
    return _save(fig, path)


def fig16(hist, path, title):
    """Fig. 16: the histogram of the backtrack episode's progress."""
    edges, counts = need(hist, "edges", where="progress-hist"), need(hist, "counts", where="progress-hist")
    fig, ax = plt.subplots(figsize=SIZE)
    ax.bar([(a + b) / 2 for a, b in zip(edges, edges[1:])], counts, width=(edges[1] - edges[0]) * 0.9)
    ax.set(title=f"{title}: progress of the backtrack episode (Fig. 16)", xlabel="r_prg(z_1; c)", ylabel="backtracks")
    return _save(fig, path)


def model_name(path):
    """A short name for a model folder: "grpo/seed_0 step_50" for runs/toy/grpo/seed_0/checkpoints/step_50."""
    parts = path.rstrip("/").split("/")
    if len(parts) >= 3 and parts[-2] == "checkpoints":
        return "/".join(parts[-4:-2]) + " " + parts[-1]
    return parts[-1]


def evaluation_figures(results, stem, title=None):
    """Every figure evaluate.py's results hold, per benchmark: {stem}.{benchmark}.fig3.png etc. Returns the paths."""
    title = title or model_name(str(need(results, "config", "model")))
    paths = []
    for name, e in need(results, "benchmarks").items():
        head = f"{title}, {name}"
        if "episodes" in e:
            paths.append(fig3(e["episodes"], f"{stem}.{name}.fig3.png", head))
        if "efficiency" in e:
            paths.append(fig7({title: e["efficiency"]}, f"{stem}.{name}.fig7.png", head))
        if "regret" in e:
            paths.append(fig9(e["regret"], f"{stem}.{name}.fig9.png", head, e.get("extrapolate")))
        if "parallel" in e or "linearized" in e:
            paths.append(fig8(e.get("parallel"), e.get("linearized"), f"{stem}.{name}.fig8.png", head))
        if "progress-hist" in e and e["progress-hist"].get("n"):
            paths.append(fig16(e["progress-hist"], f"{stem}.{name}.fig16.png", head))
    return paths


# ==============================================================================================
# The toy run (compare.py): one figure, a panel per measure
# ==============================================================================================

def toy_figure(results, path):
    """The toy run's results.json as one figure: mean and one standard error over seeds per method."""
    methods = need(results, "methods")
    names = list(methods)
    seeds = len(need(methods[names[0]], "seeds", where=names[0]))
    fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
    (a_acc, a_tok, a_reg, a_jr), (a_curve, a_uninf, a_unprod, a_spare) = axes
    a_spare.axis("off")
    x = range(len(names))
    colours = [METHOD_COLOURS.get(n, "black") for n in names]

    def bars(ax, key, ylabel, title):
        values = [need(methods[n], key, where=n) for n in names]
        ax.bar(x, [v["mean"] for v in values], yerr=[v["se"] for v in values], color=colours, capsize=3)
        ax.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
        ax.set(ylabel=ylabel, title=title)
    bars(a_acc, "pass@1", "pass@1 (held-out)", "accuracy")
    bars(a_tok, "episodes_per_correct", "episodes per correct answer", "search efficiency (lower is better)")
    for n, c in zip(names, colours):
        reg = need(methods[n], "normalized_regret", where=n)
        budgets = sorted(reg, key=int)
        a_reg.errorbar([int(b) for b in budgets], [reg[b]["mean"] for b in budgets], yerr=[reg[b]["se"] for b in budgets],
                       fmt="o-", color=c, label=n, capsize=2)
        j_r = need(methods[n], "J_r", where=n)
        a_jr.errorbar(range(len(j_r)), [p["mean"] for p in j_r], yerr=[p["se"] for p in j_r], fmt="o-", color=c,
                      label=n, capsize=2, ms=3)
        if "curve" in methods[n] and n != "base":
            curve = methods[n]["curve"]
            steps = [p["step"]["mean"] for p in curve]
            a_curve.errorbar(steps, [p["pass@1"]["mean"] for p in curve],
                             yerr=[p["pass@1"]["se"] for p in curve], fmt="o-", color=c, label=n, capsize=2)
            a_uninf.errorbar(steps, [need(p, "uninformative_share", where=n)["mean"] for p in curve],
                             yerr=[p["uninformative_share"]["se"] for p in curve], fmt="o-", color=c, label=n, capsize=2)
    a_reg.set(title="normalized regret (Fig. 9)", xlabel="token budget C0", ylabel="normalized regret (lower is better)")
    a_jr.set(title="J_r(mu | x, z_0:j) against episode", xlabel="episode j (0: empty thought)",
             ylabel="J_r over the traces that reach j")
    a_curve.set(title="learning curves", xlabel="RL step", ylabel="pass@1 (held-out)")
    a_uninf.set(title="uninformative tries over training", xlabel="RL step",
                ylabel="share of episodes adding nothing before x is found")
    uninformative = [need(methods[n], "uninformative_share", where=n) for n in names]
    check = [need(methods[n], "double_check_share", where=n) for n in names]
    a_unprod.bar(x, [v["mean"] for v in uninformative], yerr=[v["se"] for v in uninformative], color=colours, capsize=3,
                 label="uninformative tries")
    a_unprod.bar(x, [v["mean"] for v in check], bottom=[v["mean"] for v in uninformative], yerr=[v["se"] for v in check],
                 color=colours, alpha=0.45, hatch="//", capsize=3, label="double-checks (hatched)")
    a_unprod.set_xticks(list(x), names, rotation=30, ha="right", fontsize=8)
    a_unprod.set(title="episodes without progress", ylabel="share of episodes")
    a_unprod.legend(fontsize=8)
    for ax in (a_reg, a_jr, a_curve, a_uninf):
        ax.legend(fontsize=7)
    fig.suptitle(f"MRT against outcome-reward RL in the toy world: {seeds} seeds, mean ± 1 s.e.")
    return _save(fig, path)


# ==============================================================================================
# CLI: redraw from an existing results JSON
# ==============================================================================================

def draw(results_path, out_dir=None):
    """Every figure of one results file (toy run or evaluate.py), into out_dir (default: beside it)."""
    try:
        with open(results_path, encoding="utf-8") as f:
            results = json.load(f)
    except OSError as e:
        raise ValueError(f"{results_path}: cannot read it ({e.strerror})")
    except json.JSONDecodeError as e:
        raise ValueError(f"{results_path}: not JSON (line {e.lineno}: {e.msg})")
    out_dir = out_dir or os.path.dirname(os.path.abspath(results_path))
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, os.path.splitext(os.path.basename(results_path))[0])
    if isinstance(results, dict) and "methods" in results:
        return [toy_figure(results, stem + ".png")]
    if isinstance(results, dict) and "benchmarks" in results:
        return evaluation_figures(results, stem)
    raise ValueError(f"{results_path}: neither a toy run's results (no 'methods') nor evaluate.py's (no 'benchmarks')")


def main(argv=None):
    p = argparse.ArgumentParser(prog="plots.py", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", help="a results JSON: evaluate.py --out, or the toy run's results.json")
    p.add_argument("--out", default=None, help="folder for the PNGs (default: the results file's folder)")
    args = p.parse_args(argv)
    try:
        paths = draw(args.results, args.out)
    except ValueError as e:
        raise SystemExit(f"plots.py: {e}")
    print("\n".join(f"wrote {q}" for q in paths))


if __name__ == "__main__":
    main(sys.argv[1:])
