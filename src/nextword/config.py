"""The run config: five typed sections, loaded from TOML, overridden from the command line, checked once.

A run directory keeps its resolved config as `config.toml`, so a run can be repeated from that file alone.
Every error names the field and says what would work, in one line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

import tomli_w

from nextword.errors import ConfigError
from nextword.files import write_text_atomically

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class Family:
    """What one value of `ModelConfig.arch` builds: the choices that set one family of blocks apart from another.
    The network, the parameter and memory planner and the config's own defaults and checks ask this, never the
    arch's name."""

    norm: Literal["layernorm", "rmsnorm"]  # LayerNorm has a bias, RMSNorm does not
    bias: bool  # biases on the attention and MLP linear layers
    # proj(gelu(fc(x))), or down(silu(gate(x)) · up(x)); ModelConfig.mlp_activation may choose another
    mlp: Literal["gelu", "swiglu"]
    positions: Literal["learned", "rotary"]  # a learned embedding per position, or RoPE applied to q and k


FAMILIES = {
    "gpt2": Family(norm="layernorm", bias=True, mlp="gelu", positions="learned"),
    "llama": Family(norm="rmsnorm", bias=False, mlp="swiglu", positions="rotary"),
}


@dataclass
class ModelConfig:
    """The network's shape. `arch` picks the block (see FAMILIES): "gpt2" (learned positions, LayerNorm, GELU MLP,
    biases) or "llama" (RoPE, RMSNorm, SwiGLU MLP, no biases, grouped-query attention).

    The defaults are the recipe's second round (benchmarks/RESULTS.md): of the speedrun's changes measured against
    the first round's GPT-2 network, llama blocks and an untied head that starts at zero after a normed embedding
    won on both corpora; the rest are options, off."""

    arch: str = "llama"
    # "budget": a run governed by train.budget chooses depth and width from the compute its budget buys
    # (training/sizing.py), and n_layers, d_model and n_heads below are what other runs train; "fixed": as set.
    # Naming any of those three, or a preset, fixes the size unless `size` itself is named too.
    size: str = "budget"
    n_layers: int = 4
    d_model: int = 256
    n_heads: int = 4
    n_kv_heads: int = 0  # 0: as many as n_heads (plain multi-head attention)
    d_ff: int = 0  # 0: 4·d_model for GELU, ≈8/3·d_model rounded up to 64 for SwiGLU
    context: int = 256
    vocab_size: int = 0  # 0: the tokenizer's vocabulary size
    tie_embeddings: bool = False
    qk_norm: bool = False  # an RMSNorm over each head's queries and keys, before attention
    # The MLP's activation. "": the family's (gelu for gpt2, swiglu for llama); "relu2": proj(relu(fc(x))²), the
    # squared ReLU of Primer (So et al. 2021) that modded-nanogpt trains with; "gelu" in a llama block likewise
    # replaces its gated SwiGLU MLP by two matrices.
    mlp_activation: str = ""
    zero_init_projections: bool = False  # attention's and the MLP's output projections start at zero
    logit_softcap: float = 0.0  # 0: off; else logits become cap·tanh(logits / cap), bounded by ±cap
    # The embedding's output RMS-normalised (no learned scale) before the first block, as modded-nanogpt and nanochat do
    embedding_norm: bool = True
    # An untied output head starts at zero, so every first prediction is uniform (a tied head is the embedding, and
    # starts as it does)
    zero_init_head: bool = True
    # A table of per-token vectors added to attention's values in every other block, counted back from the last
    # (modded-nanogpt's and nanochat's value embeddings): the token's identity reaches late blocks directly.
    value_embeddings: bool = False
    # Before block i, x = resid_scale[i]·x + x0_scale[i]·x0, x0 being the embedding's output: two learned scalars
    # per block (nanochat), starting at 1 and 0, so the network starts as it would without them.
    residual_scalars: bool = False
    # Attention stays within a document: a position sees no token before the end-of-document token that precedes it
    # (document-masked attention). document_end is that token's id, which the run fills in from its tokenizer.
    doc_masking: bool = False
    document_end: int = -1
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    init_std: float = 0.02
    init_from: str = ""  # a Hugging Face GPT-2 or Llama directory to continue pretraining from
    # Mixture of experts (llama only; model/moe.py): sparse blocks route each token to experts_per_token of
    # n_experts SwiGLU experts of width d_expert, plus shared_experts that see every token.
    n_experts: int = 0  # 0: dense
    experts_per_token: int = 1
    shared_experts: int = 0
    moe_every: int = 1  # 1: every block sparse; 2: every other one (blocks 1, 3, ...), the rest dense
    d_expert: int = 0  # 0: d_ff's width
    balance_coef: float = 0.01  # weight of the load-balancing loss added to the training loss

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def family(self) -> Family:
        if self.arch not in FAMILIES:
            raise ConfigError(f"model.arch = {self.arch!r} is not one of: {', '.join(FAMILIES)}")
        return FAMILIES[self.arch]

    @property
    def mlp(self) -> str:
        """The MLP's activation: gelu, relu2 (two matrices each) or swiglu (three, gated)."""
        return self.mlp_activation or self.family.mlp

    @property
    def ffn_dim(self) -> int:
        if self.d_ff:
            return self.d_ff
        if self.mlp == "swiglu":  # three matrices to GELU's two: 2/3 of the width keeps their parameters
            return 64 * -(-int(8 * self.d_model / 3) // 64)
        return 4 * self.d_model

    @property
    def expert_dim(self) -> int:
        return self.d_expert or self.ffn_dim

    def is_sparse(self, layer: int) -> bool:
        """Whether block `layer` (from 0) is a mixture of experts: every moe_every-th one, as Llama 4 and
        Qwen3-MoE count them."""
        return self.n_experts > 0 and (layer + 1) % self.moe_every == 0


@dataclass
class DataConfig:
    """Where the text comes from and how it becomes token shards."""

    sources: list[str] = field(default_factory=list)  # empty: the embedded default corpus (Python's stdlib)
    weights: list[float] = field(default_factory=list)  # one per source: its share of the bytes; empty: as read
    clean: bool = False  # run the [clean] step (extract, filter, deduplicate) on the sources before tokenizing
    # Where data.clean writes the cleaned corpus and reads it back: a folder, or a URL (s3://BUCKET/clean) shared by
    # every machine; "": DATA_DIR/clean, or a folder in the cache named by the clean inputs and settings
    clean_dir: str = ""
    data_dir: str = ""  # "": a folder in the cache named by a hash of the sources and these settings
    vocab_size: int = 8192
    tokenizer: str = ""  # a tokenizer.json to use as it is; "": train one on the corpus
    # The tokenizer's end-of-document token, and its beginning one in families that use one (Llama 3, Mistral);
    # "": as the files beside tokenizer.json name them (tokenizer_config.json, generation_config.json, config.json)
    eos_token: str = ""
    bos_token: str = ""
    tokenizer_train_bytes: int = 20_000_000  # train the tokenizer on at most this much text
    val_fraction: float = 0.05
    # Evaluation texts (files, or folders that count as one text each) no training document may overlap: one that
    # shares a 13-gram of normalised words with any of them is dropped (data/decontaminate.py). []: none checked.
    decontaminate: list[str] = field(default_factory=list)
    workers: int = 0  # 0: every core this process may use
    extensions: list[str] = field(
        default_factory=lambda: [".txt", ".md", ".rst", ".py", ".c", ".h", ".js", ".ts", ".java", ".go", ".rs"]
    )
    # The text that ends each document in the text files, e.g. "<|endoftext|>" (TinyStories): they are cut there,
    # and it is dropped with the whitespace around it, so it never reaches the tokenizer as text. "": a text file is
    # one document, or, over 4 MiB (enwik9, text8), cut at blank lines into documents of at most 64 KiB.
    doc_separator: str = ""


@dataclass
class TrainConfig:
    """The optimisation: how long, how fast, in what precision, and where the run lives."""

    run_dir: str = "runs/default"
    seed: int = 1337
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto | fp32 | bf16 | fp16
    compile: str = "auto"  # auto | on | off
    threads: int = 0  # 0: every core this process may use
    parallel: str = "auto"  # auto | none | ddp | fsdp; auto: ddp when started with more than one process
    activation_checkpointing: bool = False  # recompute each block's activations in backward to save memory
    micro_batch: int = 16  # sequences per forward/backward
    batch_tokens: int = 0  # global batch in tokens; 0: one micro-batch (no accumulation)
    # How the training split is cut into rows (data/loader.py). windows: fixed slots that cross documents anywhere;
    # documents: every row starts at a document's first token, documents packed by best fit (nanochat's loader).
    rows: str = "windows"
    # The first fraction of the planned steps trains on a quarter of the batch, then a half, then the whole, in three
    # equal stages (training/batch.py); 0: the full batch from the first step.
    batch_warmup: float = 0.0
    # How long: exactly one of these governs (a time budget, a token count, a compute count, a step count).
    budget: str = ""  # e.g. "10m", "90s", "2h"
    tokens: str = ""  # e.g. "20M", "1.5B"
    flops: str = ""  # training FLOPs, e.g. "1e14": tokens = flops / the model's FLOPs per token (GPT.flops_per_token)
    steps: int = 0
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    schedule: str = "wsd"  # wsd | cosine | constant
    warmup_steps: int = 100  # the learning rate rises linearly over at least this many updates...
    warmup_frac: float = 0.05  # ...or over this fraction of the run, when that is longer
    decay_frac: float = 0.2  # WSD: the last fraction of steps, where the rate anneals to its minimum
    weight_decay: float = 0.1
    decay_embeddings: bool = False
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    # adamw: AdamW for every parameter. muon: Muon for the blocks' hidden matrices (attention and MLP weights) at
    # muon_lr, AdamW at lr for embeddings, head, norms and biases (training/optimizer.py). The schedule scales both.
    # Muon is the default: at equal wall clock it reached 8.5% lower bits per byte than AdamW on the default run
    # (benchmarks/recipe.py, benchmarks/RESULTS.md).
    optimizer: str = "muon"
    muon_lr: float = 0.02  # Keller Jordan's Muon README: lr 0.02, momentum 0.95 (github.com/KellerJordan/Muon)
    muon_momentum: float = 0.95
    log_every: int = 10
    ckpt_every: int = 0  # steps between checkpoints; 0: only at the end and on interrupt
    keep_last: int = 2
    on_nonfinite: str = "skip"  # skip: drop an update whose loss or gradient is NaN/Inf, and go on; stop: end the run
    max_nonfinite_in_a_row: int = 10  # with skip: this many skipped updates in a row end the run
    # After a loss spike, go back to the newest checkpoint from before it and skip the data trained on since.
    spike_rollback: bool = False
    spike_window: int = 20  # a spike is measured against this many recent logged losses...
    spike_sigmas: float = 6.0  # ...as a loss above their mean by more than this many standard deviations
    max_spike_rollbacks: int = 3  # rollbacks in one run; one more spike ends the run with an error


@dataclass
class EvalConfig:
    """Held-out loss and samples during training."""

    every: int = 0  # steps between evaluations; 0: about five in a run
    batches: int = 10
    prompts: list[str] = field(default_factory=list)  # []: from the data (see training/evaluator.py)
    sample_tokens: int = 48
    temperature: float = 0.8
    top_k: int = 50
    # Downstream tasks run once training ends (lm-eval names or task YAML files, as `nextword eval --tasks`
    # takes them); they need the downstream extra. A task file is code (its !function lines run Python). []: none.
    tasks: list[str] = field(default_factory=list)
    task_limit: int = 0  # examples scored per task; 0: all of them


# The filter rules the clean step knows, by the names nextword.data.filters.RULES gives them.
CLEAN_RULES = ("language", "gopher_repetition", "gopher_quality", "c4", "fineweb", "code")


@dataclass
class CleanConfig:
    """Every setting of the clean step. Defaults are the published values, cited beside each."""

    extractor: str = "resiliparse"  # resiliparse | trafilatura (FineWeb's choice)
    # Which rules run on which kind of document, in order.
    web_rules: list[str] = field(default_factory=lambda: [
        "language", "gopher_repetition", "gopher_quality", "c4", "fineweb"])  # FineWeb's order
    text_rules: list[str] = field(default_factory=lambda: ["language", "gopher_repetition", "gopher_quality"])
    code_rules: list[str] = field(default_factory=lambda: ["code"])
    # Language id. FineWeb keeps English with fastText score >= 0.65 (Penedo et al. 2024, section 3.1).
    languages: list[str] = field(default_factory=lambda: ["en"])
    min_language_score: float = 0.65
    # Gopher quality (Rae et al. 2021, appendix A.1.1).
    min_words: int = 50
    max_words: int = 100_000
    min_mean_word_length: float = 3.0
    max_mean_word_length: float = 10.0
    max_symbol_word_ratio: float = 0.1  # "#", or ellipses, per word
    max_bullet_lines_ratio: float = 0.9
    max_ellipsis_lines_ratio: float = 0.3
    min_alpha_words_ratio: float = 0.8  # words with at least one alphabetic character
    min_stop_words: int = 2  # of: the, be, to, of, and, that, have, with
    # Gopher repetition (Rae et al. 2021, table A1).
    max_dup_line_ratio: float = 0.3
    max_dup_para_ratio: float = 0.3
    max_dup_line_char_ratio: float = 0.2
    max_dup_para_char_ratio: float = 0.2
    top_ngram_max_char_ratios: list[float] = field(default_factory=lambda: [0.20, 0.18, 0.16])  # n = 2, 3, 4
    dup_ngram_max_char_ratios: list[float] = field(
        default_factory=lambda: [0.15, 0.14, 0.13, 0.12, 0.11, 0.10])  # n = 5 .. 10
    # C4 (Raffel et al. 2020, section 2.2; datatrove C4QualityFilter defaults, which FineWeb used with the
    # terminal-punctuation line rule off).
    c4_min_words_per_line: int = 3
    c4_max_word_length: int = 1000
    c4_min_sentences: int = 5
    c4_drop_lines_without_terminal_punct: bool = False
    # FineWeb additions (datatrove FineWebQualityFilter defaults).
    fineweb_min_line_punct_ratio: float = 0.12
    fineweb_short_line_length: int = 30
    fineweb_max_short_line_ratio: float = 0.67
    fineweb_max_dup_line_char_ratio: float = 0.01
    fineweb_max_newline_word_ratio: float = 0.3
    # Code (Codex: mean line length > 100 or max > 1000 dropped; StarCoder: alphanumeric fraction < 0.25).
    code_max_line_length: int = 1000
    code_max_mean_line_length: float = 100.0
    code_min_alnum_ratio: float = 0.25
    code_max_file_bytes: int = 1_000_000  # The Stack v1 dropped files over 1 MB
    # Deduplication: exact (normalised text) and MinHash LSH over word 5-grams, 14 bands x 8 hashes (FineWeb).
    exact_dedup: bool = True
    minhash_dedup: bool = True
    minhash_ngram: int = 5
    minhash_bands: int = 14
    minhash_rows: int = 8
    minhash_seed: int = 1
    # Reporting and output.
    examples_per_rule: int = 3
    shard_docs: int = 50_000

    def validate(self) -> "CleanConfig":
        for name in ("web_rules", "text_rules", "code_rules"):
            unknown = [rule for rule in getattr(self, name) if rule not in CLEAN_RULES]
            if unknown:
                raise ConfigError(f"clean.{name}: unknown rule(s) {unknown}; rules are {', '.join(CLEAN_RULES)}")
        if len(self.top_ngram_max_char_ratios) != 3 or len(self.dup_ngram_max_char_ratios) != 6:
            raise ConfigError("clean.top_ngram_max_char_ratios needs 3 values (n=2..4) and "
                              "clean.dup_ngram_max_char_ratios 6 values (n=5..10)")
        if self.minhash_bands < 1 or self.minhash_rows < 1 or self.minhash_ngram < 1:
            raise ConfigError("clean.minhash_bands, clean.minhash_rows and clean.minhash_ngram must be >= 1")
        return self


EXECUTORS = ("local", "slurm", "ray")


@dataclass
class EngineConfig:
    """Where the data path's tasks run: datatrove's local, Slurm or Ray executor. The same tasks, and so the same
    output, under each."""

    executor: str = "local"  # local | slurm | ray
    tasks: int = 0  # tasks a stage is split into; 0: one per worker (local) or per input (slurm, ray)
    workers: int = 0  # tasks running at once; 0: every core (local), no limit (slurm, ray)
    logs: str = ""  # datatrove's logs, per stage; "": OUT/logs (must be on a shared filesystem for slurm and ray)
    slurm_partition: str = ""
    slurm_time: str = "4:00:00"  # per task
    slurm_cpus_per_task: int = 1
    slurm_mem_per_cpu_gb: int = 2
    slurm_env_command: str = ""  # run before each task, e.g. "source ~/nextword/.venv/bin/activate"
    ray_address: str = ""  # "": a Ray instance on this machine; "auto" or ray://HOST:10001: a running cluster
    ray_cpus_per_task: int = 1

    def validate(self) -> "EngineConfig":
        if self.executor not in EXECUTORS:
            raise ConfigError(f"engine.executor = {self.executor!r} is not one of: {', '.join(EXECUTORS)}")
        if self.tasks < 0 or self.workers < 0:
            raise ConfigError("engine.tasks and engine.workers must be >= 0 (0: chosen for you)")
        if self.executor == "slurm" and not self.slurm_partition:
            raise ConfigError("engine.executor = slurm needs a partition: --engine.slurm_partition NAME")
        return self


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    clean: CleanConfig = field(default_factory=CleanConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def validate(self) -> "RunConfig":
        validate(self)
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return to_toml(self.to_dict())

    def save(self, path: str | Path) -> None:
        write_text_atomically(path, self.to_toml())


# Model shapes by name. Published shapes keep their published vocabulary, which nextword pads a smaller
# tokenizer up to; the CPU-sized ones take the tokenizer's.
MODEL_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(arch="gpt2", n_layers=2, d_model=64, n_heads=2, context=64),
    "small": dict(arch="gpt2", n_layers=4, d_model=256, n_heads=4, context=256),
    # The named models of others are their networks, tied or not as released, with no normed embedding.
    "gpt2-124m": dict(arch="gpt2", n_layers=12, d_model=768, n_heads=12, context=1024, vocab_size=50257,
                      tie_embeddings=True, embedding_norm=False),
    "gpt2-350m": dict(arch="gpt2", n_layers=24, d_model=1024, n_heads=16, context=1024, vocab_size=50257,
                      tie_embeddings=True, embedding_norm=False),
    "llama-150m": dict(
        arch="llama", n_layers=12, d_model=768, n_heads=12, n_kv_heads=4, d_ff=2048, context=2048,
        vocab_size=32000, tie_embeddings=True, embedding_norm=False, rope_theta=500000.0,
    ),
    "llama-1b": dict(
        arch="llama", n_layers=16, d_model=2048, n_heads=32, n_kv_heads=8, d_ff=8192, context=2048,
        vocab_size=128256, tie_embeddings=True, embedding_norm=False, rope_theta=500000.0,
    ),
    # Sparse: a shared expert plus one of eight routed ones, each half the dense width, so a token passes
    # through as many MLP weights as in a dense block of d_ff 384.
    "moe-tiny": dict(
        embedding_norm=False,  # a sparse model exports only as a transformers architecture, and none has the norm
        arch="llama", n_layers=4, d_model=128, n_heads=4, n_kv_heads=2, d_ff=384, context=128,
        n_experts=8, experts_per_token=1, shared_experts=1, d_expert=192,
    ),
    # Llama 4 Scout's text model, from its released config: every block sparse, 16 routed experts + 1 shared.
    "llama4-scout": dict(
        arch="llama", n_layers=48, d_model=5120, n_heads=40, n_kv_heads=8, d_ff=16384, context=8192,
        vocab_size=202048, tie_embeddings=False, embedding_norm=False, rope_theta=500000.0,
        n_experts=16, experts_per_token=1, shared_experts=1, d_expert=8192,
    ),
}

SECTIONS = {"model": ModelConfig, "data": DataConfig, "train": TrainConfig, "eval": EvalConfig, "clean": CleanConfig,
            "engine": EngineConfig}


SIZE_FIELDS = ("n_layers", "d_model", "n_heads")  # naming one fixes the model's size (see ModelConfig.size)


def model_preset(name: str) -> ModelConfig:
    if name not in MODEL_PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; choose one of: {', '.join(MODEL_PRESETS)}")
    return ModelConfig(size="fixed", **MODEL_PRESETS[name])


def _named_size(cfg: RunConfig, named: set[str]) -> None:
    """A config file or overrides that name the model's depth, width or heads fix its size, unless they name
    model.size as well."""
    if named & set(SIZE_FIELDS) and "size" not in named:
        cfg.model.size = "fixed"


def from_dict(raw: dict[str, Any], where: str = "config") -> RunConfig:
    """Build a RunConfig from nested dicts (as TOML gives them); unknown sections or keys are errors."""
    cfg = RunConfig()
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(f"{where}: unknown section [{section}]; sections are {', '.join(SECTIONS)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where}: [{section}] must be a table of key = value lines")
        target = getattr(cfg, section)
        for key, value in values.items():
            set_field(target, section, key, value, where)
    _named_size(cfg, set(raw.get("model", {})))
    return cfg


# Fields added after runs were saved and keyed by their settings, each with the value that does what runs did before
# it. A run directory's config.toml holds every field there was when it was written, so one without such a field
# ran with this value, and resuming it keeps it (load_saved_run); a hash of a run's settings (`nextword compare`'s
# run key) leaves the field out while it has this value, so a run keyed before the field existed keeps its key.
# Either way the field's default may change without changing an older run.
ADDED_FIELDS = {
    ("model", "embedding_norm"): False, ("model", "zero_init_head"): False, ("model", "value_embeddings"): False,
    ("model", "residual_scalars"): False, ("model", "doc_masking"): False, ("model", "document_end"): -1,
    ("train", "rows"): "windows", ("train", "batch_warmup"): 0.0,
}


def without_added_fields(settings: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A config's sections (`RunConfig.to_dict`) less the ADDED_FIELDS that hold their earlier value."""
    return {section: {key: value for key, value in fields_.items()
                      if ADDED_FIELDS.get((section, key), object()) != value}
            for section, fields_ in settings.items()}


# Fields whose default changed after they existed, with their value before: a config.toml written before them
# ran with it (train.optimizer became muon, as a field of its own, in one change).
EARLIER_DEFAULTS = {("train", "optimizer"): "adamw", **ADDED_FIELDS}


def load_saved_run(path: str | Path) -> RunConfig:
    """Read the config.toml a run directory saved, as the run used it: a field it lacks takes the value runs had
    before the field existed (EARLIER_DEFAULTS), not today's default."""
    raw = read_toml(Path(path))
    cfg = from_dict(raw, where=str(path))
    for (section, key), value in EARLIER_DEFAULTS.items():
        if key not in raw.get(section, {}):
            setattr(getattr(cfg, section), key, value)
    return cfg


def load(path: str | Path) -> RunConfig:
    """Read a TOML config file."""
    path = Path(path)
    return from_dict(read_toml(path), where=str(path))


# What TOML forbids raw in a string: "control characters other than tab (U+0000 to U+0008, U+000A to U+001F,
# U+007F)" (toml.io/en/v1.0.0#string), less the line breaks that end a file's lines. nextword's own TOML writer
# wrote them raw before tomli-w wrote its configs, in strings taken from the data (eval.prompts).
RAW_CONTROL_CHARACTER = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def read_toml(path: Path) -> dict[str, Any]:
    """A config file's tables, as every reader of a config (a run's own included) reads them. A file an earlier
    nextword wrote with raw control characters in its strings is read with them escaped, and a line says so."""
    text = _config_text(path)
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a run config; fix the file") from None
    except tomllib.TOMLDecodeError as e:
        error = e
    escaped = RAW_CONTROL_CHARACTER.sub(lambda found: f"\\u{ord(found.group()):04x}", text)
    if escaped != text:
        with contextlib.suppress(tomllib.TOMLDecodeError):
            raw = tomllib.loads(escaped)
            print(f"note: {path}: read the raw control characters an earlier nextword wrote into its strings as "
                  "escapes; the run's next start writes the file anew", file=sys.stderr)
            return raw
    raise ConfigError(f"{path}: not valid TOML ({error}); fix the file or start from `nextword train --dump-config`")


def _config_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror}); pass a TOML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the file or start from `nextword train --dump-config`") from None


