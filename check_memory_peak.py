"""Measured peak memory of one CPU training step, for the preflight's test (test_policy.py).

    python check_memory_peak.py HIDDEN INTERMEDIATE VOCAB LAYERS TOKENS CHECKPOINTING(0|1)

Builds a random Qwen2 of that shape (fp32), runs one AdamW step of policy.token_logprobs on one
sequence of TOKENS tokens (so AdamW's state exists), then a second step with the peak resident set
reset (/proc/self/clear_refs), and prints JSON: the resident bytes before the second step and its peak,
both above the process before the model was built. Run it with MALLOC_MMAP_THRESHOLD_=65536 and
MALLOC_TRIM_THRESHOLD_=0, so that glibc returns every large block as it is freed and the resident set
follows what torch holds.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import policy

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def resident(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field))


hidden, intermediate, vocab, layers, tokens, checkpointing = (int(a) for a in sys.argv[1:7])
torch.manual_seed(0)
config = Qwen2Config(hidden_size=hidden, intermediate_size=intermediate, vocab_size=vocab, num_hidden_layers=layers,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max(tokens, 128),
                     tie_word_embeddings=False)
ids = torch.randint(0, vocab, (1, tokens))
start = resident("VmRSS")
model = Qwen2ForCausalLM(config).float()
if checkpointing:
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.config.use_cache = False
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)


def step():
    policy.token_logprobs(model, ids, None).sum().backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


step()
before = resident("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                   # reset the peak resident set (VmHWM) to now
step()
print(json.dumps({"resident": before - start, "peak": resident("VmHWM") - start,
                  "params": sum(p.numel() for p in model.parameters())}))
