"""policy.py: the trainer plumbing that the GRPO loop (grpo.py) and the SFT loop (star.py) share.

    setup_distributed, teardown, device          one GPU per torchrun rank (cuda:LOCAL_RANK), the process group, a clean end
    exit_process                                 a torchrun script's last line: no interpreter finalization (gloo race)
    sample_seed                                  the seed of a named stream of samples (step, iteration; rank)
    pin_local_gpu                                a rank with no process group (evaluate.py) sees only its own GPU
    load_policy, full_weights, sync_weights      the policy pi_theta as an FSDP2 module; its weights into the engine
    micro_batches, rank_micro_batches            token-budgeted micro-batches (padded or packed rows), the same
                                                 count on every rank
    sequence_logprobs, token_logprobs            (prompt, completion) pairs -> ids and masks -> log pi(y_t | ...),
                                                 the output head applied chunk by chunk (HeadLogProb)
    make_optimizer                               AdamW with linear warmup then cosine decay (Tables 2, 3)
    save_checkpoint, load_checkpoint             atomic HF checkpoints + trainer state, exact resume
    log_metrics                                  one JSON line per step (rank 0)

Nothing here knows about rewards or losses: a trainer builds its batch, calls token_logprobs on
micro-batches, and steps the optimizer.
"""

import datetime
import json
import math
import os
import random
import shutil

import torch
import torch.distributed as dist


# ==============================================================================================
# One GPU per rank, and the process group
# ==============================================================================================
#
# One scheme for every trainer: all GPUs of the node stay visible and rank r computes on cuda:r, r =
# torchrun's LOCAL_RANK (torch.cuda.set_device, as TRL does). vLLM's external-launcher executor takes
# its device from the same variable (vllm/v1/executor/uniproc_executor.py:196, local_rank =
# int(os.environ["LOCAL_RANK"]); the GPU worker then checks it against torch.accelerator.device_count()
# and builds cuda:local_rank, vllm/v1/worker/gpu_worker.py:492-501), so the engine, the FSDP shards and
# the NCCL group of a rank all sit on one GPU. Narrowing CUDA_VISIBLE_DEVICES per rank instead would leave
# LOCAL_RANK at 1-7 with one visible device ("local rank 3 is out of bounds for 1 devices"), and would
# hide the peers from NCCL, which then cannot use CUDA IPC between them (NCCL's maintainers advise
# cudaSetDevice over CUDA_VISIBLE_DEVICES, NVIDIA/nccl#129).
#
# evaluate.py alone runs under torchrun without a process group (its ranks meet through files), and its
# engines then use vLLM's plain in-process executor, which always takes device index 0
# (uniproc_executor.py:86-88: the index of device_config.device, "cuda" with none). There, and only
# there, each rank is narrowed to its own GPU and LOCAL_RANK reset to 0 (pin_local_gpu): it runs no NCCL.

# A collective waits at most this long for the slowest rank (torch's NCCL default is 10 minutes,
# kProcessGroupNCCLDefaultTimeout in torch/include/torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp:157;
# its watchdog then tears the process down, TORCH_NCCL_ASYNC_ERROR_HANDLING, same file :64-69). A rank can spend far longer
# than that generating while the others wait at the next collective: a 24k-token rollout batch, or
# MRT-STaR's data phase (mu on every prefix, hours per iteration), so the default is 6 hours.
DIST_TIMEOUT_MINUTES = float(os.environ.get("MRT_DIST_TIMEOUT_MINUTES", 360))


def local_rank(environ=os.environ):
    """This rank's GPU on its node: torchrun's LOCAL_RANK (0 without torchrun)."""
    return int(environ.get("LOCAL_RANK", 0))


