"""What a pretraining run costs, worked out from first principles before it starts.

plan_run takes a model shape (dense, or a mixture of experts), a token count and the hardware, and works out:
parameters; training FLOPs (6·N·D plus attention, each term shown); GPU-hours, days and cost; memory per GPU under
DDP and FSDP, with and without activation checkpointing; the Chinchilla-optimal split of the same compute and the
loss the Hoffmann et al. (2022) fit predicts; the size of one checkpoint. The network's options count where they
belong: value embeddings as embedding tables (AdamW's state even under Muon), residual scalars as 2·L parameters,
neither in the matmul FLOPs; document masking's [micro-batch, 1, T, T] mask in the activations. A published run
(RUNS) is compared with its published GPU-hours, with the MFU those hours imply; a nextword run directory gives the
speed measured there. render writes the plan for a terminal; `nextword plan` (nextword.cli.plan) is its command
line.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nextword.config import FAMILIES, ModelConfig
from nextword.errors import ConfigError, DataError
from nextword.model.network import has_value_embedding
from nextword.training.runlog import read_log

# ---------------------------------------------------------------------------------------------------------------
# Hardware


@dataclass(frozen=True)
class Gpu:
    name: str
    peak_flops: float  # dense bf16 matrix FLOP/s, no structured sparsity
    memory_gib: float
    price_per_hour: float  # USD per GPU-hour: a rough on-demand rental figure, an assumption (override: --price)
    source: str


GPUS: dict[str, Gpu] = {
    "h100": Gpu("NVIDIA H100 SXM 80GB", 989.4e12, 80, 2.50,
                "NVIDIA H100 datasheet: BF16 Tensor Core 1,979 TFLOP/s with 2:4 sparsity, half that dense"),
    "h100-pcie": Gpu("NVIDIA H100 PCIe 80GB", 756e12, 80, 2.00,
                     "NVIDIA H100 datasheet: BF16 Tensor Core 1,513 TFLOP/s with sparsity, half that dense"),
    "h200": Gpu("NVIDIA H200 SXM 141GB", 989.4e12, 141, 3.50,
                "NVIDIA H200 datasheet: same GH100 tensor cores as H100 SXM (1,979 sparse), more HBM3e"),
    "b200": Gpu("NVIDIA B200 (HGX) 180GB", 2250e12, 180, 6.00,
                "NVIDIA HGX B200 spec: FP16/BF16 Tensor Core 4.5 PFLOP/s per GPU with sparsity, 2.25 dense"),
    "a100": Gpu("NVIDIA A100 SXM 80GB", 312e12, 80, 1.50,
                "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOP/s dense (624 with sparsity)"),
    "a100-40gb": Gpu("NVIDIA A100 40GB", 312e12, 40, 1.20,
                     "NVIDIA A100 datasheet: BF16 Tensor Core 312 TFLOP/s dense (624 with sparsity)"),
    "l4": Gpu("NVIDIA L4 24GB", 121e12, 24, 0.80,
              "NVIDIA L4 datasheet: BF16 Tensor Core 242 TFLOP/s with sparsity, half that dense"),
    "a10": Gpu("NVIDIA A10 24GB", 125e12, 24, 1.00,
               "NVIDIA A10 datasheet: BF16 Tensor Core 125 TFLOP/s dense (250 with sparsity); AWS's A10G is slower"),
    "rtx4090": Gpu("NVIDIA GeForce RTX 4090 24GB", 165.2e12, 24, 0.60,
                   "NVIDIA Ada whitepaper: BF16 with FP32 accumulate 165.2 TFLOP/s dense (330.3 with sparsity)"),
    "mi300x": Gpu("AMD Instinct MI300X 192GB", 1307.4e12, 192, 3.00,
                  "AMD MI300X datasheet: BF16 1,307.4 TFLOP/s dense (2,614.9 with sparsity)"),
}

DEFAULT_MFU = 0.40  # a well-run large job on H100s: Llama 3 405B reported 38–43% (Llama 3 paper, table 4)
USABLE_MEMORY = 0.90  # the rest goes to the CUDA context, allocator slack and communication buffers


def this_machine() -> Gpu:
    """This computer's CPU as the 'GPU': its fastest measured dense matmul rate and its RAM."""
    import os

    from nextword.training import machine

    found = machine.detect("cpu")
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return Gpu(f"this machine ({found.name}, {found.threads} threads)", machine.peak_flops(found), ram, 0.0,
               "measured: the fastest of fp32/native-bf16 1024³ matmuls on this CPU")


# ---------------------------------------------------------------------------------------------------------------
# Models: mixture of experts and published runs


@dataclass(frozen=True)
class Moe:
    """Every `every`-th block's MLP becomes `experts` MLPs of `width` each (0: d_ff); a router sends every token
    to `active` of them, and `shared` experts see every token. A llama config with model.n_experts set is one
    (moe_of); nextword trains those (model/moe.py)."""

    experts: int
    active: int
    shared: int = 0
    width: int = 0
    every: int = 1

    def sparse_layers(self, n_layers: int) -> int:
        return n_layers // self.every


def moe_of(cfg: ModelConfig) -> Moe | None:
    """The mixture of experts a model config describes, or None for a dense one."""
    if not cfg.n_experts:
        return None
    return Moe(experts=cfg.n_experts, active=cfg.experts_per_token, shared=cfg.shared_experts,
               width=cfg.expert_dim, every=cfg.moe_every)


