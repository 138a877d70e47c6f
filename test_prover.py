"""Tests of prover.py: prompts (build_prompt, --thinking, Fig. 22's TIME_IS_UP), problem files
(load_problems), the dtype rule, the vLLM and HF engines and their weight sync, the meta-prover mu
(Eq. 4) and progress (Def. 6.1). Fixtures from conftest: tiny_model, tokenizer, chatml_model,
vllm_engine, hf_engine, restore_engine_weights; it runs check_compiled_engine.py with run_cli.
"""

import json
import os
import types

import pytest
import torch

import episodes
import evaluate
import grader
import machine
import prover
from conftest import PROBLEMS, FakeEngine, _para, run_cli
from episodes import split_episodes, split_think, thought_prefixes


# ==============================================================================================
# prover.py: engines, weight sync, prompts, the meta-prover mu (Eq. 4) and progress (Def. 6.1)
# ==============================================================================================

def test_build_prompt_round_trip_one_bos(tokenizer):
    prefix = "Okay, so 1+1.\n\nWait, let me check.\n\n"
    ids = prover.build_prompt(tokenizer, PROBLEMS[0], thought_prefix=prefix)
    expected = (prover.BOS + prover.USER + PROBLEMS[0] + " " + prover.PROMPT_SUFFIX + prover.ASSISTANT
                + "<think>\n" + prefix)
    assert tokenizer.decode(ids) == expected
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    # the prompt without prefix is a token-level prefix of the prompt with it
    head = prover.build_prompt(tokenizer, PROBLEMS[0])
    assert ids[:len(head)] == head


def test_build_prompt_template_without_think_and_auto_bos(tokenizer):
    # A template that does not open the thought, on a tokenizer that would add its own BOS.

    class OtherTemplate:
        bos_token_id = tokenizer.bos_token_id

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return prover.BOS + "User: " + messages[0]["content"] + "\nAssistant:"

        def encode(self, text, add_special_tokens=True):
            ids = tokenizer.encode(text, add_special_tokens=False)
            return [tokenizer.bos_token_id] + ids if add_special_tokens else ids

    ids = prover.build_prompt(OtherTemplate(), "2+2?", thought_prefix="Hmm.")
    assert tokenizer.decode(ids).endswith("Assistant:<think>\nHmm.")
    assert ids.count(tokenizer.bos_token_id) == 1


def test_time_is_up_is_our_reading_of_fig22():
    assert prover.TIME_IS_UP == (
        "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking and "
        "formulate a final answer based on what I already have.\n\n</think>\n\n"
        "**Step-by-Step Explanation and Answer:**\n\n1. **")
    assert prover.time_is_up_suffix("a\n\n") == prover.TIME_IS_UP
    assert prover.time_is_up_suffix("") == prover.TIME_IS_UP
    assert prover.time_is_up_suffix("a") == "\n\n" + prover.TIME_IS_UP
    assert prover.time_is_up_suffix("a\n") == "\n" + prover.TIME_IS_UP
    # mu's prompt closes the thought: what it generates is graded as an answer
    thought, outside, closed = split_think("a\n\n" + prover.TIME_IS_UP + "x = \\boxed{3}")
    assert closed and thought.endswith("what I already have.\n\n") and grader.extract_answer(outside, thinking=False) == "3"


