"""One GRPO training step (grpo.train_step) on the FSDP2 policy, for comparing 1 and 2 ranks.

Not a test: run by test_grpo.py::test_fsdp2_two_ranks_equal_one_process, once under
`torchrun --standalone --nproc_per_node 1` and once with 2, as

    torchrun ... check_fsdp_grpo.py REPO_DIR OUT_PT MODEL_DIR LOSS_AGG LAYOUT

REPO_DIR is the folder holding grpo.py and policy.py (put first on sys.path), OUT_PT the file rank 0
writes, MODEL_DIR the tiny model, LOSS_AGG grpo's --loss-agg ("token-mean" or "seq-mean") and LAYOUT
"pack" (sequences packed into rows, --pack-sequences) or "pad" (one padded row per sequence). Every
rank draws the same seeded global batch of 8 sequences and trains on its share of it; rank 0 saves
torch.save({"grads", "weights", "loss"}) with the full (gathered) gradients and weights after the step.
"""

import sys
import types

import torch

sys.path.insert(0, sys.argv[1])   # the repository: the modules below
import grpo
import policy

out, model_path, loss_agg, pack = sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "pack"
rank, world = policy.setup_distributed()
model = policy.load_policy(model_path)
opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
g = torch.Generator().manual_seed(1)            # the same global batch on every rank
prompts = [torch.randint(5, 2000, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist() for _ in range(8)]
comps = [torch.randint(5, 2000, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist() for _ in range(8)]
adv = torch.randn(8, generator=g)
share = slice(rank * 8 // world, (rank + 1) * 8 // world)
rollout = grpo.Rollout(prompts[share], comps[share], adv[share])
cfg = types.SimpleNamespace(micro_batch_tokens=40, ppo_epochs=1, beta=0.0, epsilon=0.2, epsilon_high=0.2,
                            loss_agg=loss_agg, max_grad_norm=1e9, pack_sequences=pack)
stats = grpo.train_step(model, opt, sched, rollout, cfg, pad_id=2)
grads = {n: getattr(p.grad, "full_tensor", lambda: p.grad)() for n, p in model.named_parameters()}  # world 1: a plain module
weights = dict(policy.full_weights(model))
if rank == 0:
    torch.save({"grads": grads, "weights": weights, "loss": stats["loss"]}, out)
policy.teardown()
policy.exit_process()