@dataclass(frozen=True)
class PublishedRun:
    model: dict[str, Any]
    tokens: float
    gpu: str
    mfu: float  # the MFU this planner assumes for the run (stated, with its reason in `note`)
    source: str
    note: str
    gpus: int = 1
    gpu_hours: float | None = None  # as published
    moe: Moe | None = None


RUNS: dict[str, PublishedRun] = {
    "gpt2-124m-llmc": PublishedRun(
        model=dict(arch="gpt2", n_layers=12, d_model=768, n_heads=12, context=1024, vocab_size=50257,
                   tie_embeddings=True),
        tokens=10e9, gpu="a100", gpus=8, gpu_hours=8 * 1.5, mfu=0.50,
        source="Karpathy, llm.c discussion #481 (May 2024): GPT-2 124M on 10B FineWeb tokens, 8×A100 80GB SXM, "
               "about 90 minutes, about $20",
        note="the 1.5 h wall clock is approximate; 50% is a typical llm.c A100 figure",
    ),
    "chinchilla-70b": PublishedRun(
        # Chinchilla uses Transformer-XL relative positions: one more d×d projection per layer than GPT-2. Folding
        # it into the MLP width (d_ff = 4.5·d) keeps the parameter count at the paper's 70B.
        model=dict(arch="gpt2", n_layers=80, d_model=8192, n_heads=64, d_ff=36864, context=2048, vocab_size=32000,
                   tie_embeddings=False),
        tokens=1.4e12, gpu="h100", gpus=1024, mfu=DEFAULT_MFU,
        source="Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', table 4: 80 layers, "
               "d_model 8192, 64 heads, 1.4T tokens (trained on TPUv3/v4; no GPU-hours published)",
        note="shown on H100s at the default MFU, for scale",
    ),
    "llama3.1-8b": PublishedRun(
        model=dict(arch="llama", n_layers=32, d_model=4096, n_heads=32, n_kv_heads=8, d_ff=14336, context=8192,
                   vocab_size=128256, tie_embeddings=False, rope_theta=500000.0),
        tokens=15e12, gpu="h100", gpus=16384, gpu_hours=1.46e6, mfu=0.20,
        source="Meta Llama 3.1 model card: 15T+ tokens, 1.46M H100-80GB GPU-hours; shape from the Llama 3 paper",
        note="Meta publishes no MFU for 8B; 20% is an assumption: a small model spread over a large cluster spends "
             "much of each step communicating, and the card's hours include restarts and long-context training",
    ),
    "llama3.1-70b": PublishedRun(
        model=dict(arch="llama", n_layers=80, d_model=8192, n_heads=64, n_kv_heads=8, d_ff=28672, context=8192,
                   vocab_size=128256, tie_embeddings=False, rope_theta=500000.0),
        tokens=15e12, gpu="h100", gpus=16384, gpu_hours=7.0e6, mfu=0.30,
        source="Meta Llama 3.1 model card: 15T+ tokens, 7.0M H100-80GB GPU-hours; shape from the Llama 3 paper",
        note="Meta publishes no MFU for 70B; 30% is an assumption between the 8B's and the 405B's",
    ),
    "llama3.1-405b": PublishedRun(
        model=dict(arch="llama", n_layers=126, d_model=16384, n_heads=128, n_kv_heads=8, d_ff=53248, context=8192,
                   vocab_size=128256, tie_embeddings=False, rope_theta=500000.0),
        tokens=15.6e12, gpu="h100", gpus=16384, gpu_hours=30.84e6, mfu=0.40,
        source="Meta Llama 3.1 model card: 30.84M H100-80GB GPU-hours; Llama 3 paper: 15.6T tokens, "
               "3.8e25 FLOPs, 16,384 H100s at 38-43% BF16 MFU (table 4)",
        note="40%: the middle of the MFU the Llama 3 paper reports for this run",
    ),
    "llama4-scout": PublishedRun(
        model=dict(arch="llama", n_layers=48, d_model=5120, n_heads=40, n_kv_heads=8, d_ff=8192, context=8192,
                   vocab_size=202048, tie_embeddings=False, rope_theta=500000.0),
        moe=Moe(experts=16, active=1, shared=1),
        tokens=40e12, gpu="h100", gpus=16384, gpu_hours=5.0e6, mfu=DEFAULT_MFU,
        source="Meta Llama 4 model card: 17B active / 109B total, 16 experts, ~40T tokens, 5.0M H100-80GB "
               "GPU-hours (FP8 training); shape from the released config (every layer MoE, 1 routed + 1 shared)",
        note="trained in FP8, so the MFU implied against the BF16 peak can exceed what BF16 could reach",
    ),
}


# ---------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass
class Params:
    total: int  # every parameter, a tied embedding counted once
    embedding: int  # lookup tables: token, gpt2's positions, and value embeddings
    head: int  # an untied output head (0 when tied)
    non_embedding: int  # total − embedding − head, as GPT.num_params(non_embedding=True)
    active: int  # used for each token: total less the experts a token does not visit (= total when dense)
    matmul: int  # weights in a matrix multiply per token: block linears (active experts), router, V·d head
    muon_matrices: int = 0  # the blocks' 2-D weights (attention, dense MLPs, routers, shared experts): Muon's
    value_embeddings: int = 0  # value-embedding tables (part of `embedding`): ceil(L/2) of vocab × kv_heads·head_dim
    residual_scalars: int = 0  # resid_scales and x0_scales: 2·L (part of `non_embedding`)