def set_field(target: Any, section: str, key: str, value: Any, where: str = "config") -> None:
    """Set one field from a config file's value (`where` names the file), converted to the field's type."""
    kind = _field_type(target, section, key, where)
    try:
        setattr(target, key, coerce(value, kind))
    except InvalidValue as e:
        raise ConfigError(f"{where}: {section}.{key} = {e.value!r} is not a valid {e.type_name}") from None


def apply_overrides(cfg: RunConfig, overrides: dict[str, str]) -> RunConfig:
    """Apply `{"train.lr": "3e-4"}`-style overrides (from `--train.lr 3e-4`). Every command that takes
    --SECTION.FIELD settings comes here, so they all accept the same spellings."""
    for dotted, text in overrides.items():
        section, _, key = dotted.partition(".")
        if section not in SECTIONS or not key:
            raise ConfigError(f"--{dotted}: overrides look like --SECTION.FIELD VALUE, with SECTION one of {', '.join(SECTIONS)}")
        target = getattr(cfg, section)
        kind = _field_type(target, section, key, "command line")
        try:
            setattr(target, key, coerce(text, kind))
        except InvalidValue as e:
            raise ConfigError(f"--{dotted}: {e.value!r} is not a valid {e.type_name}") from None
    _named_size(cfg, {dotted.partition(".")[2] for dotted in overrides if dotted.startswith("model.")})
    return cfg