def device():
    """Where this rank computes: cuda:LOCAL_RANK on a GPU machine, else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


def pin_local_gpu(environ=os.environ):
    """For a torchrun rank that joins no process group (evaluate.py): make GPU LOCAL_RANK the only one
    it sees and set LOCAL_RANK to 0, the index vLLM's in-process executor uses. Call before anything
    initialises CUDA. Trainers never call it (see the note above)."""
    if "LOCAL_RANK" not in environ:
        return
    local = int(environ["LOCAL_RANK"])
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    gpus = [g for g in visible.split(",") if g.strip()] if visible else None
    if gpus is not None and len(gpus) == 1 and local == 0:
        return                                        # already pinned
    if gpus is not None and local >= len(gpus):
        raise SystemExit(f"LOCAL_RANK={local} but CUDA_VISIBLE_DEVICES={visible} lists {len(gpus)} GPUs: "
                         f"start at most {len(gpus)} processes per node (torchrun --nproc_per_node)")
    environ["CUDA_VISIBLE_DEVICES"] = gpus[local] if gpus else str(local)
    environ["LOCAL_RANK"] = "0"


def setup_distributed():
    """Join torchrun's process group (nccl on GPU, gloo on CPU), or make a group of one. On GPU this
    rank's device is set first, so NCCL and every "cuda" tensor land on cuda:LOCAL_RANK."""
    if not dist.is_initialized():
        import machine
        machine.check_gpu_install()
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(device())
        timeout = datetime.timedelta(minutes=DIST_TIMEOUT_MINUTES)
        if "RANK" in os.environ and "MASTER_ADDR" in os.environ:
            dist.init_process_group(backend, timeout=timeout)         # torchrun's rendezvous (env://)
        else:
            # plain python: a group of one on an in-process store, so no port is taken (two runs on
            # one machine can never race for the same one)
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def teardown(engine=None, clean=True):
    """End a run in the same order on every rank: a barrier (no rank closes its sockets while another
    is still inside a collective), then the engine (vLLM's own teardown destroys process groups, ours
    included, so it must run first), then the process group if it is still there. clean=False, on
    the way out of an error, skips the barrier: the other ranks may never reach it."""
    if clean and dist.is_initialized():
        dist.barrier()
    if engine is not None:
        engine.close()
    if dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code=0):
    """End a torchrun rank that has torn down (teardown) without the interpreter's finalization: flush,
    then os._exit(code). Call it last, from a script's `if __name__ == "__main__"` block only.

    Why: a gloo worker thread (ProcessGroupGloo::runLoop) frees a collective's work object only after it
    has marked it done, so the main thread can already be past the last barrier; freeing the work's
    tensors takes the GIL (c10::TensorImpl::decref_pyobject). FSDP2's mesh keeps the C++ group, and its
    workers, alive after destroy_process_group. If the main thread has begun finalizing by then, CPython
    ends the worker inside take_gil with pthread_exit, whose unwind through a noexcept destructor calls
    std::terminate: a SIGABRT ("terminate called without an active exception") after a run that
    succeeded. Seen here in ~1 of 12 two-rank runs with the CPU loaded; the core's stack: take_gil <-
    decref_pyobject <- ~AsyncAllgatherCoalescedWork <- ~AsyncBarrierWork <- runLoop, with the main thread
    in Py_FinalizeEx (torch's guard checks Py_IsInitialized, which is still true while finalizing:
    pytorch/pytorch#190489). Skipping finalization removes the window; every file is closed by then."""
    import logging
    import sys
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


# ==============================================================================================
# Sampling seeds: one named stream per kind of sample
# ==============================================================================================
#
# An engine seeds each request's sampler with the seed it is given, so two calls with one seed draw the
# same uniform numbers, token position by token position. Samples meant to be independent (rank 0's and
# rank 1's, step 3's and step 4's, a step's continuations and its forced terminations) must therefore get
# different seeds, or their randomness is shared: G terminations drawn with the continuations' numbers
# would lean the way the continuations leaned. And a resumed run must get the same seeds again. Every
# seed is base + stride x index + 10_007 x rank + offset, with (stride, offset) per stream (indices start
# at 1 where a program also draws partial rollouts). Enumerated: no two streams of one program share a
# seed for indices up to 3000 and 64 ranks.
SEED_STREAMS = {
    "rollouts": (1_000_003, 0),            # what a step trains on: GRPO / Alg. 2 line 8 (index step + 1),
                                           # Alg. 1 line 5 (index iteration), and Alg. 1's mu (see star.py)
    "terminations": (1_000_003, 500_009),  # Alg. 2 line 9, the G forced terminations (index step + 1)
    "mu": (1_000_003, 700_001),            # mu at every episode end, per-episode credit (index step + 1)
    "policy_answers": (1_000_003, 3),      # Alg. 1 line 9, answers after the chosen prefix (index iteration)
    "partial_rollouts": (7_919, 0),        # pi_ref's rollouts, Alg. 2 line 7 (index iteration + 1)
    "beam_problem": (104_729, 0),          # backtrack.py's beam search (App. A.2), per problem (index i)
    "beam_depth": (7_919, 0),              # ... and per depth within one problem's search (index depth)
}