def _capabilities(monkeypatch, **flags):
    """Pretend this CPU has exactly these torch.cpu capabilities (and no GPU)."""
    caps = types.MappingProxyType({"architecture": "x86_64", "avx2": True, **flags})
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: caps)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_dtype_auto_is_resolved_per_device(tiny_model, tmp_path, monkeypatch, capsys):
    assert machine.checkpoint_dtype(tiny_model) == "float32"
    config = json.load(open(os.path.join(tiny_model, "config.json")))
    # a model of SmolLM2-135M's shape (a config is all the rule reads) is not overhead-bound; the tiny one is.
    # By hand: 49152*576 + 30*(2*576*576 + 2*576*3*64 + 3*576*1536) = 134,479,872 (SmolLM2-135M less norms)
    shape = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                 intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True, layer_types=["full_attention"] * 30)
    assert machine.parameter_count(types.SimpleNamespace(**shape)) == 134_479_872
    assert machine.parameter_count(types.SimpleNamespace(**config)) < machine.OVERHEAD_BOUND_PARAMS
    big = tmp_path / "135m"
    big.mkdir()
    json.dump({**config, **shape}, open(big / "config.json", "w"))
    assert machine.overhead_bound(tiny_model) and not machine.overhead_bound(str(big))
    # a CPU without native bf16 (AVX2 only): float32, whatever the checkpoint
    _capabilities(monkeypatch)
    assert not machine.cpu_computes_bf16() and machine.cpu_capability() == "x86_64 avx2 (no native bf16)"
    assert machine.resolve_dtype(str(big))[0] == "float32"
    half = tmp_path / "bf16"
    half.mkdir()
    json.dump({**config, **shape, "dtype": "bfloat16", "torch_dtype": "bfloat16"}, open(half / "config.json", "w"))
    assert machine.checkpoint_dtype(str(half)) == "bfloat16"
    assert machine.resolve_dtype(str(half))[0] == "float32"
    # an explicit dtype is kept; a bad one is an error naming the flag
    assert machine.resolve_dtype(tiny_model, "bfloat16") == ("bfloat16", "given")
    with pytest.raises(ValueError, match="--dtype"):
        machine.resolve_dtype(tiny_model, "fp8")
    # AVX512-BF16 or AMX-BF16 (x86), BF16 (ARM): bf16, except for the hf engine on an overhead-bound model
    for flag in ("avx512_bf16", "amx_bf16", "bf16"):
        _capabilities(monkeypatch, **{flag: True})
        assert machine.cpu_computes_bf16() and machine.resolve_dtype(str(big))[0] == "bfloat16"
        assert machine.resolve_dtype(str(big), engine="hf")[0] == "bfloat16"
        assert machine.resolve_dtype(tiny_model)[0] == "bfloat16"                     # vllm
        assert machine.resolve_dtype(tiny_model, engine="hf")[0] == ("bfloat16" if flag == "amx_bf16" else "float32")
    assert machine.resolve_dtype(str(big)) == ("bfloat16", "CPU with native bf16 (x86_64 avx2 bf16), checkpoint float32")
    assert machine.resolve_dtype(tiny_model, engine="hf")[1].startswith("CPU, hf engine, a model under 2M parameters")
    # GPU: a half checkpoint keeps its dtype, fp32 goes to bf16, or fp16 where the GPU has no bf16 (any size)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert machine.resolve_dtype(tiny_model, on_gpu=True)[0] == "float16"
    assert machine.resolve_dtype(str(half), on_gpu=True)[0] == "bfloat16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert machine.resolve_dtype(tiny_model, on_gpu=True)[0] == "bfloat16"
    # the engines follow the rule and say what they resolved
    _capabilities(monkeypatch, avx512_bf16=True)
    engine = prover.make_engine(tiny_model, engine="hf", max_model_len=256, enforce_eager=True)
    assert engine.dtype == "float32" and next(engine.model.parameters()).dtype == torch.float32
    assert "engine hf: dtype float32 (CPU, hf engine, a model under 2M parameters" in capsys.readouterr().out


def test_race_noise_is_the_hash_written_out_and_samples_p():
    """race_noise against the same hash in plain Python integers, and the race it drives samples from p."""
    def mix(x):
        for _ in range(2):
            x = ((x ^ (x >> 16)) * 0x45D9F3B) & 0xFFFFFFFF
        return x ^ (x >> 16)
    keys = [0, 7, 2**32 - 1]
    noise = prover.race_noise(torch.tensor(keys), 5, 3)
    for r, key in enumerate(keys):
        start = mix((key + 5 * 0x2545F49) & 0xFFFFFFFF)
        for v in range(3):
            u = ((mix((start + v * 0x27D4EB3) & 0xFFFFFFFF) >> 8) + 0.5) / 2**24
            assert noise[r, v].item() == pytest.approx(-__import__("math").log(u), rel=1e-6)
    # a row's keys are a hash of (seed, j): distinct rows, and the same seed gives the same keys
    assert len(set(prover.row_keys([3, 4], 50))) == 100 and prover.row_keys([4], 2) == prover.row_keys([3, 4], 2)[2:]
    # the race argmax(p / E) picks token v with probability p_v: 40,000 rows, one step
    p = torch.tensor([0.5, 0.3, 0.15, 0.05])
    keys = torch.tensor(prover.row_keys([1], 40_000))
    counts = torch.bincount((p / prover.race_noise(keys, 0, 4)).argmax(-1), minlength=4).double() / 40_000
    assert torch.allclose(counts, p.double(), atol=0.01)
    # and the steps of one row are independent draws too
    steps = torch.stack([(p / prover.race_noise(keys[:1], t, 4)).argmax(-1) for t in range(20_000)])
    assert torch.allclose(torch.bincount(steps.flatten(), minlength=4).double() / 20_000, p.double(), atol=0.015)


