"""Tests of policy.py, the trainer plumbing both loops share: the cosine schedule and weight decay
groups, token-budgeted micro-batches, packed rows and their log-probs. Fixture from conftest:
tiny_model.
"""

import os

import pytest
import torch

import policy


# ==============================================================================================
# policy.py: the schedule, token-budgeted micro-batches, packed rows
# ==============================================================================================

def test_schedule_and_weight_decay_follow_the_hf_trainer(tiny_model):
    # 20 updates, warmup 0.1: ceil(2) warmup updates from lr 0, then cosine to 0
    assert [policy.cosine_schedule(s, 20, 0.1) for s in (0, 1, 2, 11, 20)] == pytest.approx([0.0, 0.5, 1.0, 0.5, 0.0])
    assert policy.cosine_schedule(0, 10, 0.0) == 1.0  # no warmup: the first update at full lr
    assert policy.cosine_schedule(0, 7, 0.1) == 0.0 and policy.cosine_schedule(1, 7, 0.1) == 1.0  # ceil(0.7) = 1
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    opt, _ = policy.make_optimizer(model, 1e-6, 0.01, 10, 0.1)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.01 for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in decay) == (not ("norm" in name or name.endswith("bias"))), name


def test_micro_batches_respect_the_token_budget():
    lengths = [5, 30, 7, 12, 3, 40, 8]
    batches = policy.micro_batches(lengths, 32)
    assert all(len(row) == 1 for b in batches for row in b)      # unpacked: one sequence per row
    assert sorted(row[0] for b in batches for row in b) == list(range(7))
    for b in batches:
        assert len(b) == 1 or max(lengths[row[0]] for row in b) * len(b) <= 32
    assert [lengths[row[0]] for row in batches[0]] == [3, 5, 7, 8]   # sorted by length: little padding
    # padded: [3,5,7,8] -> 4 x 8, [12] -> 12, [30] -> 30, [40] -> 40: 114 tokens computed for 105
    assert policy.padded_fraction(lengths, batches) == pytest.approx(1 - 105 / 114)


def test_packed_rows_first_fit_decreasing_by_hand():
    lengths = [5, 30, 7, 12, 3, 40, 8]
    # width 40: 40 | 30+8 | 12+7+5+3 (first fit, longest first)
    assert policy.pack_rows(lengths, 40) == [[5], [1, 6], [3, 2, 0, 4]]
    batches = policy.micro_batches(lengths, 80, pack=True)        # rows of <= 40 tokens, 2 rows per micro-batch
    assert batches == [[[5], [1, 6]], [[3, 2, 0, 4]]]
    # a micro-batch is as wide as its longest row: 2 x 40 (40 | 30+8), then 1 x 27 (12+7+5+3)
    assert policy.padded_fraction(lengths, batches) == pytest.approx(1 - 105 / 107)


