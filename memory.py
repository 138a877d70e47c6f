"""memory.py: what one GPU holds during a colocated run (the preflight), by arithmetic on the model's config.

    python bench.py memory --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --nproc 8 [grpo.py / mrt.py flags]

Every training CLI runs the same check at start on CUDA (flags.check_memory) and refuses, naming the
flag to change, when a phase cannot fit. The phases of a step on one rank (grpo.train, star.sft):

    generate  the engine awake: vLLM's share (--gpu-memory-utilization x device) beside the policy's
              resident states
    train     the engine asleep (--vllm-sleep; awake: its share stays), the policy's states, the
              gathered layers, one micro-batch's activations and the output head's chunks
    wake      after the step, the engine takes its share back beside the resident states

The terms, per rank, P parameters over W ranks, T tokens in a micro-batch (the longest sequence
if longer than --micro-batch-tokens: it goes alone), H hidden, V vocabulary, L layers, b bytes of the
compute dtype (2 on GPU, bf16; 4 on CPU):

    sharded states     fp32 params 4P/W + grads 4P/W + AdamW m, v 8P/W (grads are freed after each step)
    reference model    bf16 2P/W when beta > 0 (fp32 4P on CPU), and its root (embeddings, head) gathered
                       for its no-grad forward and never resharded after it (FSDP2 leaves the root unsharded
                       after forward, torch/distributed/fsdp/_fully_shard/_fsdp_state.py:203-207): b x root
    gathered weights   bf16 root (embeddings, head, final norm) held through the step, 2 layers in flight, and
                       in backward each unsharded layer's bf16 gradient and its fp32 copy for reduce-scatter,
                       and at the end the root's (b + 4) x root: the largest reduce-scatter of the step
    attention mask     a padded micro-batch of B rows of T tokens gets SDPA's boolean mask [B, 1, T, T]
                       (transformers/masking_utils.py:376, sdpa_mask):
                       B T^2 bytes, at most T_mb^2 / 2 for T_mb tokens (two rows of half; one row needs none)
    activations        per token and layer, the tensors a decoder layer keeps for backward:
                       A = b (7H + 3 kv + 4I) (the norms' inputs and outputs, q, k, v, rotated q and k, the
                       attention output; gate, up, SiLU(gate), their product), + 8H on GPU for the RMSNorms'
                       fp32 copies. Without checkpointing T L A; with it T L H b (each layer's input) and, in
                       backward, one layer recomputed and its gradients: 2 T A
    output head        policy.HeadLogProb: a chunk of c = min(2048, T) rows of fp32 logits and one fp32
                       temporary (+ the bf16 logits on GPU), and the head's fp32 gradient accumulator 4VH
    vLLM               asleep (level 2): nothing but its CUDA graphs and context (RUNTIME_BYTES covers them);
                       awake: --gpu-memory-utilization x device memory (weights + KV cache + its activations)
    runtime            CUDA context, NCCL buffers, cuBLAS workspaces: 2 GiB, assumed, not measured here;
                       with several GPUs NCCL's NVLS buffers (NVSwitch systems such as 8 x H100) take about
                       2 GiB more, assumed (NCCL_NVLS_ENABLE=0 turns them off)
    device             what CUDA reports (torch.cuda.get_device_properties(...).total_memory), not the name:
                       an "80 GB" H100 has 79.2 GiB (H100_GIB)

On CPU the formula for the activations and head was checked against the measured peak of a training
step (test_policy.py::test_memory_preflight_matches_the_measured_cpu_peak); the GPU terms (sharding,
bf16, the runtime) are arithmetic until a GPU run measures them (bench.py gpu prints both).

Imports: nothing of the project (transformers' config only).
"""

from dataclasses import dataclass

GiB = 2 ** 30
RUNTIME_BYTES = 2 * GiB     # CUDA context + NCCL + cuBLAS workspaces per GPU process (an assumption)
NVLS_BYTES = 2 * GiB        # NCCL's NVLS buffers per GPU with several GPUs on NVSwitch (an assumption)
H100_GIB = 79.19            # total_memory of an "80 GB" H100 (85,031,714,816 bytes)
FRAGMENTATION = 1.10        # the caching allocator's slack on what is allocated and freed every step
HEAD_CHUNK = 2048           # policy.token_logprobs's default