def test_compiled_hf_engine_decodes_as_the_eager_one(tiny_model, tokenizer, hf_engine, restore_engine_weights):
    """The compiled decode step (a model under machine.OVERHEAD_BOUND_PARAMS on CPU) against the eager one
    (the session's hf_engine, enforce_eager): the same greedy tokens and the same seeded samples, for
    prompts of different lengths, budgets that end rows at different steps (the batch drops finished
    rows), a stop string, and after a weight sync."""
    compiled = prover.HFEngine(tiny_model, dtype="float32", max_model_len=256)
    assert compiled.compiled and not hf_engine.compiled
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS[:3]]

    def ids(out):
        return [[s.token_ids for s in row] for row in out]
    for kwargs in (dict(n=1, temperature=0.0, max_tokens=16), dict(n=4, temperature=1.0, max_tokens=[12, 3, 20], seed=5),
                   dict(n=2, temperature=0.7, top_p=0.9, max_tokens=10, seed=1, stop=["a"])):
        assert ids(compiled.generate(prompts, **kwargs)) == ids(hf_engine.generate(prompts, **kwargs))
    greedy = dict(n=1, temperature=0.0, max_tokens=16)
    before = ids(compiled.generate(prompts, **greedy))
    perturbed = {k: v.detach() * 1.5 for k, v in hf_engine.model.named_parameters()}
    for engine in (compiled, hf_engine):
        engine.update_weights(perturbed.items())
    after = ids(compiled.generate(prompts, **greedy))
    assert after != before and after == ids(hf_engine.generate(prompts, **greedy))
    compiled.close()


def test_vllm_cpu_kv_cache_is_sized_to_the_run(tiny_model, vllm_engine):
    """512 sequences of max_model_len tokens, keys and values of every layer, capped: by hand for the
    tiny model (2 layers, 1 KV head of 64 dims): 2 * 2 * 1 * 64 * 4 bytes = 1 KiB per fp32 token."""
    assert prover.cpu_kv_cache_bytes(tiny_model, "float32", 1024) == 1024 * 1024 * 512          # 512 MiB
    assert prover.cpu_kv_cache_bytes(tiny_model, "bfloat16", 256) == 512 * 256 * 512            # 64 MiB
    assert prover.cpu_kv_cache_bytes(tiny_model, "float32", 4096) == 2**30                      # the 1 GiB cap
    assert prover.cpu_kv_cache_bytes(tiny_model, "float32", 4096, cap_gib=4) == 2**31
    # the session's engine (fp32, max_model_len 1024) runs with that cache
    assert vllm_engine.llm.llm_engine.vllm_config.cache_config.kv_cache_memory_bytes == 1024 * 1024 * 512


def test_bench_decode_prints_a_row_per_variant():
    here = os.path.dirname(os.path.abspath(__file__))
    out = run_cli(["bench.py", "decode", "--sizes", "0.6M", "--variants", "hf-eager", "--dtypes", "float32,bfloat16",
                   "--repeats", "1", "--max-tokens", "4", "--prompts", "2", "--n", "2"], here).stdout
    rows = [line for line in out.splitlines() if line.startswith("0.6M")]
    assert len(rows) == 2 and "float32" in rows[0] and "bfloat16" in rows[1] and all(" tok/s), start " in r for r in rows)


def test_vllm_engine_runs_the_dtype_it_reports(vllm_engine):
    assert str(vllm_engine.llm.llm_engine.vllm_config.model_config.dtype) == f"torch.{vllm_engine.dtype}"


