"""The default (compiled) vLLM engine follows an in-place weight sync, as the HF engine does.

Not a test: run by test_prover.py::test_compiled_vllm_engine_decodes_like_transformers_after_weight_sync,
in a process of its own (vLLM's parallel state is global, and closing a second engine inside the test
process would tear down the session's shared one), as

    python check_compiled_engine.py REPO_DIR MODEL_DIR PROBLEMS_JSON

REPO_DIR is the folder holding prover.py (put first on sys.path), MODEL_DIR the tiny model, and
PROBLEMS_JSON a JSON list of problem texts. It builds prover.VLLMEngine with its default compilation and
a prover.HFEngine on the same weights, decodes every problem greedily (12 tokens), loads the same
perturbed weights into both and decodes again, then prints one line: "RESULT " and a JSON object with
"eager" (vLLM's enforce_eager, false here), "before" / "hf_before" and "after" / "hf_after" (the token
ids of each engine's greedy continuations before and after the update).
"""

import json
import sys

import torch

sys.path.insert(0, sys.argv[1])   # the repository: the modules below
import prover
from transformers import AutoTokenizer

model_path, problems = sys.argv[2], json.loads(sys.argv[3])
tokenizer = AutoTokenizer.from_pretrained(model_path)
engine = prover.VLLMEngine(model_path, dtype="float32", max_model_len=1024, seed=0)   # compiled: the default
hf = prover.HFEngine(model_path, dtype="float32", max_model_len=1024, enforce_eager=True)
prompts = [prover.build_prompt(tokenizer, p) for p in problems]
greedy = lambda e: [s[0].token_ids for s in e.generate(prompts, n=1, temperature=0.0, max_tokens=12)]  # noqa: E731
result = {"eager": engine.llm.llm_engine.vllm_config.model_config.enforce_eager, "before": greedy(engine),
          "hf_before": greedy(hf)}
g = torch.Generator().manual_seed(1)
perturbed = {k: v.detach() + 0.2 * torch.randn(v.shape, generator=g) for k, v in hf.model.named_parameters()}
engine.update_weights(perturbed.items())
hf.update_weights(perturbed.items())
result.update(after=greedy(engine), hf_after=greedy(hf))
engine.close()
print("RESULT " + json.dumps(result))