def count_params(cfg: ModelConfig, moe: Moe | None = None) -> Params:
    """Parameter counts of nextword's GPT (see model/network.py for the layer list), from the shape alone; `moe`
    (default: the config's own, if sparse) makes every moe.every-th block a mixture of experts.

    Value embeddings are lookup tables: counted with the embeddings, never as matmul weights (a token's row is added
    to v, elementwise), and left out of Muon's matrices (AdamW trains them). Residual scalars are two numbers a
    block, multiplied elementwise: no matmul weights either."""
    moe = moe or moe_of(cfg)
    d, f, V = cfg.d_model, cfg.ffn_dim, cfg.vocab_size
    family = cfg.family
    q_out, kv_out = cfg.n_heads * cfg.head_dim, cfg.kv_heads * cfg.head_dim
    norm = 2 * d if family.norm == "layernorm" else d  # LayerNorm has a bias, RMSNorm does not

    attn_weights = d * q_out + 2 * d * kv_out + q_out * d
    attn_other = (q_out + 2 * kv_out + d if family.bias else 0) + (2 * cfg.head_dim if cfg.qk_norm else 0)
    matrices = 3 if cfg.mlp == "swiglu" else 2
    mlp_weights, mlp_biases = matrices * d * f, (f + d if family.bias else 0)

    # Sparse blocks: experts (routed and shared) of their own width, and a router.
    sparse, experts, active, router, expert_weights, expert_biases = 0, 0, 0, 0, 0, 0
    if moe:
        width = moe.width or f
        sparse, experts, active, router = moe.sparse_layers(cfg.n_layers), moe.experts + moe.shared, \
            moe.active + moe.shared, d * moe.experts
        expert_weights, expert_biases = matrices * d * width, (width + d if family.bias else 0)
    dense = cfg.n_layers - sparse
    blocks = (cfg.n_layers * (attn_weights + attn_other + 2 * norm) + dense * (mlp_weights + mlp_biases)
              + sparse * (experts * (expert_weights + expert_biases) + router))
    value_embeddings = sum(has_value_embedding(cfg, layer) for layer in range(cfg.n_layers)) * V * kv_out
    residual_scalars = 2 * cfg.n_layers if cfg.residual_scalars else 0
    embedding = V * d + (cfg.context * d if family.positions == "learned" else 0) + value_embeddings
    head = 0 if cfg.tie_embeddings else V * d
    total = blocks + norm + embedding + head + residual_scalars
    inactive = sparse * (experts - active) * (expert_weights + expert_biases)
    matmul = (cfg.n_layers * attn_weights + dense * mlp_weights + sparse * (active * expert_weights + router)
              + V * d)
    # Routed experts are 3-D tensors, which Muon leaves to AdamW; shared experts and routers are linear layers.
    muon_matrices = (cfg.n_layers * attn_weights + dense * mlp_weights
                     + sparse * ((moe.shared * expert_weights + router) if moe else 0))
    return Params(total=total, embedding=embedding, head=head, non_embedding=total - embedding - head,
                  active=total - inactive, matmul=matmul, muon_matrices=muon_matrices,
                  value_embeddings=value_embeddings, residual_scalars=residual_scalars)


def shape_for_params(target: float, arch: str, vocab_size: int, context: int) -> ModelConfig:
    """A conventional shape with about `target` parameters: head size 64 up to d_model 2048, then 128; depth
    d/64 up to 32 layers, held at 32 until d/L reaches 128 (Llama 3 8B's 4096/32), then d/128 (405B: 16384/126).
    A rule of thumb for planning, stated so the numbers can be checked."""
    best, best_error = None, math.inf
    for d_model in range(128, 65537, 64):
        head_dim = 64 if d_model <= 2048 else 128
        if d_model % head_dim:
            continue
        n_layers = d_model // 64 if d_model <= 2048 else max(32, d_model // 128)
        n_heads = d_model // head_dim
        kv = 8 if arch == "llama" and n_heads > 8 and n_heads % 8 == 0 else 0
        cfg = ModelConfig(arch=arch, n_layers=n_layers, d_model=d_model, n_heads=n_heads, n_kv_heads=kv,
                          context=context, vocab_size=vocab_size, tie_embeddings=d_model < 4096)
        error = abs(math.log(count_params(cfg).total / target))
        if error < best_error:
            best, best_error = cfg, error
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------------------------
# FLOPs and time


@dataclass
class Flops:
    dense_per_token: float  # 6·N_matmul: 2 FLOPs per weight forward, 4 backward
    attention_per_token: float  # 12·L·T·d: Q·Kᵀ and A·V over the full T×T scores, forward and backward
    per_token: float
    dense_total: float
    attention_total: float
    total: float
    six_n_d: float  # the familiar 6·N·D with N = active parameters, for comparison


def count_flops(cfg: ModelConfig, params: Params, tokens: float) -> Flops:
    """Matrix-multiply FLOPs, as GPT.flops_per_token counts them. The elementwise parts add none: a value
    embedding's row added to v, the residual scalars' multiplies, the embedding norm and the soft-cap's tanh are a
    few operations per activation, not per weight."""
    dense = 6.0 * params.matmul
    attention = 12.0 * cfg.n_layers * cfg.context * cfg.n_heads * cfg.head_dim
    return Flops(dense_per_token=dense, attention_per_token=attention, per_token=dense + attention,
                 dense_total=dense * tokens, attention_total=attention * tokens, total=(dense + attention) * tokens,
                 six_n_d=6.0 * params.active * tokens)