def _field_type(target: Any, section: str, key: str, where: str) -> Any:
    hints = get_type_hints(type(target))
    if key not in hints:
        names = ", ".join(f.name for f in fields(target))
        raise ConfigError(f"{where}: unknown field {section}.{key}; [{section}] has: {names}")
    return hints[key]


class InvalidValue(ValueError):
    """A value that is not of its field's type: `value` is the part at fault (one item of a list)."""

    def __init__(self, value: Any, kind: Any):
        super().__init__(value)
        self.value = value
        self.type_name = getattr(kind, "__name__", str(kind))


TRUE_WORDS = ("true", "1", "yes", "on")
FALSE_WORDS = ("false", "0", "no", "off")
LIST_SEPARATOR = re.compile(r"\s*,\s*")  # spaces around a comma separate too ("en, de"); those inside an item stay


def coerce(value: Any, kind: Any) -> Any:
    """`value` as a `kind` (bool, int, float, str or a list of one of those): a TOML value, or a string from the
    command line. Booleans are spelled true/false, 1/0, yes/no or on/off in any case; an int may be written as a
    whole float (1e6); a list is comma-separated. Raises InvalidValue."""
    if get_origin(kind) is list:
        (item,) = get_args(kind)
        if isinstance(value, str):
            value = [part for part in LIST_SEPARATOR.split(value) if part]
        if not isinstance(value, list):
            raise InvalidValue(value, kind)
        return [coerce(v, item) for v in value]
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in TRUE_WORDS + FALSE_WORDS:
            return value.lower() in TRUE_WORDS
    if kind is int and not isinstance(value, bool):
        if isinstance(value, int):
            return value
        number = _as_float(value)
        if number is not None and number.is_integer():
            return int(number)
    if kind is float:
        number = _as_float(value)
        if number is not None:
            return number
    if kind is str and isinstance(value, str):
        return value
    raise InvalidValue(value, kind)