def test_packed_log_probs_equal_padded(tiny_model):
    """Several sequences in one row (position ids restarting, attention kept within each) give the
    same log-probs as one padded row per sequence, and so the same loss gradient."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 2000, (n,), generator=g).tolist() for n in (3, 6, 2, 5, 4)]
    completions = [torch.randint(5, 2000, (n,), generator=g).tolist() for n in (12, 1, 7, 3, 2)]
    lengths = [len(p) + len(c) for p, c in zip(prompts, completions)]
    (packed_rows,) = policy.micro_batches(lengths, 1000, pack=True)
    assert any(len(row) > 1 for row in packed_rows)
    order = [i for row in packed_rows for i in row]
    padded_rows = [[i] for i in order]
    grads = []
    for rows in (packed_rows, padded_rows):
        model.zero_grad()
        logp, comp = policy.sequence_logprobs(model, rows, prompts, completions, pad_id=0)
        (logp * comp).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        if rows is packed_rows:
            packed_logp, packed_comp = logp.detach(), comp
    assert torch.equal(packed_comp, comp)
    valid = torch.tensor([[t + 1 < lengths[i] for t in range(comp.shape[1])] for i in order])
    assert torch.allclose(packed_logp[valid], logp.detach()[valid], atol=1e-5)
    assert (packed_logp[~valid] == 0).all()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name


# ==============================================================================================
# policy.py: the chunked output head, one GPU per rank
# ==============================================================================================

@pytest.mark.parametrize("with_bias", [False, True])
def test_head_log_prob_equals_autograd_on_full_logits(with_bias):
    """HeadLogProb (the head applied 8 rows at a time, logits recomputed in backward) gives autograd's
    log-probs and gradients of log_softmax(h W^T + b)[target], for hidden states, head and bias."""
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(37, 16, generator=g, dtype=torch.float64).float().requires_grad_()
    weight = torch.randn(50, 16, generator=g).requires_grad_()
    bias = torch.randn(50, generator=g).requires_grad_() if with_bias else None
    targets = torch.randint(0, 50, (37,), generator=g)
    upstream = torch.randn(37, generator=g)                      # d loss / d logp
    got = policy.HeadLogProb.apply(hidden, weight, bias, targets, 8)
    grads = torch.autograd.grad((got * upstream).sum(), [t for t in (hidden, weight, bias) if t is not None])
    logits = torch.nn.functional.linear(hidden, weight, bias)
    want = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    want_grads = torch.autograd.grad((want * upstream).sum(), [t for t in (hidden, weight, bias) if t is not None])
    assert torch.allclose(got, want, atol=1e-5)
    for a, b in zip(grads, want_grads):
        assert torch.allclose(a, b, atol=1e-5)
    # rows that already are logits (W = None: heads that do more than a matmul)
    logits = logits.detach().requires_grad_()
    got = policy.HeadLogProb.apply(logits, None, None, targets, 8)
    (grad,) = torch.autograd.grad((got * upstream).sum(), [logits])
    want = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    (want_grad,) = torch.autograd.grad((want * upstream).sum(), [logits])
    assert torch.allclose(got, want, atol=1e-5) and torch.allclose(grad, want_grad, atol=1e-5)


def test_token_logprobs_plain_head_equals_the_full_logits_path(tiny_model, monkeypatch):
    """The tiny Qwen2 (tied embeddings) scored through the hook + chunked head equals the same model
    scored from its full logits: log-probs and every parameter's gradient, the tied head included."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert model.config.model_type in policy.PLAIN_HEAD_MODELS
    ids = torch.randint(5, 2000, (3, 11), generator=torch.Generator().manual_seed(1))
    attn = torch.ones_like(ids)
    attn[2, 7:] = 0
    results = []
    for plain in (policy.PLAIN_HEAD_MODELS, ()):
        monkeypatch.setattr(policy, "PLAIN_HEAD_MODELS", plain)
        model.zero_grad()
        logp = policy.token_logprobs(model, ids, attn, chunk=5)
        (logp * attn[:, 1:]).sum().backward()
        results.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.allclose(results[0][0], results[1][0], atol=1e-5)
    for name, grad in results[0][1].items():
        assert torch.allclose(grad, results[1][1][name], atol=1e-5), name


