"""One SFT step (star.sft_step) on the FSDP2 policy, for comparing 1 and 2 ranks.

Not a test: run by test_star.py::test_sft_step_fsdp2_two_ranks_equal_one_process, once under
`torchrun --standalone --nproc_per_node 1` and once with 2, as

    torchrun ... check_fsdp_star.py REPO_DIR OUT_PT MODEL_DIR

REPO_DIR is the folder holding policy.py and star.py (put first on sys.path), OUT_PT the file rank 0
writes and MODEL_DIR the tiny model. Every rank draws the same seeded global batch of 7 weighted
(prompt, completion) examples and trains on every world-th one of them with plain SGD (lr 0.1, so the
weights move by exactly -0.1 * grad); rank 0 saves torch.save({"grads", "weights", "loss"}) with the
full (gathered) gradients and weights after the step.
"""

import sys
import types

import torch

sys.path.insert(0, sys.argv[1])   # the repository: the modules below
import policy
import star

out, model_path = sys.argv[2], sys.argv[3]
rank, world = policy.setup_distributed()
model = policy.load_policy(model_path)
opt = torch.optim.SGD(model.parameters(), lr=0.1)   # weights move by exactly -0.1 * grad: comparable
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
g = torch.Generator().manual_seed(3)            # the same global batch on every rank
batch = [(torch.randint(5, 2000, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist(),
          torch.randint(5, 2000, (int(torch.randint(1, 13, (1,), generator=g)),), generator=g).tolist(),
          float(torch.rand(1, generator=g)) * 2) for _ in range(7)]
cfg = types.SimpleNamespace(micro_batch_tokens=40, max_grad_norm=1e9)
stats = star.sft_step(model, opt, sched, batch[rank::world], cfg, pad_id=2)
grads = {n: getattr(p.grad, "full_tensor", lambda: p.grad)() for n, p in model.named_parameters()}  # world 1: a plain module
weights = dict(policy.full_weights(model))
if rank == 0:
    torch.save({"grads": grads, "weights": weights, "loss": stats["loss"]}, out)
policy.teardown()
policy.exit_process()