def sample_seed(base, stream, index):
    """The seed of one stream of samples (SEED_STREAMS) at `index`, on this rank (rank 0 with no process
    group): base + stride * index + 10_007 * rank + offset."""
    stride, offset = SEED_STREAMS[stream]
    rank = dist.get_rank() if dist.is_initialized() else 0
    return base + stride * index + 10_007 * rank + offset


def all_sum(*values):
    """The sum over ranks of a few numbers (float64), as a list. A group of one skips the collective
    (a gloo all-reduce costs ~0.5 ms even alone, and a GRPO step makes four)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [float(v) for v in values]
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t)
    return t.tolist()


# ==============================================================================================
# The FSDP2 policy and its weights
# ==============================================================================================

def gpu_choice(value, on_gpu=None):
    """An auto / on / off flag (or a bool) as a bool: auto means on when this rank trains on a GPU."""
    if isinstance(value, bool):
        return value
    if value not in ("auto", "on", "off"):
        raise ValueError(f"expected auto, on or off, got {value!r}")
    return (torch.cuda.is_available() if on_gpu is None else on_gpu) if value == "auto" else value == "on"


def load_policy(path, gradient_checkpointing="auto", bf16=None, trainable=True):
    """The policy as an FSDP2 module: fully_shard on every decoder layer, then on the root (a single
    fp32 process keeps the plain module).

    On GPU the sharded parameters stay fp32 (the optimizer's master copy) and are gathered in bf16
    for compute, gradients reduced in fp32 (MixedPrecisionPolicy). On CPU everything is fp32.
    trainable=False gives the frozen reference model of the KL term (beta > 0): on GPU its weights are
    bf16 (no optimizer, so no fp32 master copy: half the memory), sharded the same way.

    gradient_checkpointing (auto: on on GPU, off on CPU) keeps only each decoder layer's input for
    backward and recomputes the rest: at 32k tokens Qwen2-1.5B's activations drop from ~95 GB to ~6 GB
    (memory.py), for one more forward pass (~1/3 more compute).

    The checkpoint is read into host memory and never sent to the GPU whole: fully_shard moves the
    states of the module it wraps to the mesh's device and keeps only this rank's shard
    (torch/distributed/fsdp/_fully_shard/_fsdp_init.py:369-401, _move_states_to_device, on the states of
    the modules _get_managed_modules returns, which stop at an already sharded child, :303-311; then
    FSDPParam's init chunks each parameter), so applying it layer by layer holds one full layer on the
    GPU at a time. A 7B fp32 model moved whole first would take 30 GB of the GPU before sharding.

    With several ranks only rank 0 reads the checkpoint: the others build the model on the meta device
    (no memory), shard it, allocate their shards (to_empty), and receive the weights from rank 0 one
    tensor at a time (set_model_state_dict with broadcast_from_rank0, state_dict.py:123-128) and the
    buffers (rotary inv_freq, not in the state dict) by broadcast. Eight ranks each holding the fp32
    model in host memory would take 8 x 30 GB for a 7B model.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM
    bf16 = torch.cuda.is_available() if bf16 is None else bf16
    dtype = torch.bfloat16 if bf16 and not trainable else torch.float32
    world = dist.get_world_size() if dist.is_initialized() else 1
    reader = world == 1 or dist.get_rank() == 0
    if reader:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        full = model.state_dict() if world > 1 else None   # host tensors, for the broadcast below
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path), dtype=dtype)
    if not trainable:
        model.requires_grad_(False)
        model.eval()
    else:
        # from_pretrained ends in model.eval() (transformers/modeling_utils.py:4340), and a decoder layer
        # checkpoints only `if self.gradient_checkpointing and self.training` (modeling_layers.py:82): the
        # reader rank would otherwise keep every layer's activations (from_config, ranks 1-7, is in train mode)
        model.train()
        if gpu_choice(gradient_checkpointing):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    if not bf16 and world == 1:
        # one fp32 process: nothing to shard and no mixed precision, and FSDP2 would still copy every
        # parameter into and out of its all-gather buffers, forward and backward (~6 % of a CPU step)
        return model.to(device())
    mp = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 and trainable
          else MixedPrecisionPolicy())
    for layer in model.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    if world > 1:
        if not reader:
            model.to_empty(device=device())
        set_model_state_dict(model, full if reader else {},
                             options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
    return model


def full_weights(model, dtype=None):
    """(name, full tensor) for every parameter, gathered one at a time (a collective: every rank must
    iterate), in `dtype` (None: the parameter's own). The cast happens on the local shard before the
    all-gather, so a bf16 engine receives half the bytes of the fp32 master weights, and nothing is
    recorded for autograd (DTensor.full_tensor is differentiable, torch/distributed/tensor/_api.py:771;
    .to(dtype) casts each shard locally, _ops/_tensor_ops.py:119-137). Never holds a second whole copy of
    the model."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            tensor = param.detach() if dtype is None else param.detach().to(dtype)
            yield name, tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def load_weights_into_engine(path, engine):
    """Put the weights of an HF model folder into a live engine (a run that starts from a checkpoint
    the engine does not hold: the toy world trains every method from one warm start on one engine)."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    engine.update_weights((name, p.detach()) for name, p in model.named_parameters())


def sync_weights(model, engine):
    """Stream the policy's new weights into this rank's engine (Engine.update_weights), gathered in
    the engine's compute dtype (bf16 on GPU: vLLM would cast fp32 weights down as it loads them)."""
    dtype = getattr(engine, "dtype", None)
    engine.update_weights(full_weights(model, getattr(torch, dtype) if isinstance(dtype, str) else dtype))


# ==============================================================================================
# Batches: token-budgeted micro-batches, padding, log-probs
# ==============================================================================================

def pack_rows(lengths, width):
    """Sequence indices packed into rows of at most `width` tokens, first-fit decreasing (a sequence
    longer than `width` gets a row of its own)."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fit = next((r for r, free in enumerate(room) if lengths[i] <= free), None)
        if fit is None:
            rows.append([i])
            room.append(width - lengths[i])
        else:
            rows[fit].append(i)
            room[fit] -= lengths[i]
    return rows


def micro_batches(lengths, max_tokens, pack=False):
    """Micro-batches of at most max_tokens padded tokens, each a list of rows, each row a list of
    sequence indices. Unpacked (pack=False), a row holds one sequence and sequences are sorted by
    length so that each micro-batch pads little; a sequence longer than the budget goes alone.
    Packed, sequences share rows (pack_rows) as wide as the budget allows for as many rows as fit
    the longest sequence: only row ends are padded, and a row spans less than twice the longest
    sequence (with sdpa, attention is computed over the whole row and masked; flash-attention
    kernels skip the masked part)."""
    if pack and lengths:
        per_batch = max(1, max_tokens // max(lengths))
        rows = pack_rows(lengths, max(max_tokens // per_batch, max(lengths)))
        return [rows[i:i + per_batch] for i in range(0, len(rows), per_batch)]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches, current, longest = [], [], 0
    for i in order:
        longest_if = max(longest, lengths[i])
        if current and longest_if * (len(current) + 1) > max_tokens:
            batches.append(current)
            current, longest_if = [], lengths[i]
        current.append([i])
        longest = longest_if
    if current:
        batches.append(current)
    return batches


def rank_micro_batches(lengths, max_tokens, pack=False):
    """This rank's micro_batches, padded with empty ones to the largest count of any rank: every
    FSDP forward and backward is a collective, so every rank must run the same number."""
    batches = micro_batches(lengths, max_tokens, pack) if lengths else []
    count = torch.tensor([len(batches)], device=device())
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return batches + [[]] * (int(count.item()) - len(batches))


def padded_fraction(lengths, batches):
    """The share of the tokens a list of micro-batches computes that are padding."""
    computed = sum(len(b) * max(sum(lengths[i] for i in row) for row in b) for b in batches if b)
    return 1 - sum(lengths) / computed if computed else 0.0


def pad_sequences(prompts, completions, pad_id):
    """Right-padded prompt + completion ids: input_ids, attention_mask [n, T] and the completion mask
    [n, T - 1] (the positions whose next token is a completion token). No sequences (an empty
    micro-batch) gives one dummy row of pad tokens with an all-False mask."""
    if not prompts:
        ids = torch.full((1, 2), pad_id, dtype=torch.long, device=device())
        return ids, torch.ones_like(ids), torch.zeros((1, 1), dtype=torch.bool, device=device())
    seqs = [p + c for p, c in zip(prompts, completions)]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(seqs), width), dtype=torch.long)
    comp = torch.zeros((len(seqs), width - 1), dtype=torch.bool)
    for row, (p, s) in enumerate(zip(prompts, seqs)):
        ids[row, :len(s)] = torch.tensor(s)
        attn[row, :len(s)] = 1
        comp[row, len(p) - 1:len(s) - 1] = True   # logits at t predict token t + 1
    return ids.to(device()), attn.to(device()), comp.to(device())


def sequence_logprobs(model, rows, prompts, completions, pad_id):
    """log pi(y_t | x, y_<t) of one micro-batch, whatever its layout, as [n, T - 1] log-probs and the
    completion mask of pad_sequences (n = the micro-batch's sequences in row order, T = the longest).

    rows: lists of indices into prompts / completions. Rows of one sequence are padded (attention
    mask); a row holding several sequences is packed: position ids restart at 0 for each sequence
    and transformers then keeps attention within each (its packed-sequence mask), with no padding
    but at row ends. The packed log-probs are gathered back into the padded layout, so a loss
    cannot tell the two apart.
    """
    order = [i for row in rows for i in row]
    ids, attn, comp = pad_sequences([prompts[i] for i in order], [completions[i] for i in order], pad_id)
    if all(len(row) == 1 for row in rows):
        return token_logprobs(model, ids, attn), comp
    lengths = [len(prompts[i]) + len(completions[i]) for i in order]
    sizes, k = [], 0
    for row in rows:
        sizes.append(sum(lengths[k:k + len(row)]))
        k += len(row)
    width = max(sizes)
    packed = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    where = torch.zeros((len(order), ids.shape[1]), dtype=torch.long)        # flat packed index of each token
    k = 0
    for r, row in enumerate(rows):
        offset = 0
        for _ in row:
            n = lengths[k]
            packed[r, offset:offset + n] = ids[k, :n].cpu()
            positions[r, offset:offset + n] = torch.arange(n)
            where[k, :n] = r * width + offset + torch.arange(n)
            offset, k = offset + n, k + 1
        positions[r, offset:] = torch.arange(width - offset)                 # the row's padding: its own span
    logp = token_logprobs(model, packed.to(device()), None, positions=positions.to(device()))   # [R, W - 1]
    logp = torch.cat([logp, torch.zeros_like(logp[:, :1])], dim=1).reshape(-1)
    return logp[where[:, :-1].to(device())] * attn[:, 1:], comp    # 0 where the padded layout has padding


class HeadLogProb(torch.autograd.Function):
    """log softmax(h W^T + b)[target] for rows h of the final hidden states [N, H], with the output head
    W [V, H] (bias b or None) applied `chunk` rows at a time, forward and backward: the [N, V] logits
    never exist whole. At N = 32768 tokens and Qwen2's V = 151936 they would be 10 GB in bf16, kept for
    backward, plus as much again for their gradient; here the peak is one chunk's [chunk, V] in bf16 and
    fp32, at the cost of computing each chunk's logits a second time in backward (one more head matmul,
    ~5 % of a 1.5B model's step).

    W = None: the rows are already logits (models whose head does more than a matmul, token_logprobs).
    Backward writes d out / d logits = (onehot - softmax) * g once per chunk (autograd's own gather +
    logsumexp would fill two [N, V] zero buffers and add them, ~15 % of a CPU training step), then
    d h = that @ W and d W += that^T @ h, accumulated in fp32 and rounded once (as one matmul would).
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk):
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for i in range(0, hidden.shape[0], chunk):
            rows = slice(i, i + chunk)
            logits = _chunk_logits(hidden, weight, bias, rows).float()           # [c, V]; a copy only for bf16
            lse[rows] = torch.logsumexp(logits, dim=1)
            out[rows] = logits.gather(1, targets[rows, None]).squeeze(1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        grad_hidden = torch.empty_like(hidden)
        grad_weight = None if weight is None else torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        for i in range(0, hidden.shape[0], ctx.chunk):
            rows, g = slice(i, i + ctx.chunk), grad[i:i + ctx.chunk, None].float()
            in_place = weight is None and hidden.dtype == torch.float32              # fp32 logits: write the gradient
            p = torch.sub(_chunk_logits(hidden, weight, bias, rows).float(), lse[rows, None],  # where it belongs
                          out=grad_hidden[rows] if in_place else None)
            p.exp_().mul_(-g).scatter_add_(1, targets[rows, None], g)           # (onehot - softmax) * g: [c, V]
            if weight is None:
                if not in_place:
                    grad_hidden[rows] = p
                continue
            p = p.to(hidden.dtype)
            grad_hidden[rows] = p @ weight                                      # [c, H]
            grad_weight.add_(p.t() @ hidden[rows])                              # [V, H]
            if grad_bias is not None:
                grad_bias.add_(p.sum(dim=0))
        return (grad_hidden, None if weight is None else grad_weight.to(weight.dtype),
                None if bias is None else grad_bias.to(bias.dtype), None, None)


def _chunk_logits(hidden, weight, bias, rows):
    return hidden[rows] if weight is None else torch.nn.functional.linear(hidden[rows], weight, bias)


# Model types whose CausalLM turns the last hidden state into logits with the output head and nothing
# else (transformers/models/qwen2/modeling_qwen2.py:454-457, and the same lines in llama, mistral, qwen3):
# the paper's models (R1-Distill-Qwen, Qwen2.5, Llama 3) and the toy's. Others post-process the logits
# (Gemma 2's soft-capping, Cohere's logit_scale, Granite's logits_scaling) and take the full-logits path.
PLAIN_HEAD_MODELS = ("qwen2", "qwen3", "llama", "mistral")


def token_logprobs(model, ids, attn, chunk=2048, positions=None):
    """log pi(token_{t+1} | tokens_{<=t}) for every position: [n, T - 1], fp32. The output head runs
    inside HeadLogProb, `chunk` rows at a time, so the [tokens, vocab] logits never exist whole: the
    model is asked for no logits at all (transformers' logits_to_keep, an empty index) and its final
    hidden states are read by a hook on the decoder. Packed rows pass position ids and no attention
    mask (sequence_logprobs)."""
    # every position is scored (the last one against a dummy target) and the last column dropped
    # afterwards: slicing first would copy the hidden states
    targets = torch.cat([ids[:, 1:], torch.zeros_like(ids[:, :1])], dim=1).reshape(-1)
    # no KV cache: transformers only reads packed rows from the position ids when there is none
    inputs = dict(input_ids=ids, attention_mask=attn, position_ids=positions, use_cache=False)
    if getattr(model.config, "model_type", None) in PLAIN_HEAD_MODELS:
        captured = []
        hook = model.get_decoder().register_forward_hook(lambda module, args, out: captured.append(out.last_hidden_state))
        try:
            model(**inputs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=ids.device))
        finally:
            hook.remove()
        hidden = captured[0]                                                    # [n, T, H]
        head = model.get_output_embeddings()
        logp = HeadLogProb.apply(hidden.reshape(-1, hidden.shape[-1]), head.weight, head.bias, targets, chunk)
    else:
        logits = model(**inputs).logits                                         # [n, T, V]
        logp = HeadLogProb.apply(logits.reshape(-1, logits.shape[-1]), None, None, targets, chunk)
    return logp.view(ids.shape)[:, :-1]


# ==============================================================================================
# Optimizer and schedule
# ==============================================================================================

def cosine_schedule(step, total_steps, warmup_ratio):
    """The lr multiplier of update `step` (0-based): linear warmup over ceil(warmup_ratio * total)
    updates starting at 0, then cosine decay to 0 (Tables 2, 3). As the HF trainer the paper used
    (get_cosine_schedule_with_warmup), so the first update of a warmed-up run has lr 0."""
    warmup = math.ceil(warmup_ratio * total_steps)
    if step < warmup:
        return step / warmup
    progress_ = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))