def _as_float(value: Any) -> float | None:
    """A number or a string that spells one, as a float; None for anything else (booleans included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except ValueError:
        return None


MLP_ACTIVATIONS = ("gelu", "relu2", "swiglu")
ROWS = ("windows", "documents")  # train.rows: how the loader cuts the training split (data/loader.py)
CHOICES = {
    "model.arch": tuple(FAMILIES),
    "model.size": ("budget", "fixed"),
    "train.optimizer": ("adamw", "muon"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.compile": ("auto", "on", "off"),
    "train.schedule": ("wsd", "cosine", "constant"),
    "train.parallel": ("auto", "none", "ddp", "fsdp"),
    "train.on_nonfinite": ("skip", "stop"),
    "train.rows": ROWS,
}


# Counts that must be above 0, and those where 0 means "chosen for you".
POSITIVE = ("model.n_layers", "model.d_model", "model.n_heads", "model.context", "train.micro_batch", "train.lr",
            "data.vocab_size", "train.log_every", "eval.batches")
ZERO_IS_AUTOMATIC = ("model.n_kv_heads", "model.d_ff", "model.vocab_size", "train.steps", "train.batch_tokens",
                     "train.threads", "train.ckpt_every", "eval.every", "data.workers", "eval.task_limit")


def validate(cfg: RunConfig) -> None:
    """Reject a config that cannot work, naming the field and a value that would."""
    _validate_numbers(cfg)
    cfg.engine.validate()
    _validate_choices(cfg)
    _validate_counts(cfg)
    _validate_model(cfg.model)
    _validate_muon(cfg.train)
    _validate_moe(cfg.model)
    _validate_data(cfg.data, cfg.model)
    _validate_length(cfg.train, cfg.model)
    _validate_schedule(cfg.train)
    _validate_spike_rollback(cfg.train)


def _value(cfg: RunConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def _validate_choices(cfg: RunConfig) -> None:
    for dotted, allowed in CHOICES.items():
        value = _value(cfg, dotted)
        if value not in allowed:
            raise ConfigError(f"{dotted} = {value!r} is not one of: {', '.join(allowed)}")


def _validate_counts(cfg: RunConfig) -> None:
    for name in POSITIVE:
        if _value(cfg, name) <= 0:
            raise ConfigError(f"{name} = {_value(cfg, name)} must be greater than 0")
    for name in ZERO_IS_AUTOMATIC:
        if _value(cfg, name) < 0:
            raise ConfigError(f"{name} = {_value(cfg, name)} must be 0 (automatic) or more")


def _validate_model(m: ModelConfig) -> None:
    """The shape of the attention heads, the MLP and the output."""
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model = {m.d_model} must be divisible by model.n_heads = {m.n_heads}")
    if m.n_heads % m.kv_heads:
        raise ConfigError(f"model.n_heads = {m.n_heads} must be divisible by model.n_kv_heads = {m.kv_heads}")
    if m.family.positions == "rotary" and m.head_dim % 2:
        raise ConfigError(f"model.d_model / model.n_heads = {m.head_dim} must be even for rotary positions")
    if m.mlp_activation not in ("", *MLP_ACTIVATIONS):
        raise ConfigError(f"model.mlp_activation = {m.mlp_activation!r} is not one of: {', '.join(MLP_ACTIVATIONS)} "
                          "(or empty for the family's own)")
    if m.mlp == "swiglu" and m.family.bias:
        raise ConfigError(f"model.mlp_activation = swiglu is the llama family's gated MLP, which has no biases; "
                          f"use it with model.arch = llama, or gelu or relu2 with {m.arch}")
    if m.logit_softcap < 0:
        raise ConfigError(f"model.logit_softcap = {m.logit_softcap} must be 0 (off) or more, e.g. 30")
    if not 0.0 <= m.dropout < 1.0:
        raise ConfigError(f"model.dropout = {m.dropout} must be in [0, 1)")


def _validate_muon(t: TrainConfig) -> None:
    if t.muon_lr <= 0 or not 0.0 <= t.muon_momentum < 1.0:
        raise ConfigError(f"train.muon_lr = {t.muon_lr} must be above 0 and train.muon_momentum = "
                          f"{t.muon_momentum} in [0, 1), e.g. 0.02 and 0.95")


def _validate_data(d: DataConfig, m: ModelConfig) -> None:
    """The vocabulary, the tokenizer's special tokens, the mix of sources and the split."""
    if d.vocab_size < 257:
        raise ConfigError(f"data.vocab_size = {d.vocab_size} must be at least 257 (256 bytes + end of text)")
    if d.vocab_size > 2**32:
        raise ConfigError(f"data.vocab_size = {d.vocab_size} does not fit the uint32 shard format; use at most 2**32")
    if (d.eos_token or d.bos_token) and not (d.tokenizer or m.init_from):
        raise ConfigError(f"data.eos_token = {d.eos_token!r}, data.bos_token = {d.bos_token!r} name tokens of a tokenizer "
                          "you give (data.tokenizer or model.init_from); the one nextword trains ends documents with "
                          "<|endoftext|>: leave them empty, or set data.tokenizer")
    if d.weights and len(d.weights) != len(d.sources):
        raise ConfigError(f"data.weights has {len(d.weights)} values for {len(d.sources)} data.sources; give one per source")
    if any(w < 0 for w in d.weights) or (d.weights and sum(d.weights) <= 0):
        raise ConfigError("data.weights must be non-negative and not all zero")
    if not 0.0 < d.val_fraction < 0.5:
        raise ConfigError(f"data.val_fraction = {d.val_fraction} must be in (0, 0.5)")
    if d.doc_separator and not d.doc_separator.strip():
        raise ConfigError(f"data.doc_separator = {d.doc_separator!r} is only whitespace, which would cut the text at "
                          "every space or line; give the marker that ends each document, e.g. <|endoftext|> (a "
                          "large file is already cut at blank lines without one)")