@dataclass
class Compute:
    gpu: str
    peak_flops: float
    gpus: int
    mfu: float
    price_per_hour: float
    gpu_hours: float
    days: float
    cost: float
    tokens_per_s: float  # the whole cluster


def compute_time(total_flops: float, per_token: float, gpu: Gpu, gpus: int, mfu: float, price: float) -> Compute:
    gpu_hours = total_flops / (gpu.peak_flops * mfu) / 3600
    return Compute(gpu=gpu.name, peak_flops=gpu.peak_flops, gpus=gpus, mfu=mfu, price_per_hour=price,
                   gpu_hours=gpu_hours, days=gpu_hours / gpus / 24, cost=gpu_hours * price,
                   tokens_per_s=gpus * gpu.peak_flops * mfu / per_token)


# ---------------------------------------------------------------------------------------------------------------
# Memory


@dataclass(frozen=True)
class Precision:
    weights: int  # bytes per parameter
    grads: int
    optimizer: int  # AdamW: the two moments, plus an fp32 master copy when the weights are 16-bit
    activations: int  # bytes per stored activation element
    meaning: str


PRECISIONS = {
    "bf16": Precision(2, 2, 12, 2, "bf16 weights and gradients; fp32 master weights and AdamW moments "
                                   "(mixed precision as in Megatron and ZeRO): 16 bytes per parameter"),
    "amp": Precision(4, 4, 8, 2, "fp32 weights, gradients and AdamW moments; bf16 activations under "
                                 "torch.autocast (nextword on a GPU): 16 bytes per parameter"),
    "fp32": Precision(4, 4, 8, 4, "everything in fp32 (nextword on a CPU without native bf16)"),
}


def layer_activation_bytes(cfg: ModelConfig, moe: Moe | None, micro_batch: int, act_bytes: int,
                           flash: bool) -> float:
    """Bytes one block keeps for its backward pass, for micro_batch sequences of cfg.context tokens.

    The per-layer accounting of Korthikanti et al. 2022 ('Reducing Activation Recomputation in Large Transformer
    Models', section 4.1), generalised to grouped-query attention, SwiGLU and any MLP width. With h = d_model,
    f = d_ff, a = heads, s = context, b = micro-batch, and 16-bit activations, it stores:
      norms 2·2sbh; attention: its input 2sbh, Q 2sbh, K and V 2·2sb·kv_dim, the output fed to W_o 2sbh;
      MLP: its input 2sbh plus GELU: 2sbf in, 2sbf out | SwiGLU: gate, silu(gate), up, product, 4·2sbf;
      llama's rotary positions: q and k before rotation and rotated halves, 2·2sb·(h + kv_dim);
      without flash attention, the softmax output 2as²b (+ as²b mask and 2as²b dropout output with dropout);
      with flash attention only the fp32 log-sum-exp, 4asb; with dropout, 1-byte masks on both residual branches.
    For GPT-2's shape with dropout this is the paper's sbh·(34 + 5·a·s/h) exactly."""
    h, f, a, s, b = cfg.d_model, cfg.ffn_dim, cfg.n_heads, cfg.context, micro_batch
    tokens = s * b
    dropout = cfg.dropout > 0
    moe = moe or moe_of(cfg)
    kv = cfg.kv_heads * cfg.head_dim

    # SwiGLU keeps gate(x), silu(gate(x)), up(x) and their product; RoPE keeps q and k before rotation and their
    # rotate_half copies. A sparse block keeps that for each expert a token visits; averaged over the blocks.
    def mlp(width: int) -> int:
        return h + 4 * width if cfg.mlp == "swiglu" else h + 2 * width

    mlp_elements = float(mlp(f))
    if moe:
        sparse = moe.sparse_layers(cfg.n_layers)
        routed = (moe.active + moe.shared) * mlp(moe.width or f)
        mlp_elements = ((cfg.n_layers - sparse) * mlp(f) + sparse * routed) / cfg.n_layers
    rope = 2 * (h + kv) if cfg.family.positions == "rotary" else 0
    elements = tokens * (2 * h + 3 * h + 2 * kv + rope + mlp_elements)
    if flash:
        scores = 4.0 * a * s * b
    else:
        scores = act_bytes * a * s * s * b * (2 if dropout else 1) + (a * s * s * b if dropout else 0)
    masks = 2 * tokens * h if dropout else 0
    return act_bytes * elements + scores + masks


def document_mask_bytes(cfg: ModelConfig, micro_batch: int) -> float:
    """With document masking, the boolean mask attention takes ([micro_batch, 1, T, T], a byte per element), made
    once per forward pass and shared by every block; nothing without it."""
    return float(micro_batch * cfg.context**2) if cfg.doc_masking else 0.0


def output_activation_bytes(cfg: ModelConfig, micro_batch: int, act_bytes: int) -> float:
    """Outside the blocks: the embedding output and final-norm input (h each), the logits (V), and the fp32
    log-probabilities the cross-entropy keeps (4 bytes × V)."""
    tokens = cfg.context * micro_batch
    return tokens * (act_bytes * (2 * cfg.d_model + cfg.vocab_size) + 4 * cfg.vocab_size)


@dataclass
class MemoryRow:
    strategy: str
    weights: float  # bytes per GPU
    grads: float
    optimizer: float
    activations: float
    buffers: float  # FSDP: the gathered weights and gradients of two layers (the current one and the prefetch)
    total: float
    fits: bool
    min_gpus: int | None  # the fewest GPUs of this memory size that fit; None: no number does (activations alone)