def test_vllm_and_hf_engines_agree_greedy_and_after_weight_sync(tokenizer, vllm_engine, hf_engine, restore_engine_weights):
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS]
    prompts.append(tokenizer.decode(prompts[0]))  # a string prompt: tokenized without a second BOS

    def greedy(engine):
        return [s[0].token_ids for s in engine.generate(prompts, n=1, temperature=0.0, max_tokens=16)]

    before_vllm, before_hf = greedy(vllm_engine), greedy(hf_engine)
    assert before_vllm == before_hf
    assert before_vllm[3] == before_vllm[0]
    for samples in vllm_engine.generate(prompts[:1], n=2, temperature=0.0, max_tokens=16):
        assert all(s.finish_reason in ("stop", "length") and s.num_tokens == len(s.token_ids) for s in samples)

    original = {k: v.detach().clone() for k, v in hf_engine.model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    # the random model's greedy output is one token repeated; a large perturbation changes that
    perturbed = {k: v + 0.2 * torch.randn(v.shape, generator=g) for k, v in original.items()}
    vllm_engine.update_weights((k, v) for k, v in perturbed.items())  # a generator: streamed
    hf_engine.update_weights((k, v) for k, v in perturbed.items())
    after_vllm, after_hf = greedy(vllm_engine), greedy(hf_engine)
    assert after_vllm == after_hf
    assert after_vllm != before_vllm
    vllm_engine.update_weights(original.items())
    hf_engine.update_weights(original.items())
    assert greedy(vllm_engine) == before_vllm


def test_compiled_vllm_engine_decodes_like_transformers_after_weight_sync(tiny_model):
    """The default vLLM engine is compiled (torch.compile on CPU): in-place weight reloads must reach
    the compiled model, so its greedy decoding follows the new weights as the HF engine's does. In
    its own process: vLLM's parallel state is global, and closing a second engine here would tear
    down the session's shared one."""
    here = os.path.dirname(os.path.abspath(__file__))
    script = os.path.join(here, "check_compiled_engine.py")
    proc = run_cli([str(script), here, tiny_model, json.dumps(PROBLEMS)], cwd=here)
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result["eager"] is False
    assert result["before"] == result["hf_before"]
    assert result["after"] == result["hf_after"] and result["after"] != result["before"]


def test_update_weights_rejects_unknown_names(hf_engine):
    with pytest.raises(KeyError, match="not_a_weight"):
        hf_engine.update_weights([("not_a_weight", torch.zeros(1))])


def test_sampling_is_reproducible_per_seed(tokenizer, vllm_engine, hf_engine):
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS[:2]]
    for engine in (vllm_engine, hf_engine):
        a = engine.generate(prompts, n=3, temperature=1.0, max_tokens=8, seed=11)
        b = engine.generate(prompts, n=3, temperature=1.0, max_tokens=8, seed=11)
        c = engine.generate(prompts, n=3, temperature=1.0, max_tokens=8, seed=12)
        ids = lambda out: [[s.token_ids for s in row] for row in out]  # noqa: E731
        assert ids(a) == ids(b) and ids(a) != ids(c)
        assert len({tuple(s.token_ids) for row in a for s in row}) == 6  # six distinct random streams


@pytest.mark.parametrize("engine_name, step", [("vllm_engine", 3), ("hf_engine", 1)])
def test_list_seed_gives_each_prompt_its_own_seed(request, tokenizer, engine_name, step):
    """seed=[s0, s1]: prompt i is sampled exactly as alone with seed s_i; an int seed is the list of
    the old per-prompt seeds (vLLM: seed + i * n, HF: seed + i); a list of the wrong length is an error."""
    engine = request.getfixturevalue(engine_name)
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS[:2]]
    kw = dict(n=3, temperature=1.0, max_tokens=8)

    def ids(out):
        return [[s.token_ids for s in row] for row in out]

    together = ids(engine.generate(prompts, seed=[5, 100], **kw))
    alone = ids(engine.generate(prompts[:1], seed=5, **kw)) + ids(engine.generate(prompts[1:], seed=100, **kw))
    assert together == alone
    assert ids(engine.generate(prompts, seed=[100, 5], **kw)) != together   # the list is used, in order
    assert ids(engine.generate(prompts, seed=11, **kw)) == ids(engine.generate(prompts, seed=[11, 11 + step], **kw))
    # equal seeds for equal prompts: equal samples (what MetaProver's common_random_numbers relies on)
    same = ids(engine.generate([prompts[0], prompts[0]], seed=[9, 9], **kw))
    assert same[0] == same[1]
    with pytest.raises(ValueError, match="1 seeds for 2 prompts"):
        engine.generate(prompts, seed=[5], **kw)