@pytest.mark.parametrize("environ, want", [
    ({"LOCAL_RANK": "3"}, {"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "3"}),
    ({"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}, {"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "6"}),
    ({"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "5"}, {"LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "5"}),
    ({}, {}),                                                    # no torchrun: nothing to do
])
def test_pin_local_gpu_leaves_one_gpu_and_local_rank_0(environ, want):
    """A rank without a process group (evaluate.py) sees one GPU, and LOCAL_RANK names it as 0: the
    index vLLM's in-process executor uses (uniproc_executor.py:86-88), and policy.device()'s."""
    environ = dict(environ)
    policy.pin_local_gpu(environ)
    assert environ == want
    assert policy.local_rank(environ) == 0


def test_pin_local_gpu_refuses_more_ranks_than_gpus():
    with pytest.raises(SystemExit, match="LOCAL_RANK=2 but CUDA_VISIBLE_DEVICES=0,1 lists 2 GPUs"):
        policy.pin_local_gpu({"LOCAL_RANK": "2", "CUDA_VISIBLE_DEVICES": "0,1"})


def test_trainer_ranks_keep_every_gpu_visible(tmp_path):
    """A trainer rank does not narrow CUDA_VISIBLE_DEVICES (NCCL needs its peers visible) and computes
    on cuda:LOCAL_RANK, the device vLLM's external launcher takes from the same variable."""
    import subprocess
    import sys
    code = ("import os, policy, grpo, star, mrt; "
            "print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['LOCAL_RANK'], policy.local_rank())")
    env = {**os.environ, "LOCAL_RANK": "5", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.abspath(__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0,1,2,3,4,5,6,7", "5", "5"]


# ==============================================================================================
# memory.py: the preflight's arithmetic against a measured CPU peak
# ==============================================================================================

@pytest.mark.parametrize("checkpointing", [0, 1])
def test_memory_preflight_matches_the_measured_cpu_peak(checkpointing):
    """The bytes memory.py predicts one training step adds on top of the resident states (activations,
    the output head's chunks and gradient; fp32, one process) against the peak resident set measured
    around a real step of a random 8-layer Qwen2 at 2048 tokens, within 10 %; and the resident states
    (fp32 params + AdamW m, v: 12 bytes per parameter) within 10 % plus the 40 MiB the runtime adds
    (thread pools, kernels' scratch)."""
    import json
    import subprocess
    import sys

    import memory
    from transformers import Qwen2Config
    shape_args = dict(hidden_size=256, intermediate_size=1024, vocab_size=8000, num_hidden_layers=8,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, os.path.join(here, "check_memory_peak.py"), "256", "1024", "8000", "8",
                          "2048", str(checkpointing)], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    shape = memory.model_shape(Qwen2Config(**shape_args))
    assert shape.params == measured["params"]
    step = memory.step_activation_bytes(shape, 2048, bool(checkpointing), dtype_bytes=4)
    measured_step = measured["peak"] - measured["resident"]
    print(f"checkpointing {checkpointing}: step predicted {step / 2**20:.1f} MiB, measured {measured_step / 2**20:.1f} MiB; "
          f"resident predicted {memory.resident_bytes(shape, 1, False, 0) / 2**20:.1f} MiB, "
          f"measured {measured['resident'] / 2**20:.1f} MiB")
    assert abs(step - measured_step) <= 0.10 * measured_step
    resident = memory.resident_bytes(shape, 1, bf16=False, beta=0)
    assert abs(resident - measured["resident"]) <= 0.10 * resident + 40 * 2**20


def test_memory_plan_by_hand_and_its_advice():
    """The preflight's terms for R1-Distill-Qwen-1.5B's shape on 8 GPUs, by hand, and the flags it names
    when a phase does not fit."""
    import memory
    from transformers import Qwen2Config
    shape = memory.model_shape(Qwen2Config(hidden_size=1536, num_hidden_layers=28, intermediate_size=8960,
                                           vocab_size=151936, num_attention_heads=12, num_key_value_heads=2,
                                           tie_word_embeddings=False))
    assert shape.params == 1_777_088_000
    # A = 2 (7 * 1536 + 3 * 256 + 4 * 8960) + 8 * 1536 = 94,720 + 12,288 bytes per token and layer
    assert memory.layer_activation_bytes(shape, 2) == 107_008
    # checkpointed, 32768 tokens: backward (kept inputs + 2 recomputed layers' worth) beats the forward
    kept = 32768 * 28 * 1536 * 2
    assert memory.step_activation_bytes(shape, 32768, True, 2) == kept + 2 * 32768 * 107_008 + 4 * 151936 * 1536
    terms = memory.training_terms(shape, 8, 32768, True, True, beta=0)
    assert terms["sharded states: fp32 params, grads, AdamW m and v"] == 16 * 1_777_088_000 / 8
    root = 2 * 151936 * 1536 + 1536
    assert terms["root's gradient at its reduce-scatter (bf16 + fp32)"] == 6 * root
    assert terms["attention mask of a padded micro-batch [B, 1, T, T]"] == 2 ** 29   # 32768^2 / 2 bytes
    with_ref = memory.training_terms(shape, 8, 32768, True, True, beta=0.04)
    assert with_ref["reference model's root, unsharded after its forward"] == 2 * root
    assert memory.runtime_bytes(8) == memory.runtime_bytes(1) + memory.NVLS_BYTES
    gib = 2 ** 30
    ok = memory.plan(shape, 8, 32768, True, True, 0.0, fraction=0.7, sleep=True, device_bytes=80 * gib)
    assert ok.problems == []
    # no checkpointing, the engine awake at 0.7: the advice names all three flags
    bad = memory.plan(shape, 8, 32768, False, True, 0.0, fraction=0.7, sleep=False, device_bytes=80 * gib)
    assert len(bad.problems) == 1 and "--gradient-checkpointing on" in bad.problems[0]
    assert "--vllm-sleep on" in bad.problems[0] and "--micro-batch-tokens" in bad.problems[0]
    # sleep mode at 0.97: the engine cannot wake beside the resident states; the advice is the largest fraction
    wake = memory.plan(shape, 1, 16384, True, True, 0.0, fraction=0.97, sleep=True, device_bytes=80 * gib)
    room = (80 * gib - 12 * 1_777_088_000 - memory.runtime_bytes(1)) / (80 * gib)
    assert any(f"use at most {room:.2f}" in problem for problem in wake.problems)


def test_bench_memory_and_the_gpu_check_run_on_cpu(tmp_path):
    """`bench.py memory` on R1-1.5B's config says what fits and exits 1 when it does not, naming the
    flags; `bench.py gpu --shape tiny --skip-mrt` runs the GPU check's training code on CPU (the same
    load_policy, train_step and preflight as on a GPU, small)."""
    import subprocess
    import sys
    from transformers import Qwen2Config
    Qwen2Config(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                intermediate_size=8960, vocab_size=151936, tie_word_embeddings=False).save_pretrained(tmp_path)
    here = os.path.dirname(os.path.abspath(__file__))

    def bench(*args):
        return subprocess.run([sys.executable, "bench.py", *args], cwd=here, capture_output=True, text=True, timeout=300)
    fits = bench("memory", "--model", str(tmp_path), "--gpu-memory-gib", "80", "--nproc", "8")
    assert fits.returncode == 0 and fits.stdout.strip().endswith("fits"), fits.stdout + fits.stderr
    assert "1.78 B parameters" in fits.stdout and "vLLM asleep while training at 0.7" in fits.stdout
    tight = bench("memory", "--model", str(tmp_path), "--gpu-memory-gib", "80", "--nproc", "8", "--gradient-checkpointing", "off",
                  "--vllm-sleep", "off")
    assert tight.returncode == 1 and "DOES NOT FIT: training needs" in tight.stdout
    assert "--gradient-checkpointing on" in tight.stdout and "--vllm-sleep on" in tight.stdout
    check = bench("gpu", "--shape", "tiny", "--skip-mrt", "--tokens", "512,768")
    assert check.returncode == 0, check.stderr[-3000:]
    lines = [line for line in check.stdout.splitlines() if line.startswith("train_step at")]
    assert [line.split(" tokens,")[0] for line in lines] == ["train_step at 512", "train_step at 768"]
    assert all("tokens/s" in line for line in lines)


@pytest.mark.parametrize("checkpointing", ["on", "off"])
def test_a_loaded_policy_trains_with_checkpointing(tiny_model, checkpointing):
    """load_policy's trainable model is in train mode (from_pretrained returns it in eval mode, where a
    decoder layer never checkpoints), so with checkpointing on each layer's forward runs twice in a
    training step (once forward, once recomputed in backward) and with it off once."""
    import types

    import grpo
    policy.setup_distributed()
    model = policy.load_policy(tiny_model, gradient_checkpointing=checkpointing)
    assert model.training and all(m.training for m in model.modules())
    calls = []
    # a pre-hook: non-reentrant checkpointing stops recomputing once the last saved tensor is back (early
    # stop), before a forward hook at the end of the MLP would run
    model.model.layers[0].mlp.register_forward_pre_hook(lambda *_: calls.append(1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    cfg = types.SimpleNamespace(micro_batch_tokens=1000, ppo_epochs=1, beta=0.0, epsilon=0.2, epsilon_high=0.2,
                                loss_agg="token-mean", max_grad_norm=1e9, pack_sequences=False)
    rollout = grpo.Rollout([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], torch.tensor([1.0, -1.0]))
    grpo.train_step(model, opt, sched, rollout, cfg, pad_id=2)
    assert len(calls) == (2 if checkpointing == "on" else 1)
    frozen = policy.load_policy(tiny_model, trainable=False)
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_a_cpu_install_on_a_gpu_machine_is_refused_in_one_line(tmp_path):
    """With a (fake) nvidia-smi on PATH that lists one GPU and torch's CPU build, the trainers' setup,
    the engines and `bench.py gpu` stop with one line naming the GPU install; MRT_ALLOW_CPU=1 runs anyway."""
    import subprocess
    import sys
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-00000000-0000-0000-0000-000000000000)'\n")
    fake.chmod(0o755)
    here = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    env.pop("MRT_ALLOW_CPU", None)

    def run(*args, extra=None):
        return subprocess.run([sys.executable, *args], cwd=here, capture_output=True, text=True, timeout=120,
                              env={**env, **(extra or {})})
    for args in (["-c", "import policy; policy.setup_distributed()"],
                 ["-c", "import prover, sys; prover.make_engine(sys.argv[1], engine='hf')", str(tmp_path)],
                 ["bench.py", "gpu", "--shape", "tiny", "--skip-mrt"]):
        out = run(*args)
        assert out.returncode == 1, out.stdout + out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "1 NVIDIA GPU(s)" in lines[0] and "pip install vllm==0.32.0" in lines[0], out.stderr
    allowed = run("-c", "import policy; print(policy.setup_distributed())", extra={"MRT_ALLOW_CPU": "1"})
    assert allowed.returncode == 0 and allowed.stdout.strip() == "(0, 1)", allowed.stderr