@dataclass
class Memory:
    precision: str
    precision_meaning: str
    optimizer: str
    micro_batch: int
    flash_attention: bool
    gpu_memory_gib: float
    usable_fraction: float
    rows: list[MemoryRow]
    checkpoint: float = 0.0  # bytes of one saved checkpoint: fp32 weights and the optimizer's fp32 state


MUON_SAVES = 4  # bytes per Muon matrix weight: one fp32 momentum where AdamW keeps two moments


def memory_plan(cfg: ModelConfig, params: Params, moe: Moe | None, precision: str, micro_batch: int,
                gpus: int, gpu_memory_gib: float, flash: bool, optimizer: str = "adamw") -> Memory:
    p = PRECISIONS[precision]
    muon_saves = MUON_SAVES * params.muon_matrices if optimizer == "muon" else 0
    states = {"weights": p.weights * params.total, "grads": p.grads * params.total,
              "optimizer": p.optimizer * params.total - muon_saves}
    per_layer = layer_activation_bytes(cfg, moe, micro_batch, p.activations, flash)
    output = output_activation_bytes(cfg, micro_batch, p.activations) + document_mask_bytes(cfg, micro_batch)
    full = cfg.n_layers * per_layer + output
    # Checkpointing keeps each block's input and recomputes one block at a time in the backward pass.
    checkpointed = cfg.n_layers * p.activations * cfg.context * micro_batch * cfg.d_model + per_layer + output
    # FSDP holds two blocks gathered; with value embeddings one of any two neighbours has a table (vocab × kv).
    layer_params = (params.total - params.embedding - params.head) / cfg.n_layers
    table = cfg.vocab_size * cfg.kv_heads * cfg.head_dim if cfg.value_embeddings else 0
    gathered = (2 * layer_params + table) * (p.weights + p.grads)
    usable = USABLE_MEMORY * gpu_memory_gib * 2**30

    rows = []
    for strategy, sharded, activations in (("DDP", False, full), ("DDP + checkpointing", False, checkpointed),
                                           ("FSDP / ZeRO-3", True, full),
                                           ("FSDP + checkpointing", True, checkpointed)):
        shards = gpus if sharded else 1
        buffers = gathered if sharded else 0.0
        parts = {k: v / shards for k, v in states.items()}
        total = sum(parts.values()) + activations + buffers
        room = usable - activations - buffers
        if not sharded:
            min_gpus = 1 if sum(states.values()) <= room else None
        else:
            min_gpus = max(1, math.ceil(sum(states.values()) / room)) if room > 0 else None
        rows.append(MemoryRow(strategy=strategy, activations=activations, buffers=buffers, total=total,
                              fits=total <= usable, min_gpus=min_gpus, **parts))
    # nextword saves the model's fp32 weights and the optimizer's state: AdamW's two moments, Muon's one momentum.
    checkpoint = 4 * params.total + 8 * params.total - muon_saves
    return Memory(precision=precision, precision_meaning=p.meaning, optimizer=optimizer, micro_batch=micro_batch,
                  flash_attention=flash, gpu_memory_gib=gpu_memory_gib, usable_fraction=USABLE_MEMORY, rows=rows,
                  checkpoint=checkpoint)


# ---------------------------------------------------------------------------------------------------------------
# Chinchilla

# Hoffmann et al. 2022, 'Training Compute-Optimal Large Language Models', eq. 10 (approach 3). Fitted on
# MassiveText with their tokenizer, so its losses compare with each other, not with nextword's on other data.
CHINCHILLA = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
TOKENS_PER_PARAM = 20  # the paper's compute-optimal ratio, roughly constant across budgets


def chinchilla_loss(n_params: float, tokens: float) -> float:
    c = CHINCHILLA
    return c["E"] + c["A"] / n_params ** c["alpha"] + c["B"] / tokens ** c["beta"]


@dataclass
class Chinchilla:
    compute: float  # C = 6·N·D with N = active parameters
    optimal_params: float  # N with D = 20·N and 6·N·D = C
    optimal_tokens: float
    tokens_per_param: float  # this plan's D / N
    loss: float  # the fit's prediction for this plan's N and D
    optimal_loss: float
    constants: dict[str, float]


def chinchilla_view(params: Params, tokens: float) -> Chinchilla:
    compute = 6.0 * params.active * tokens
    n_opt = math.sqrt(compute / (6 * TOKENS_PER_PARAM))
    return Chinchilla(compute=compute, optimal_params=n_opt, optimal_tokens=TOKENS_PER_PARAM * n_opt,
                      tokens_per_param=tokens / params.active, loss=chinchilla_loss(params.active, tokens),
                      optimal_loss=chinchilla_loss(n_opt, TOKENS_PER_PARAM * n_opt), constants=dict(CHINCHILLA))


# ---------------------------------------------------------------------------------------------------------------
# Published figures and measured runs


@dataclass
class Published:
    name: str
    source: str
    note: str
    stated_mfu: float
    gpu_hours: float | None
    estimate_gpu_hours: float  # at the stated MFU
    implied_mfu: float | None  # the MFU at which this planner's FLOPs take exactly the published GPU-hours
    ratio: float | None  # estimate / published