def test_hf_engine_batch_composition_does_not_change_samples(tokenizer, hf_engine):
    """One batched decode loop for all prompts: prompt 0's samples are the same alone, beside other
    prompts (of other lengths, so it is left padded), or split across batches by the token bound."""
    prompts = [prover.build_prompt(tokenizer, p) for p in PROBLEMS[:3]]
    assert len({len(p) for p in prompts}) > 1

    def ids(out):
        return [[s.token_ids for s in row] for row in out]

    together = hf_engine.generate(prompts, n=3, temperature=1.0, max_tokens=[12, 5, 9], seed=7)
    alone = hf_engine.generate(prompts[:1], n=3, temperature=1.0, max_tokens=12, seed=7)
    assert ids(alone)[0] == ids(together)[0]
    assert [max(len(s.token_ids) for s in row) for row in together] == [12, 5, 9]  # the random model never stops
    bound, hf_engine.max_batch_tokens = hf_engine.max_batch_tokens, 1   # one prompt per batch
    try:
        split = hf_engine.generate(prompts, n=3, temperature=1.0, max_tokens=[12, 5, 9], seed=7)
    finally:
        hf_engine.max_batch_tokens = bound
    assert ids(split) == ids(together)
    # nucleus sampling with a tiny top-p keeps only the most likely token: greedy decoding
    greedy = hf_engine.generate(prompts, n=1, temperature=0.0, max_tokens=6)
    nucleus = hf_engine.generate(prompts, n=2, temperature=1.0, top_p=1e-6, max_tokens=6, seed=3)
    assert all(s.token_ids == g[0].token_ids for g, row in zip(greedy, nucleus) for s in row)


def test_prompt_too_long_is_a_clear_error(vllm_engine):
    with pytest.raises(ValueError, match="max_model_len=1024"):
        vllm_engine.generate([[5] * 1024], n=1, max_tokens=4)


def scripted_mu(tokenizer):
    """Forced answers that are known: for a prompt whose thought prefix holds j episodes (counted by
    'Wait'), the first min(j, m) of m samples answer 7, the rest answer 3, except that sample m-1 of
    the empty prefix writes no answer at all."""
    def respond(text, n, stop):
        assert text.count(prover.BOS) == 1 and text.endswith(prover.TIME_IS_UP)
        j = text.split("<think>\n", 1)[1].count("Wait")
        rows = ["The answer is \\boxed{7}." if i < j else "So \\boxed{3}." for i in range(n)]
        if j == 0:
            rows[-1] = "I am not sure."
        return rows
    return FakeEngine(tokenizer, respond)


def test_meta_prover_on_scripted_engine_exact_values(tokenizer):
    thought = _para("Let x = 7.", "So 7.", "Check.", "Wait, x = 3?", "No.", "Hmm.", "Wait, 7 again.", "Yes.", "Done.")
    eps = split_episodes(thought)
    assert len(eps) == 3
    engine = scripted_mu(tokenizer)
    mu = prover.MetaProver(engine, m=4)
    scores = mu.success_rates(PROBLEMS[0], "7", thought_prefixes(eps))
    assert engine.calls == [4]  # all k + 1 prefixes in one generate call
    # prefix j holds j-1 "Wait"s for j >= 1 (episode 0 has none): 0, 0, 1, 2 correct of 4
    assert scores.success_rates == [0.0, 0.0, 0.25, 0.5]
    assert scores.answers[0] == ["3", "3", "3", None] and scores.answers[3] == ["7", "7", "3", "3"]
    per_episode, cumulative = prover.progress(scores.success_rates)
    assert per_episode == [0.0, 0.25, 0.25] and cumulative == [0.0, 0.25, 0.5]


def test_progress_definition_6_1_by_hand():
    per_episode, cumulative = prover.progress([0.5, 0.25, 0.75, 0.75, 1.0])
    assert per_episode == [-0.25, 0.5, 0.0, 0.25]
    assert cumulative == [-0.25, 0.25, 0.25, 0.5]
    assert prover.progress([0.5]) == ([], [])


def test_meta_prover_score_batches_whole_traces(tokenizer):
    engine = scripted_mu(tokenizer)
    mu = prover.MetaProver(engine, m=2, batch_prompts=5)
    traces = [(PROBLEMS[i % 3], "7", thought_prefixes(["a\n\n", "Wait, b\n\n"][: 1 + i % 2])) for i in range(5)]
    results = mu.score(traces)
    assert [len(r.success_rates) for r in results] == [2, 3, 2, 3, 2]
    assert engine.calls == [5, 5, 2]  # 2+3 | 2+3 | 2: traces are never split across calls