@dataclass
class Shape:
    """The sizes of a decoder-only transformer that the memory arithmetic needs."""
    hidden: int
    layers: int
    kv_dim: int             # key/value heads x head dim
    intermediate: int
    vocab: int
    tied: bool
    params: int             # all parameters
    layer_params: int       # one decoder layer's
    root_params: int        # embeddings, head (if untied), final norm: what FSDP's root gathers


def model_shape(config):
    """Shape of a transformers config (Qwen2, Llama, Mistral, Qwen3 and alike: attention with q, k, v,
    o projections, a gated MLP, RMSNorms; q/k/v biases as Qwen2 has them)."""
    h, layers, inter, vocab = config.hidden_size, config.num_hidden_layers, config.intermediate_size, config.vocab_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    q, kv_dim = heads * head_dim, kv * head_dim
    bias = getattr(config, "model_type", "") == "qwen2" or getattr(config, "attention_bias", False)
    attention = h * q + 2 * h * kv_dim + q * h + ((q + 2 * kv_dim) if bias else 0)
    layer = attention + 3 * h * inter + 2 * h
    tied = bool(getattr(config, "tie_word_embeddings", False))
    root = vocab * h * (1 if tied else 2) + h
    return Shape(h, layers, kv_dim, inter, vocab, tied, layers * layer + root, layer, root)


def layer_activation_bytes(shape, dtype_bytes):
    """A: the bytes one token keeps for backward in one decoder layer (see the module docstring)."""
    norm_upcasts = 8 * shape.hidden if dtype_bytes == 2 else 0
    return dtype_bytes * (7 * shape.hidden + 3 * shape.kv_dim + 4 * shape.intermediate) + norm_upcasts


def step_activation_bytes(shape, tokens, gradient_checkpointing, dtype_bytes, chunk=HEAD_CHUNK):
    """The peak a micro-batch of `tokens` adds during forward and backward: activations plus the output
    head's chunks and gradient accumulator (policy.HeadLogProb), the larger of the forward's end and
    the backward of one recomputed layer."""
    a = layer_activation_bytes(shape, dtype_bytes)
    c = min(chunk, tokens)
    head_forward = c * shape.vocab * (8 + (dtype_bytes if dtype_bytes == 2 else 0))
    head_gradient = 4 * shape.vocab * shape.hidden
    final_hidden = tokens * shape.hidden * dtype_bytes
    if gradient_checkpointing:
        kept = tokens * shape.layers * shape.hidden * dtype_bytes
        forward = kept + final_hidden + head_forward
        backward = kept + 2 * tokens * a
    else:
        kept = tokens * shape.layers * a
        forward = kept + final_hidden + head_forward
        backward = forward
    return max(forward, backward) + head_gradient


def reference_bytes(shape, world, bf16):
    """The frozen reference model of the KL term: bf16, sharded, on GPU; fp32 on CPU (sharded over
    several ranks)."""
    return 2 * shape.params / world if bf16 else 4 * shape.params / world


def training_terms(shape, world, tokens, gradient_checkpointing, bf16, beta):
    """{term: bytes} of one rank while the policy trains (the engine not included)."""
    b = 2 if bf16 else 4
    p = shape.params
    sharded = bf16 or world > 1
    terms = {"sharded states: fp32 params, grads, AdamW m and v": 16 * p / (world if sharded else 1)}
    if beta > 0:
        terms["reference model (beta > 0)"] = reference_bytes(shape, world, bf16)
    if sharded:
        root, layer = shape.root_params, shape.layer_params
        if beta > 0:
            terms["reference model's root, unsharded after its forward"] = b * root
        terms["gathered weights: root, 2 layers in flight, a layer's gradient"] = b * root + 2 * b * layer + (b + 4) * layer
        terms["root's gradient at its reduce-scatter (bf16 + fp32)"] = (b + 4) * root
    terms["activations and output head, one micro-batch"] = step_activation_bytes(shape, tokens, gradient_checkpointing, b)
    terms["attention mask of a padded micro-batch [B, 1, T, T]"] = tokens * tokens // 2
    return terms