def compare_published(name: str, run: PublishedRun, total_flops: float, peak_flops: float) -> Published:
    estimate = total_flops / (peak_flops * run.mfu) / 3600
    implied = ratio = None
    if run.gpu_hours:
        implied = implied_mfu(total_flops, run.gpu_hours, peak_flops)
        ratio = estimate / run.gpu_hours
    return Published(name=name, source=run.source, note=run.note, stated_mfu=run.mfu, gpu_hours=run.gpu_hours,
                     estimate_gpu_hours=estimate, implied_mfu=implied, ratio=ratio)


def implied_mfu(total_flops: float, gpu_hours: float, peak_flops: float) -> float:
    return total_flops / (gpu_hours * 3600 * peak_flops)


@dataclass
class Measured:
    run_dir: str
    device: str
    tokens_per_s: float  # median over the logged steps after the first
    mfu: float
    peak_flops: float
    flops_per_s: float  # tokens_per_s × the run's FLOPs per token: what this machine sustained
    here_seconds: float  # the planned FLOPs at that rate, on this machine
    cluster: Compute  # the planned FLOPs on the chosen GPUs at the run's MFU


def read_run_log(run_dir: Path) -> tuple[dict, list[dict]]:
    """The run line and the train lines of a run's log.jsonl."""
    path = run_dir / "log.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file; --from-run takes a run directory that `nextword train` wrote")
    run, steps = None, []
    # A run still writing, or killed mid-line, leaves its last line cut short: read_log leaves it out.
    for record in read_log(path):
        if record.get("kind") == "run":
            run = record
        elif record.get("kind") == "train" and record.get("tokens_per_s"):
            steps.append(record)
    if run is None or not run.get("flops_per_token") or not run.get("peak_flops"):
        raise DataError(f"{path}: no 'run' line with flops_per_token and peak_flops; was it written by nextword train?")
    if not steps:
        raise DataError(f"{path}: no 'train' lines with tokens_per_s yet; let the run log a few steps first")
    return run, steps


def measure_from_run(run_dir: Path, total_flops: float, per_token: float, gpu: Gpu, gpus: int,
                     price: float) -> Measured:
    run, steps = read_run_log(run_dir)
    # The first logged interval includes compilation and warm-up, so it is left out when there are others.
    steady = steps[1:] or steps
    tokens_per_s = statistics.median(s["tokens_per_s"] for s in steady)
    flops_per_s = tokens_per_s * run["flops_per_token"]
    mfus = [s["mfu"] for s in steady if s.get("mfu")]
    mfu = statistics.median(mfus) if mfus else flops_per_s / run["peak_flops"]
    return Measured(run_dir=str(run_dir), device=str(run.get("device", "?")), tokens_per_s=tokens_per_s, mfu=mfu,
                    peak_flops=run["peak_flops"], flops_per_s=flops_per_s, here_seconds=total_flops / flops_per_s,
                    cluster=compute_time(total_flops, per_token, gpu, gpus, mfu, price))


# ---------------------------------------------------------------------------------------------------------------
# The plan


@dataclass
class Plan:
    model: dict[str, Any]
    moe: dict[str, int] | None
    tokens: float
    params: Params
    flops: Flops
    compute: Compute
    gpu_source: str
    memory: Memory
    chinchilla: Chinchilla
    published: Published | None = None
    measured: Measured | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def plan_run(cfg: ModelConfig, tokens: float, *, gpu: Gpu | str = "h100", gpus: int = 1, mfu: float = DEFAULT_MFU,
             price: float | None = None, moe: Moe | None = None, precision: str = "bf16", micro_batch: int = 1,
             flash: bool = True, run_name: str | None = None, from_run: str | Path | None = None,
             optimizer: str = "adamw") -> Plan:
    """Everything `nextword plan` prints, for a model shape with its vocabulary set."""
    gpu = gpu_spec(gpu)
    moe = moe or moe_of(cfg)
    check_model(cfg, moe)
    if tokens <= 0 or gpus < 1 or not 0 < mfu <= 1 or micro_batch < 1:
        raise ConfigError(f"tokens {tokens:g}, --gpus {gpus} and --micro-batch {micro_batch} must be above 0, "
                          f"and --mfu {mfu:g} a fraction in (0, 1]")
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r} is not one of: {', '.join(PRECISIONS)}")
    if optimizer not in ("adamw", "muon"):
        raise ConfigError(f"--optimizer {optimizer!r} is not one of: adamw, muon")
    if not (gpu.peak_flops > 0 and gpu.memory_gib > 0):
        raise ConfigError(f"--peak-flops {gpu.peak_flops:g} and --memory-gb {gpu.memory_gib:g} must be above 0")
    if price is not None and not price >= 0:
        raise ConfigError(f"--price {price:g} must be 0 or more (USD per GPU-hour)")
    price = gpu.price_per_hour if price is None else price
    params = count_params(cfg, moe)
    flops = count_flops(cfg, params, tokens)
    plan = Plan(model=dataclasses.asdict(cfg), moe=dataclasses.asdict(moe) if moe else None, tokens=tokens,
                params=params, flops=flops, gpu_source=gpu.source,
                compute=compute_time(flops.total, flops.per_token, gpu, gpus, mfu, price),
                memory=memory_plan(cfg, params, moe, precision, micro_batch, gpus, gpu.memory_gib, flash,
                                   optimizer),
                chinchilla=chinchilla_view(params, tokens))
    if run_name:
        plan.published = compare_published(run_name, RUNS[run_name], flops.total, gpu.peak_flops)
    if from_run:
        plan.measured = measure_from_run(Path(from_run), flops.total, flops.per_token, gpu, gpus, price)
    if moe:
        plan.notes.append("MoE: FLOPs use the active parameters, memory the total; the Chinchilla fit was made on "
                          "dense models and is applied to active N.")
    plan.notes += option_notes(cfg, micro_batch)
    return plan