def test_meta_prover_common_random_numbers_seeds_one_per_trace(tokenizer):
    """common_random_numbers: every prefix of trace t gets seed + t * m, t counted over the whole score
    call (across generate calls); off, the engine gets the one int seed as before."""
    seeds = []
    engine = scripted_mu(tokenizer)
    generate = engine.generate
    engine.generate = lambda prompts, **kw: seeds.append(kw["seed"]) or generate(prompts, **kw)
    traces = [(PROBLEMS[i % 3], "7", thought_prefixes(["a\n\n", "Wait, b\n\n"][: 1 + i % 2])) for i in range(5)]
    crn = prover.MetaProver(engine, m=2, batch_prompts=5, seed=10, common_random_numbers=True).score(traces)
    assert engine.calls == [5, 5, 2]
    assert seeds == [[10, 10, 12, 12, 12], [14, 14, 16, 16, 16], [18, 18]]
    seeds.clear()
    old = prover.MetaProver(engine, m=2, batch_prompts=5, seed=10).score(traces)
    assert seeds == [10, 10, 10]
    assert [r.success_rates for r in crn] == [r.success_rates for r in old]   # the scripted engine ignores seeds
    with pytest.raises(ValueError, match="needs an int seed"):
        prover.MetaProver(engine, seed=None, common_random_numbers=True)
    seeds.clear()   # the caller's seeds, one per trace (mrt_rl.py: the seed of the prompt's terminations)
    prover.MetaProver(engine, m=2, batch_prompts=5, seed=10).score(traces, seeds=[3, 3, 9, 9, 40])
    assert seeds == [[3, 3, 3, 3, 3], [9, 9, 9, 9, 9], [40, 40]]
    with pytest.raises(ValueError, match="2 seeds for 5 traces"):
        prover.MetaProver(engine, m=2).score(traces, seeds=[1, 2])


@pytest.mark.parametrize("engine_name", ["vllm_engine", "hf_engine"])
def test_meta_prover_common_random_numbers_equal_prefixes_equal_answers(request, engine_name):
    """Two equal thought prefixes give the same prompt: with common random numbers mu's m samples at
    both are the same; without, they were drawn with other seeds (seed + i * m) and differ."""
    engine = request.getfixturevalue(engine_name)
    prefixes = ["", "Let x = 3.\n\n", "Let x = 3.\n\n", "Let x = 3.\n\nSo 2x = 6.\n\n"]
    trace = (PROBLEMS[1], "3", prefixes)

    def run(crn):
        mu = prover.MetaProver(engine, m=4, temperature=1.0, max_tokens=8, seed=0, common_random_numbers=crn)
        return mu.score([trace, trace])

    crn, old = run(True), run(False)
    for scores in crn:
        assert scores.texts[1] == scores.texts[2] and scores.answers[1] == scores.answers[2]
        assert scores.num_tokens[1] == scores.num_tokens[2]
    assert crn[0].texts != crn[1].texts             # equal traces, but trace 1 has its own seed
    for scores in old:
        assert scores.texts[1] != scores.texts[2]   # 4 samples of 8 tokens at temperature 1: never all equal


def test_prefix_token_ids_reuse_the_response_tokens(tokenizer):
    response = "Okay, 12 + 30 = 42.\n\nWait, check: 42.\n\nYes.</think>\\boxed{42}"
    ids = tokenizer.encode(response, add_special_tokens=False)
    thought, _, _ = split_think(response)
    for prefix in thought_prefixes(split_episodes(thought, min_steps=1)):
        pid = prover.prefix_token_ids(tokenizer, ids, prefix)
        assert tokenizer.decode(pid) == prefix and pid == ids[:len(pid)]
    assert prover.prefix_token_ids(tokenizer, ids, "not a prefix") == tokenizer.encode("not a prefix", add_special_tokens=False)


def test_end_to_end_trace_segmented_and_scored_by_vllm(tokenizer, vllm_engine):
    prompt = prover.build_prompt(tokenizer, PROBLEMS[1])
    (sample,) = vllm_engine.generate([prompt], n=1, temperature=1.0, max_tokens=64, seed=3)[0]
    # the random model does not write episodes; give its trace some by appending R1-style steps
    text = sample.text.split("</think>")[0] + "\n\n" + _para("So x = 3.", "Check 2x.", "Wait, 2*3 = 6.", "Yes.") + "\n\n"
    thought, _, closed = split_think(text)
    eps = split_episodes(thought, min_steps=1)
    k = len(eps)
    assert k >= 2 and not closed
    mu = prover.MetaProver(vllm_engine, m=3, max_tokens=8, seed=0)
    scores = mu.success_rates(PROBLEMS[1], "3", thought_prefixes(eps), response_ids=None)
    assert len(scores.success_rates) == k + 1 and len(scores.answers) == k + 1
    assert all(len(a) == 3 and len(r) == 3 for a, r in zip(scores.answers, scores.rewards))
    assert all(0.0 <= j <= 1.0 for j in scores.success_rates)
    assert all(n <= 8 for row in scores.num_tokens for n in row)
    per_episode, cumulative = prover.progress(scores.success_rates)
    assert len(per_episode) == k and cumulative[-1] == pytest.approx(scores.success_rates[-1] - scores.success_rates[0])


