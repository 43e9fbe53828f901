"""Every check of a run config: a value that cannot work is refused in one line naming the field."""

import pytest

from nextword.config import RunConfig, apply_overrides
from nextword.errors import ConfigError

REFUSED = [
    ({"train.lr": "nan"}, "train.lr = nan must be a finite number"),
    ({"model.norm_eps": "0"}, "model.norm_eps = 0.0 must be greater than 0"),
    ({"eval.top_k": "-1"}, "eval.top_k = -1 must be 0 or more"),
    ({"train.beta2": "1"}, "train.beta2 = 1.0 must be in [0, 1), e.g. 0.9 or 0.95"),
    ({"engine.executor": "mpi"}, "engine.executor = 'mpi' is not one of: local, slurm, ray"),
    ({"train.schedule": "linear"}, "train.schedule = 'linear' is not one of: wsd, cosine, constant"),
    ({"train.rows": "docs"}, "train.rows = 'docs' is not one of: windows, documents"),
    ({"model.n_layers": "0"}, "model.n_layers = 0 must be greater than 0"),
    ({"eval.batches": "0"}, "eval.batches = 0 must be greater than 0"),
    ({"train.ckpt_every": "-1"}, "train.ckpt_every = -1 must be 0 (automatic) or more"),
    ({"model.d_model": "30", "model.n_heads": "4"}, "model.d_model = 30 must be divisible by model.n_heads = 4"),
    ({"model.n_heads": "4", "model.n_kv_heads": "3"}, "model.n_heads = 4 must be divisible by model.n_kv_heads = 3"),
    ({"model.arch": "llama", "model.d_model": "36", "model.n_heads": "4"},
     "model.d_model / model.n_heads = 9 must be even for rotary positions"),
    ({"model.mlp_activation": "tanh"}, "model.mlp_activation = 'tanh' is not one of: gelu, relu2, swiglu"),
    ({"model.arch": "gpt2", "model.mlp_activation": "swiglu"},
     "model.mlp_activation = swiglu is the llama family's gated MLP"),
    ({"model.logit_softcap": "-1"}, "model.logit_softcap = -1.0 must be 0 (off) or more, e.g. 30"),
    ({"model.dropout": "1"}, "model.dropout = 1.0 must be in [0, 1)"),
    ({"train.muon_momentum": "1"}, "train.muon_lr = 0.02 must be above 0 and train.muon_momentum = 1.0 in [0, 1)"),
    ({"model.n_experts": "-1"}, "model.n_experts, model.d_expert and model.balance_coef must be 0 or more"),
    ({"model.arch": "gpt2", "model.n_experts": "4"}, "model.n_experts = 4 needs SwiGLU experts"),
    ({"model.arch": "llama", "model.n_experts": "4", "model.experts_per_token": "5"},
     "model.experts_per_token = 5 must be between 1 and model.n_experts = 4"),
    ({"data.vocab_size": "256"}, "data.vocab_size = 256 must be at least 257"),
    ({"data.vocab_size": str(2**32 + 1)}, "does not fit the uint32 shard format"),
    ({"data.eos_token": "</s>"}, "data.eos_token = '</s>', data.bos_token = '' name tokens of a tokenizer you give"),
    ({"data.sources": "a,b", "data.weights": "1"}, "data.weights has 1 values for 2 data.sources"),
    ({"data.sources": "a", "data.weights": "0"}, "data.weights must be non-negative and not all zero"),
    ({"data.val_fraction": "0.5"}, "data.val_fraction = 0.5 must be in (0, 0.5)"),
    ({"train.budget": "10m", "train.steps": "5"}, "train.budget and train.steps are all set"),
    ({"train.budget": "soon"}, "train.budget = 'soon' is not a duration"),
    ({"train.tokens": "many"}, "train.tokens = 'many' is not a count"),
    ({"train.batch_tokens": "100"}, "train.batch_tokens = 100 must be a multiple of train.micro_batch × model.context"),
    ({"train.warmup_steps": "-1"}, "train.warmup_steps = -1 must be 0 or more"),
    ({"train.warmup_frac": "0.5", "train.decay_frac": "0.6"}, "train.warmup_frac and train.decay_frac must be in"),
    ({"train.min_lr_ratio": "2"}, "train.min_lr_ratio = 2.0 must be in [0, 1]"),
    ({"train.keep_last": "0"}, "train.keep_last = 0 must be at least 1"),
    ({"train.batch_warmup": "1"}, "train.batch_warmup = 1.0 must be in [0, 1)"),
    ({"train.spike_window": "1"}, "train.spike_window = 1 must be at least 2"),
    ({"train.spike_rollback": "true"}, "train.spike_rollback needs checkpoints to go back to"),
]


@pytest.mark.parametrize("overrides, message", REFUSED, ids=[message[:40] for _, message in REFUSED])
def test_each_check_refuses_its_field_in_one_line(overrides, message):
    cfg = apply_overrides(RunConfig(), overrides)
    with pytest.raises(ConfigError) as refused:
        cfg.validate()
    assert message in str(refused.value) and "\n" not in str(refused.value)


def test_the_defaults_pass_every_check():
    RunConfig().validate()