def option_notes(cfg: ModelConfig, micro_batch: int) -> list[str]:
    """What the network's optional parts change in the plan, for those that are on."""
    notes = []
    elementwise = [name for name, on in (("value embeddings", cfg.value_embeddings),
                                         ("residual scalars", cfg.residual_scalars),
                                         ("the embedding norm", cfg.embedding_norm),
                                         ("the logit soft-cap", cfg.logit_softcap > 0)) if on]
    if elementwise:
        notes.append(f"{', '.join(elementwise)}: elementwise adds, multiplies or a tanh, so no matmul FLOPs; their "
                     "parameters count in memory (value embeddings are embedding tables: weights, gradients and "
                     "AdamW's two moments, even under Muon)")
    if cfg.doc_masking:
        notes.append(f"document masking: attention takes an explicit [micro-batch, 1, T, T] boolean mask "
                     f"({gib(document_mask_bytes(cfg, micro_batch))} per micro-batch, counted in the activations); "
                     "on a GPU, SDPA cannot use its flash kernel with an arbitrary mask and runs the memory-efficient "
                     "one (or the math one), which is slower: expect a lower MFU than without it")
    return notes


def gpu_spec(gpu: Gpu | str) -> Gpu:
    if isinstance(gpu, Gpu):
        return gpu
    if gpu == "here":
        return this_machine()
    if gpu not in GPUS:
        raise ConfigError(f"--gpu {gpu!r} is not in the table; choose one of: here, {', '.join(GPUS)} "
                          "(or give --peak-flops and --memory-gb)")
    return GPUS[gpu]


def check_model(cfg: ModelConfig, moe: Moe | None) -> None:
    for name in ("n_layers", "d_model", "n_heads", "context", "vocab_size"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"model.{name} = {getattr(cfg, name)} must be greater than 0")
    for name in ("n_kv_heads", "d_ff"):  # 0 means the default: as many as the heads, the family's usual width
        if getattr(cfg, name) < 0:
            raise ConfigError(f"model.{name} = {getattr(cfg, name)} must be 0 (the default) or more")
    if cfg.arch not in FAMILIES:
        raise ConfigError(f"model.arch = {cfg.arch!r} is not one of: {', '.join(FAMILIES)}")
    if cfg.d_model % cfg.n_heads or cfg.n_heads % cfg.kv_heads:
        raise ConfigError(f"d_model = {cfg.d_model}, heads = {cfg.n_heads}, kv_heads = {cfg.kv_heads}: d_model must "
                          "be divisible by heads and heads by kv_heads")
    if moe and moe.experts < 1:
        raise ConfigError(f"--experts {moe.experts} must be at least 1 (leave it out for a dense model)")
    if moe and not (1 <= moe.active <= moe.experts and moe.shared >= 0 and moe.width >= 0 and moe.every >= 1):
        raise ConfigError(f"--active-experts {moe.active} must be between 1 and --experts {moe.experts}, "
                          f"--shared-experts {moe.shared} 0 or more, model.d_expert {moe.width} 0 or more and "
                          f"model.moe_every {moe.every} at least 1")


# ---------------------------------------------------------------------------------------------------------------
# Human-readable output


def si(x: float, digits: int = 3) -> str:
    """1234567 → '1.23M'."""
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= scale:
            return f"{x / scale:.{digits}g}{unit}"
    return f"{x:.{digits}g}"


def sci(x: float) -> str:
    return f"{x:.2e}".replace("e+", "e")