# ==============================================================================================
# --thinking: models with and without a thought block
# ==============================================================================================

def test_thinking_auto_detects_the_template(tokenizer, chatml_model):
    from transformers import AutoTokenizer
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    assert prover.template_thinks(tokenizer) is True      # R1 template: the generation prompt opens <think>
    assert prover.template_thinks(chatml) is False        # ChatML, no <think> in the vocabulary
    assert [prover.resolve_thinking(f, chatml) for f in ("auto", "on", "off")] == [False, True, False]
    assert [prover.resolve_thinking(f, tokenizer) for f in ("auto", "on", "off")] == [True, True, False]
    with pytest.raises(ValueError, match="--thinking"):
        prover.resolve_thinking("maybe", tokenizer)


def test_build_prompt_without_thought_block(tokenizer, chatml_model):
    from transformers import AutoTokenizer
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    ids = prover.build_prompt(chatml, PROBLEMS[0], "Step 1.\n\n", thinking=False)
    assert chatml.decode(ids) == (f"<|im_start|>user\n{PROBLEMS[0]} {prover.PROMPT_SUFFIX}<|im_end|>\n"
                                  "<|im_start|>assistant\nStep 1.\n\n")
    # an R1 template asked not to think: the <think> its generation prompt opens is taken off
    r1 = tokenizer.decode(prover.build_prompt(tokenizer, PROBLEMS[0], thinking=False))
    assert r1.endswith(prover.ASSISTANT) and "<think>" not in r1


def test_reward_and_episodes_without_thought_block():
    response = _para("Let x be the sum.", "1+1 = 2.", "So x = 2.", "Wait, check: 2-1 = 1.", "Yes.", "Done.") \
        + "\n\nThe answer is \\boxed{2}."
    assert grader.reward(response, "2", thinking=False) == 1.0
    assert grader.reward(response, "2", thinking=True) == 0.0   # read as an unclosed thought: no answer
    stream, closed = episodes.reasoning_stream(response, thinking=False, finished=True)
    assert stream == response and closed
    assert episodes.reasoning_stream(response, thinking=False, finished=False) == (response, False)
    assert episodes.reasoning_stream(response, thinking=True) == (response, False)
    assert len(split_episodes(stream)) == 2 and split_episodes(stream)[1].startswith("Wait, check")


def test_meta_prover_without_thought_block(chatml_model):
    from transformers import AutoTokenizer
    chatml = AutoTokenizer.from_pretrained(chatml_model)
    response = _para("Try 3.", "No.", "Hmm.", "Wait, try 7.", "Check.", "Yes.", "Wait, 7 again.", "Sure.", "Done.")
    stream, _ = episodes.reasoning_stream(response, thinking=False)
    # a model with no thought block: a forced answer is right (7) once per "Wait" in the prefix, else 3
    engine = FakeEngine(chatml, lambda text, n, stop: ["\\boxed{7}" if i < text.count("Wait") else "\\boxed{3}"
                                                       for i in range(n)])
    scores = prover.MetaProver(engine, m=4, thinking=False).success_rates(PROBLEMS[0], "7", thought_prefixes(split_episodes(stream)))
    assert scores.success_rates == [0.0, 0.0, 0.25, 0.5]
    assert all(t.endswith(prover.TIME_IS_UP_NO_THOUGHT) and "think>" not in t for t in engine.prompts)
    assert engine.prompts[1] == chatml.decode(prover.build_prompt(chatml, PROBLEMS[0], thinking=False)) \
        + split_episodes(stream)[0] + prover.TIME_IS_UP_NO_THOUGHT


# ==============================================================================================
# prover.py: problem files (load_problems)
# ==============================================================================================

@pytest.mark.parametrize("content, message", [
    ('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"\n', ":2: not valid JSON"),
    ('{"problem": "1+1", "answer": "2"}\n{"problem": "2+2"}\n', ":2: missing or empty string field 'answer'"),
    ('{"problem": "1+1", "answer": "2"}\n\n[1, 2]\n', ":3: expected a JSON object"),
    ('{"answer": "2"}\n', ":1: missing or empty string field 'problem'"),
    ("", "no problems"),
])
def test_malformed_jsonl_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=__import__("re").escape(message)) as info:
        prover.load_problems(str(path))
    assert str(path) in str(info.value)
    with pytest.raises(FileNotFoundError, match="aime99"):
        prover.load_problems("aime99")