def runtime_bytes(world, on_gpu=True):
    """CUDA context, NCCL, cuBLAS per GPU process, and NCCL's NVLS buffers when several GPUs talk."""
    return RUNTIME_BYTES + (NVLS_BYTES if on_gpu and world > 1 else 0)


def resident_bytes(shape, world, bf16, beta):
    """What stays on the GPU between steps: fp32 params and AdamW m, v (the grads are freed), the reference."""
    sharded = bf16 or world > 1
    resident = 12 * shape.params / (world if sharded else 1)
    if beta > 0:
        resident += reference_bytes(shape, world, bf16)
    return resident


@dataclass
class Plan:
    """The preflight's verdict: every phase's bytes against the device, and what to change."""
    rows: list              # (phase, term, bytes)
    device_bytes: int
    problems: list          # one sentence per phase that does not fit, naming the flag to change

    def table(self):
        lines = [f"{'phase':<9} {'term':<66} {'GiB':>7}"]
        lines += [f"{phase:<9} {term:<66} {value / GiB:7.2f}" for phase, term, value in self.rows]
        lines.append(f"{'device':<9} {'memory of one GPU':<66} {self.device_bytes / GiB:7.2f}")
        return "\n".join(lines)


def plan(shape, world, tokens, gradient_checkpointing, bf16, beta, fraction, sleep, device_bytes):
    """The preflight: each phase of a step on one rank (module docstring) against device_bytes."""
    vllm = fraction * device_bytes
    resident = resident_bytes(shape, world, bf16, beta)
    terms = training_terms(shape, world, tokens, gradient_checkpointing, bf16, beta)
    dynamic = terms["activations and output head, one micro-batch"]
    runtime = runtime_bytes(world, bf16)
    train = sum(terms.values()) + (FRAGMENTATION - 1) * dynamic + runtime + (0 if sleep else vllm)
    wake = resident + runtime + vllm
    rows = [("train", term, value) for term, value in terms.items()]
    rows += [("train", f"allocator slack, {FRAGMENTATION - 1:.0%} of the activations", (FRAGMENTATION - 1) * dynamic),
             ("train", "CUDA context, NCCL, cuBLAS" + (", NVLS" if runtime > RUNTIME_BYTES else "") + " (assumed)", runtime),
             ("train", "vLLM " + ("asleep (level 2): in the runtime term" if sleep else f"awake at {fraction:g}"),
              0 if sleep else vllm),
             ("train", "total while training", train),
             ("wake", f"resident states + runtime + vLLM at {fraction:g}", wake)]
    problems = []
    if train > device_bytes:
        fix = []
        if not gradient_checkpointing:
            fix.append("--gradient-checkpointing on")
        fit = largest_fitting_tokens(shape, world, gradient_checkpointing, bf16, beta,
                                     device_bytes - (train - sum(terms.values()) - (FRAGMENTATION - 1) * dynamic))
        if fit:
            fix.append(f"--micro-batch-tokens {fit} (and sequences no longer than that)")
        if not sleep:
            fix.append("--vllm-sleep on, or a smaller --gpu-memory-utilization")
        problems.append(f"training needs {train / GiB:.1f} GiB of this GPU's {device_bytes / GiB:.1f}: "
                        f"{'; '.join(fix) or 'more GPUs (the sharded states shrink with the world size)'}")
    if wake > device_bytes:
        room = (device_bytes - resident - runtime) / device_bytes
        problems.append(f"the engine at --gpu-memory-utilization {fraction:g} does not fit beside the policy's "
                        f"resident {resident / GiB:.1f} GiB: use at most {max(room, 0):.2f}")
    return Plan(rows, device_bytes, problems)


def largest_fitting_tokens(shape, world, gradient_checkpointing, bf16, beta, room):
    """The largest micro-batch (a multiple of 1024 tokens) whose training terms fit `room` bytes, or 0."""
    def need(tokens):
        terms = training_terms(shape, world, tokens, gradient_checkpointing, bf16, beta)
        dynamic = terms["activations and output head, one micro-batch"]
        return sum(terms.values()) + (FRAGMENTATION - 1) * dynamic
    lo, hi = 0, 1 << 20
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid * 1024) <= room:
            lo = mid
        else:
            hi = mid - 1
    return lo * 1024