def duration(seconds: float) -> str:
    for unit, scale in (("years", 365.25 * 86400), ("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * scale or (unit == "min" and seconds >= scale):
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds:.3g} s"


def dollars(x: float) -> str:
    return f"${si(x, 2)}" if x >= 1000 else f"${x:.2f}"


def gib(x: float) -> str:
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if x >= scale:
            return f"{x / scale:.3g} {unit}"
    return f"{x / 2**10:.3g} KiB" if x else "0"


def table(header: list[str], rows: list[list[str]], align: str = "") -> list[str]:
    """Aligned columns; `align` has one letter per column, l or r (default: the first left, the rest right)."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def line(row: list[str]) -> str:
        return "  ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align)).rstrip()

    return [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]


def render(plan: Plan) -> str:
    m, p, f, c = plan.model, plan.params, plan.flops, plan.compute
    moe = ""
    if plan.moe:
        e = plan.moe
        where = "every block" if e["every"] == 1 else f"1 block of every {e['every']}"
        moe = (f", MoE {e['experts']} experts ({e['active']} routed + {e['shared']} shared) of width "
               f"{e['width'] or m['d_ff'] or 'd_ff'} in {where}")
    out = [f"model      {m['arch']}: {m['n_layers']} layers, d_model {m['d_model']}, {m['n_heads']} heads "
           f"({m['n_kv_heads'] or m['n_heads']} kv), d_ff {m['d_ff'] or 'default'}, context {m['context']}, "
           f"vocab {m['vocab_size']}{moe}",
           "", "parameters"]
    rows = [["total", si(p.total)], ["embedding tables", si(p.embedding)]]
    if p.value_embeddings:
        rows.append(["  of which value embeddings", si(p.value_embeddings)])
    rows += [["untied output head", si(p.head)], ["non-embedding", si(p.non_embedding)]]
    if p.residual_scalars:
        rows.append(["  of which residual scalars", si(p.residual_scalars)])
    if plan.moe:
        rows.append(["active per token", si(p.active)])
    rows += [["in matmuls per token (N)", si(p.matmul)], ["tokens (D)", si(plan.tokens)],
             ["tokens per parameter", f"{plan.chinchilla.tokens_per_param:.3g}"]]
    out += ["  " + r for r in table(["", "count"], rows)]

    out += ["", "training FLOPs", *["  " + r for r in table(["term", "per token", "total"], [
        ["6·N (weights, fwd+bwd)", sci(f.dense_per_token), sci(f.dense_total)],
        ["12·L·T·d (attention)", sci(f.attention_per_token), sci(f.attention_total)],
        ["total", sci(f.per_token), sci(f.total)]])],
        f"  for comparison, 6·N·D with N = all {'active ' if plan.moe else ''}parameters: {sci(f.six_n_d)}"]

    out += ["", f"compute on {c.gpus} × {c.gpu} at {c.mfu:.0%} MFU "
                f"(peak {sci(c.peak_flops)} FLOP/s: {plan.gpu_source})",
            f"  {si(c.gpu_hours)} GPU-hours, {duration(c.days * 86400)} wall clock, "
            f"{dollars(c.cost)} at ${c.price_per_hour:.2f}/GPU-hour, {si(c.tokens_per_s)} tokens/s"]

    if plan.published:
        pub = plan.published
        out += ["", f"published run {pub.name}: {pub.source}"]
        if pub.gpu_hours:
            out.append(f"  published {si(pub.gpu_hours)} GPU-hours; this plan at the stated {pub.stated_mfu:.0%} MFU: "
                       f"{si(pub.estimate_gpu_hours)} ({pub.ratio:.2f}×); the published hours imply "
                       f"{pub.implied_mfu:.1%} MFU")
        out.append(f"  stated MFU {pub.stated_mfu:.0%}: {pub.note}")

    if plan.measured:
        r = plan.measured
        out += ["", f"measured in {r.run_dir} ({r.device}): {si(r.tokens_per_s)} tokens/s, {sci(r.flops_per_s)} "
                    f"FLOP/s sustained, {r.mfu:.1%} MFU of {sci(r.peak_flops)}",
                f"  this plan there: {duration(r.here_seconds)}",
                f"  on {r.cluster.gpus} × {r.cluster.gpu} at that MFU: {si(r.cluster.gpu_hours)} GPU-hours, "
                f"{duration(r.cluster.days * 86400)}, {dollars(r.cluster.cost)}"]

    mem = plan.memory
    muon = "; Muon: one fp32 momentum for the blocks' matrices" if mem.optimizer == "muon" else ""
    out += ["", f"memory per GPU ({mem.precision}: {mem.precision_meaning}{muon}; micro-batch {mem.micro_batch} × "
                f"{m['context']} tokens, {'flash' if mem.flash_attention else 'plain'} attention; "
                f"{mem.gpu_memory_gib:.3g} GiB GPUs, {mem.usable_fraction:.0%} usable; {c.gpus} GPUs)"]
    rows = [[r.strategy, gib(r.weights), gib(r.grads), gib(r.optimizer), gib(r.activations), gib(r.buffers),
             gib(r.total), "yes" if r.fits else "no", str(r.min_gpus) if r.min_gpus else "never"]
            for r in mem.rows]
    out += ["  " + r for r in table(["strategy", "weights", "grads", "optimizer", "activations", "buffers",
                                     "total", "fits", "min GPUs"], rows)]
    out.append("  (no tensor or pipeline parallelism; activations per Korthikanti et al. 2022, see "
               "layer_activation_bytes)")
    out.append(f"  one checkpoint on disk: {gib(mem.checkpoint)} (fp32 weights and the optimizer's fp32 state)")

    ch = plan.chinchilla
    out += ["", f"Chinchilla view (Hoffmann et al. 2022: L = {ch.constants['E']} + {ch.constants['A']}/N^"
                f"{ch.constants['alpha']} + {ch.constants['B']}/D^{ch.constants['beta']}, nats on MassiveText)",
            f"  C = 6·N·D = {sci(ch.compute)}: compute-optimal N = {si(ch.optimal_params)}, "
            f"D = {si(ch.optimal_tokens)} ({TOKENS_PER_PARAM} tokens/parameter), predicted loss {ch.optimal_loss:.3f}",
            f"  this plan: N = {si(p.active)}, D = {si(plan.tokens)}, predicted loss {ch.loss:.3f}"]
    out += [f"note: {n}" for n in plan.notes]
    return "\n".join(out)


def render_lists() -> str:
    gpus = table(["--gpu", "name", "peak bf16", "memory", "$/h", "source"],
                 [[k, g.name, sci(g.peak_flops), f"{g.memory_gib:.3g} GiB", f"{g.price_per_hour:.2f}", g.source]
                  for k, g in GPUS.items()], align="llrrrl")
    runs = table(["--run", "tokens", "GPU", "published GPU-h", "stated MFU", "source"],
                 [[k, si(r.tokens), r.gpu, si(r.gpu_hours) if r.gpu_hours else "-", f"{r.mfu:.0%}", r.source]
                  for k, r in RUNS.items()], align="lrlrrl")
    return "\n".join(["GPUs (dense bf16 peaks; prices are rough rental assumptions)", *gpus, "",
                      "published runs", *runs])