def test_every_benchmark_loads():
    assert [len(prover.load_problems(b)) for b in evaluate.BENCHMARKS] == [30, 30, 40, 500, 272]


def test_year_filter_selects_the_papers_aime_years():
    every = prover.load_problems("aime_1983_2023")
    kept = prover.load_problems("aime_1983_2023", years=(1989, 2023))
    # 1983-1988: six years of 15 problems left out; "aime2004-II-7" is read as 2004
    assert len(every) == 975 and len(kept) == 975 - 6 * 15
    assert [q["id"] for q in kept] == [q["id"] for q in every if int(q["id"][4:8]) >= 1989]
    with pytest.raises(ValueError, match="math500.jsonl:1: a year filter needs a year"):
        prover.load_problems("math500", years=(1989, 2023))


# ==============================================================================================
# Model ids: a Hugging Face id resolves to its snapshot in the local cache
# ==============================================================================================

def test_model_ids_resolve_from_the_local_hf_cache(tiny_model, hf_cache):
    """In a process whose huggingface_hub reads the test cache offline: an id resolves to its snapshot
    folder, a folder stays itself, and an id the cache lacks, a path that is not there and a malformed
    id are ValueErrors that say which and why."""
    import subprocess
    import sys
    from conftest import TINY_MODEL_ID
    code = f"""
import json, machine
out = {{"id": machine.resolve_model({TINY_MODEL_ID!r}), "folder": machine.resolve_model({tiny_model!r})}}
for name in ("mrt-test/not-cached", "./no/such/folder", "a/b/c", "bad--id/x"):
    try:
        machine.resolve_model(name)
        out[name] = None
    except ValueError as e:
        out[name] = str(e)
print(json.dumps(out))
"""
    here = os.path.dirname(os.path.abspath(__file__))
    proc = subprocess.run([sys.executable, "-c", code], cwd=here, capture_output=True, text=True,
                          env={**os.environ, **hf_cache})
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["id"] == os.path.join(hf_cache["HF_HUB_CACHE"], "models--mrt-test--tiny-qwen2", "snapshots",
                                     "0123456789abcdef0123456789abcdef01234567")
    assert out["folder"] == tiny_model
    assert "mrt-test/not-cached is not in the local Hugging Face cache" in out["mrt-test/not-cached"]
    assert "HF_HUB_OFFLINE=1 forbids downloading it" in out["mrt-test/not-cached"]
    for name in ("./no/such/folder", "a/b/c", "bad--id/x"):
        assert out[name].startswith(f"no such folder: {name} (nor is it a Hugging Face model id"), out[name]


def test_memory_defaults_on_cuda_and_on_cpu(tiny_model, capsys):
    """The memory defaults a machine gets: vLLM's fraction by role (a trainer's engine asleep 0.7 or
    awake 0.3, an engine alone 0.8, two in one process half each, CPU 0.1), auto flags on exactly with
    CUDA, and on this CPU machine a trainer's --vllm-sleep auto resolves off while an explicit on is refused."""
    import argparse

    import flags
    import grpo
    import policy
    assert machine.default_memory_fraction(False, trainer=True, sleep_mode=True) == 0.1
    assert machine.default_memory_fraction(True, trainer=True, sleep_mode=True) == 0.7
    assert machine.default_memory_fraction(True, trainer=True) == 0.3
    assert machine.default_memory_fraction(True) == 0.8
    assert machine.engine_memory_fraction(None, 2, on_gpu=True) == 0.4
    assert machine.engine_memory_fraction(0.6, 2, on_gpu=True) == 0.3
    assert machine.engine_memory_fraction(None, 2, on_gpu=False) == 0.1
    assert [policy.gpu_choice(v, on_gpu=g) for v in ("auto", "on", "off") for g in (True, False)] == \
        [True, False, True, True, False, False]
    assert not torch.cuda.is_available()
    cfg = grpo.config(model=tiny_model, engine="hf", out="x", max_prompt_length=256, max_completion_length=64)
    assert cfg.gradient_checkpointing is False and cfg.vllm_sleep is False
    p = argparse.ArgumentParser()
    grpo.add_grpo_args(p)
    with pytest.raises(SystemExit):
        flags.check_memory(p, p.parse_args(["--model", tiny_model, "--vllm-sleep", "on"]), 1024)
    assert "--vllm-sleep on: vLLM's sleep mode needs CUDA and --engine vllm" in capsys.readouterr().err