def make_optimizer(model, lr, weight_decay, total_steps, warmup_ratio):
    """AdamW (betas 0.9 / 0.999, eps 1e-8) and its warmup + cosine LambdaLR schedule.

    Biases and normalisation weights (the 1-D parameters) get no weight decay, as in the HF trainer
    (which, in transformers 4.49, still decays the final norm: a single vector, a negligible difference).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_schedule(s, total_steps, warmup_ratio))
    return optimizer, scheduler


# ==============================================================================================
# Checkpoints: HF weights + tokenizer, and the trainer state; written atomically
# ==============================================================================================

def save_checkpoint(out_dir, step, model, optimizer, scheduler, tokenizer, config, keep=2, dtype="float32"):
    """out_dir/checkpoints/step_N: an HF model folder (loads in transformers and vLLM) with weights in
    `dtype`, plus trainer_state.pt (optimizer, scheduler, RNG, step, config, and the fp32 master
    weights when `dtype` is not fp32: a resumed run continues from those, exactly). Written to a temp
    folder that is renamed into place, then `latest` is replaced: a killed run leaves the previous
    checkpoint whole. Keeps the newest `keep` checkpoints. A collective: every rank calls it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)   # gathered on rank 0's host memory
    weights = get_model_state_dict(model, options=options)           # collectives: every rank
    optim = get_optimizer_state_dict(model, optimizer, options=options)
    if dist.get_rank() == 0:
        root = os.path.join(out_dir, "checkpoints")
        final, tmp = os.path.join(root, f"step_{step}"), os.path.join(root, f".step_{step}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        low = dtype != "float32"
        saved = weights
        if low:   # cast once per storage: tied weights (embeddings = head) stay one tensor, saved once
            cast = {}
            for v in weights.values():
                if v.data_ptr() not in cast:
                    cast[v.data_ptr()] = v.to(getattr(torch, dtype))
            saved = {k: cast[v.data_ptr()] for k, v in weights.items()}
        model.save_pretrained(tmp, state_dict=saved)
        if low:   # save_pretrained writes the dtype of the module's (fp32) parameters into config.json
            with open(os.path.join(tmp, "config.json")) as f:
                hf_config = json.load(f)
            hf_config.update({key: dtype for key in ("dtype", "torch_dtype") if key in hf_config} or {"dtype": dtype})
            write_atomic(os.path.join(tmp, "config.json"), json.dumps(hf_config, indent=2))
        tokenizer.save_pretrained(tmp)
        torch.save({"step": step, "optimizer": optim, "scheduler": scheduler.state_dict(),
                    "rng": {"python": random.getstate(), "torch": torch.get_rng_state()}, "config": config,
                    **({"master_weights": weights} if low else {})}, os.path.join(tmp, "trainer_state.pt"))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        with open(os.path.join(root, "latest.tmp"), "w") as f:
            f.write(f"step_{step}")
        os.replace(os.path.join(root, "latest.tmp"), os.path.join(root, "latest"))
        steps = sorted(int(d[5:]) for d in os.listdir(root) if d.startswith("step_") and d[5:].isdigit())
        for old in steps[:-keep]:
            shutil.rmtree(os.path.join(root, f"step_{old}"), ignore_errors=True)
    dist.barrier()


def latest_checkpoint(out_dir):
    """The folder `latest` points to in out_dir/checkpoints, or None."""
    path = os.path.join(out_dir, "checkpoints", "latest")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return os.path.join(out_dir, "checkpoints", f.read().strip())


def load_checkpoint(path, model, optimizer, scheduler):
    """Restore the optimizer, schedule and RNG state saved with a checkpoint whose weights `model`
    was loaded from (load_policy(path)), and its fp32 master weights if the checkpoint saved its HF
    weights in a lower precision. Returns the step it was saved at.

    The file is memory-mapped on every rank (torch.load mmap=True: tensors are read on demand from
    the page cache the ranks share), and under FSDP only rank 0 reads the tensors: they are broadcast
    one at a time and each rank keeps its shard (StateDictOptions broadcast_from_rank0,
    torch/distributed/checkpoint/state_dict.py:123-128; _broadcast_state_dict, _state_dict_utils.py:640-697). Eight
    ranks each holding the full optimizer state would need 8 x 12 bytes per parameter of host memory
    (170 GB for a 1.5B model)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    state = torch.load(os.path.join(path, "trainer_state.pt"), weights_only=False, mmap=True)
    sharded = any(hasattr(p, "full_tensor") for p in model.parameters())
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=sharded)
    keep = dist.get_rank() == 0 or not sharded          # with broadcast, the others pass {}
    if "master_weights" in state:
        set_model_state_dict(model, state["master_weights"] if keep else {}, options=options)
    set_optimizer_state_dict(model, optimizer, optim_state_dict=state["optimizer"] if keep else {}, options=options)
    scheduler.load_state_dict(state["scheduler"])
    random.setstate(state["rng"]["python"])
    torch.set_rng_state(state["rng"]["torch"])
    return state["step"]


def write_atomic(path, text):
    """Write a text file so that a reader (or a resumed run) never sees half of it: temp file,
    fsync, rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def log_metrics(out_dir, row):
    """Append one JSON line to out_dir/metrics.jsonl (rank 0 only)."""
    if dist.is_initialized() and dist.get_rank() != 0:
        return
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