def _validate_length(t: TrainConfig, m: ModelConfig) -> None:
    """What governs the run's length, spelled so it can be read, and the global batch."""
    governing = [name for name, v in (("budget", t.budget), ("tokens", t.tokens), ("flops", t.flops),
                                      ("steps", t.steps)) if v]
    if len(governing) > 1:
        raise ConfigError(f"train.{' and train.'.join(governing)} are all set; exactly one of budget, tokens, flops, "
                          "steps governs")
    if t.budget:
        parse_duration(t.budget, "train.budget")
    if t.tokens:
        parse_count(t.tokens, "train.tokens")
    if t.flops:
        parse_count(t.flops, "train.flops")
    if t.batch_tokens and t.batch_tokens % (t.micro_batch * m.context):
        raise ConfigError(
            f"train.batch_tokens = {t.batch_tokens} must be a multiple of train.micro_batch × model.context "
            f"= {t.micro_batch * m.context}"
        )


def _validate_schedule(t: TrainConfig) -> None:
    """The learning rate's warmup and decay, the batch's warmup, and the checkpoints kept."""
    if t.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps = {t.warmup_steps} must be 0 or more")
    if not 0.0 <= t.warmup_frac < 1.0 or not 0.0 <= t.decay_frac <= 1.0 or t.warmup_frac + t.decay_frac > 1.0:
        raise ConfigError("train.warmup_frac and train.decay_frac must be in [0, 1] and add up to at most 1")
    if not 0.0 <= t.min_lr_ratio <= 1.0:
        raise ConfigError(f"train.min_lr_ratio = {t.min_lr_ratio} must be in [0, 1]")
    if t.keep_last < 1:
        raise ConfigError(f"train.keep_last = {t.keep_last} must be at least 1")
    if not 0.0 <= t.batch_warmup < 1.0:
        raise ConfigError(f"train.batch_warmup = {t.batch_warmup} must be in [0, 1): the fraction of the planned "
                          "steps over which the batch grows to its full size; 0 turns it off")


def _validate_numbers(cfg: RunConfig) -> None:
    """Ranges that torch or the sampler would otherwise reject with a traceback, or accept and go wrong with."""
    for section in ("model", "train", "eval"):
        for f in fields(getattr(cfg, section)):
            value = getattr(getattr(cfg, section), f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{section}.{f.name} = {value} must be a finite number")
    m, t, e = cfg.model, cfg.train, cfg.eval
    for name, value in {"model.norm_eps": m.norm_eps, "model.rope_theta": m.rope_theta}.items():
        if value <= 0:
            raise ConfigError(f"{name} = {value} must be greater than 0")
    for name, value in {"model.init_std": m.init_std, "train.weight_decay": t.weight_decay, "train.eps": t.eps,
                        "eval.temperature": e.temperature, "eval.top_k": e.top_k,
                        "eval.sample_tokens": e.sample_tokens}.items():
        if value < 0:
            raise ConfigError(f"{name} = {value} must be 0 or more")
    for name, value in {"train.beta1": t.beta1, "train.beta2": t.beta2}.items():
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} = {value} must be in [0, 1), e.g. 0.9 or 0.95")


def _validate_moe(m: ModelConfig) -> None:
    if m.n_experts < 0 or m.d_expert < 0 or m.balance_coef < 0:
        raise ConfigError("model.n_experts, model.d_expert and model.balance_coef must be 0 or more")
    if not m.n_experts:
        return
    if m.mlp != "swiglu":
        raise ConfigError(f"model.n_experts = {m.n_experts} needs SwiGLU experts: set model.arch = \"llama\" "
                          "(and leave model.mlp_activation empty)")
    if not 1 <= m.experts_per_token <= m.n_experts:
        raise ConfigError(f"model.experts_per_token = {m.experts_per_token} must be between 1 and "
                          f"model.n_experts = {m.n_experts}")
    if m.shared_experts < 0 or m.moe_every < 1:
        raise ConfigError(f"model.shared_experts = {m.shared_experts} must be 0 or more and model.moe_every = "
                          f"{m.moe_every} at least 1")


def _validate_spike_rollback(t: TrainConfig) -> None:
    if t.spike_window < 2:
        raise ConfigError(f"train.spike_window = {t.spike_window} must be at least 2 (a spread needs two losses)")
    if t.spike_sigmas <= 0:
        raise ConfigError(f"train.spike_sigmas = {t.spike_sigmas} must be greater than 0")
    if t.max_spike_rollbacks < 1:
        raise ConfigError(f"train.max_spike_rollbacks = {t.max_spike_rollbacks} must be at least 1")
    if t.spike_rollback and not t.ckpt_every:
        raise ConfigError("train.spike_rollback needs checkpoints to go back to; set train.ckpt_every as well "
                          "(e.g. 10 × train.log_every)")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_COUNT_UNITS = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}


def parse_duration(text: str, name: str = "budget") -> float:
    """'90s', '10m', '1.5h', '2d' → seconds."""
    text = text.strip().lower()
    unit = text[-1:] if text[-1:] in _DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in _DURATION_UNITS else text
    try:
        seconds = float(number) * _DURATION_UNITS[unit]
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise ConfigError(f"{name} = {text!r} is not a duration; write e.g. 90s, 10m or 2h")
    if seconds <= 0:
        raise ConfigError(f"{name} = {text!r} must be longer than zero")
    return seconds


def parse_count(text: str | int | float, name: str = "tokens") -> int:
    """'20M', '1.5B', '15e12', 300000 → an integer count."""
    raw = str(text).strip().lower().replace("_", "")
    unit = raw[-1:] if raw[-1:].isalpha() and raw[-1:] in _COUNT_UNITS else ""
    try:
        count = int(float(raw[: len(raw) - len(unit)]) * _COUNT_UNITS[unit])
    except (ValueError, OverflowError):  # OverflowError: "inf" or "1e400"
        raise ConfigError(f"{name} = {text!r} is not a count; write e.g. 300000, 20M or 1.5B") from None
    if count <= 0:
        raise ConfigError(f"{name} = {text!r} must be more than zero")
    return count


def to_toml(sections: dict[str, dict[str, Any]]) -> str:
    """Flat sections of str, int, float, bool and lists of those as TOML, every string escaped as TOML needs it
    (tomli-w escapes each control character; a prompt taken from the data may hold any)."""
    return tomli_w.dumps(sections)
