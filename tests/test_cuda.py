"""What only a CUDA GPU can show: bf16 steps, torch.compile, fused AdamW and Muon skipping a non-finite update on the
device, the grouped-matmul experts, pinned-memory batches, the CUDA RNG through a checkpoint, an export of a
GPU-trained run, and DDP over NCCL.

Every test here is marked `cuda` and skips without a GPU (tests/conftest.py); `benchmarks/gpu_session.sh smoke`
runs them all. This module imports only what a GPU machine's own Python has (torch, numpy, tokenizers, safetensors,
pyarrow, tqdm, transformers, pytest), so the check runs there without any setup.
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from nextword.config import ModelConfig, RunConfig, TrainConfig
from nextword.data.loader import TokenLoader
from nextword.data.shards import ShardWriter, TokenShards, write_index
from nextword.model import GPT
from nextword.model.moe import moe_layers
from nextword.training import distributed
from nextword.training.checkpoint import load_checkpoint, load_for_inference, save_checkpoint
from nextword.training.distributed import World
from nextword.training.optimizer import build_optimizer
from nextword.training.step import train_step
from nextword.tools.export import export_model
from nextword.training.trainer import train

pytestmark = pytest.mark.cuda

CUDA = torch.device("cuda")
NO_SCALING = torch.amp.GradScaler("cuda", enabled=False)
WORDS = ("def return import class self value the model token data while for if else print list dict "
         "tensor shape batch layer weight loss step train eval sample text word line file path").split()


def bf16() -> torch.autocast:
    return torch.autocast("cuda", dtype=torch.bfloat16)


def tiny_model(**overrides) -> GPT:
    torch.manual_seed(0)
    shape = dict(arch="llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2, context=32, vocab_size=256)
    return GPT(ModelConfig(size="fixed", **(shape | overrides))).to(CUDA)


def fixed_batch(model: GPT, seed: int = 1, rows: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    data = torch.randint(0, model.cfg.vocab_size, (rows, model.cfg.context + 1), generator=generator).to(CUDA)
    return data[:, :-1].contiguous(), data[:, 1:].contiguous()


def step(model: GPT, optimizer: torch.optim.Optimizer, batch: tuple[torch.Tensor, torch.Tensor],
         lr: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return train_step(model, optimizer, lambda: batch, 1, lr, 1.0, bf16(), NO_SCALING, 0.01)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


@contextlib.contextmanager
def poisoned_gradients(model: GPT) -> Iterator[None]:
    """Inside the block, one parameter's gradient comes out Inf/NaN, as from an overflow in backward."""
    handle = next(model.parameters()).register_hook(lambda grad: grad * float("inf"))
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def no_reads_back_to_the_host() -> Iterator[None]:
    """Inside the block, anything that waits for the GPU (.item(), a blocking copy to the host) raises."""
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def tiny_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str) -> RunConfig:
    """A few KB of text and a tiny model that `train` runs on the GPU in bf16 in seconds."""
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        text = " ".join(WORDS[(i * 7 + j * j) % len(WORDS)] for j in range(400))
        (corpus / f"doc_{i:03d}.txt").write_text(text + "\n", encoding="utf-8")
    cfg = RunConfig()
    cfg.model.arch, cfg.model.size = "llama", "fixed"
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 2, 64, 4, 32
    cfg.data.sources, cfg.data.vocab_size, cfg.data.val_fraction = [str(corpus)], 300, 0.2
    cfg.data.data_dir = str(tmp_path / "data")
    cfg.train.run_dir, cfg.train.device, cfg.train.precision = str(tmp_path / name), "cuda", "bf16"
    cfg.train.steps, cfg.train.micro_batch, cfg.train.log_every, cfg.train.compile = 6, 8, 1, "off"
    cfg.eval.batches, cfg.eval.sample_tokens, cfg.eval.prompts = 2, 8, ["def "]
    return cfg


def log_records(run_dir: str | Path, kind: str) -> list[dict]:
    lines = (Path(run_dir) / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_a_bf16_step_on_the_gpu_lowers_the_loss():
    model = tiny_model()
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))
    batch = fixed_batch(model)
    losses = [float(step(model, optimizer, batch)[0]) for _ in range(20)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0] - 0.5, losses  # one batch, learnt by heart
    with bf16():
        assert model(batch[0]).dtype == torch.bfloat16  # the matmuls ran in bf16


def test_a_compiled_run_trains_as_the_eager_one(tmp_path, monkeypatch):
    eager = tiny_run(tmp_path, monkeypatch, "eager")
    compiled = copy.deepcopy(eager)
    compiled.train.run_dir, compiled.train.compile = str(tmp_path / "compiled"), "on"
    train(eager, progress=False)
    train(compiled, progress=False)
    run = log_records(compiled.train.run_dir, "run")[0]
    assert run["compile"] is True, f"fell back to eager: {run['compile_reason']}"
    eager_losses = [r["loss"] for r in log_records(eager.train.run_dir, "train")]
    compiled_losses = [r["loss"] for r in log_records(compiled.train.run_dir, "train")]
    # The same data, weights and steps; the compiled kernels round bf16 differently.
    assert compiled_losses == pytest.approx(eager_losses, rel=2e-2)


def test_fused_adamw_skips_a_non_finite_update_without_leaving_the_device():
    model = tiny_model()
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))
    assert optimizer.defaults["fused"]
    batch = fixed_batch(model)
    step(model, optimizer, batch)  # creates the optimizer state
    before, moments = weights(model), copy.deepcopy(optimizer.state_dict()["state"])
    with poisoned_gradients(model), no_reads_back_to_the_host():
        _, norm, skipped = step(model, optimizer, batch)
    assert float(skipped) == 1.0 and not torch.isfinite(norm)
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    after = optimizer.state_dict()["state"]
    assert all(torch.equal(moments[i][key], after[i][key]) for i in moments for key in moments[i])
    step(model, optimizer, batch)  # the next finite update goes through
    assert not torch.equal(before["tok_emb.weight"], model.tok_emb.weight)


def test_muon_trains_on_the_gpu_and_skips_a_non_finite_update():
    model = tiny_model()
    optimizer = build_optimizer(model, TrainConfig(optimizer="muon"))
    batch = fixed_batch(model)
    losses = [float(step(model, optimizer, batch)[0]) for _ in range(10)]
    assert losses[-1] < losses[0] - 0.5, losses
    before = weights(model)
    with poisoned_gradients(model):
        _, _, skipped = step(model, optimizer, batch)
    assert float(skipped) == 1.0
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())


@pytest.mark.parametrize("routing", [dict(experts_per_token=1, shared_experts=1), dict(experts_per_token=2)],
                         ids=["llama4-shared", "mixtral-top2"])
def test_the_grouped_experts_compute_what_the_loop_does(routing):
    from nextword.model.moe import grouped_mm_runs

    if not grouped_mm_runs(CUDA, torch.bfloat16):
        pytest.skip(f"torch's grouped matmul does not run on {torch.cuda.get_device_name()}")
    model = tiny_model(n_experts=4, d_expert=64, **routing)
    batch = fixed_batch(model)
    results = {}
    for path in ("grouped", "loop"):
        for layer in moe_layers(model):
            layer.expert_path = path
        model.zero_grad(set_to_none=True)
        with bf16():
            loss = model(*batch)
        loss.backward()
        results[path] = loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}
    (grouped_loss, grouped), (loop_loss, loop) = results["grouped"], results["loop"]
    assert float(grouped_loss) == pytest.approx(float(loop_loss), rel=1e-2)
    for name, grad in loop.items():  # bf16 products summed in another order: close, not equal
        assert float((grouped[name] - grad).norm() / grad.norm()) < 3e-2, name


def test_the_loader_copies_batches_to_the_gpu_from_pinned_memory(tmp_path):
    splits = {}
    for split in ("train", "val"):
        writer = ShardWriter(tmp_path, split, vocab_size=1000, eos_id=0)
        for start in range(1, 900, 10):
            writer.add(list(range(start, start + 9)), num_bytes=9)
        splits[split] = writer.close()
    write_index(tmp_path, vocab_size=1000, eos_id=0, tokenizer_hash="abc", splits=splits)
    shards = TokenShards(tmp_path, "train")
    on_gpu = TokenLoader(shards, batch_size=4, context=16, seed=1, device=CUDA)
    on_cpu = TokenLoader(shards, batch_size=4, context=16, seed=1)
    torch.zeros(1, device=CUDA)  # the CUDA context is up before the profiler starts
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        x, y = on_gpu.next_batch()
        torch.cuda.synchronize()
    # CUPTI names each copy by where it came from: "Memcpy HtoD (Pinned -> Device)" or "(Pageable -> Device)".
    copies = [event.name.lower() for event in profile.events() if event.name.lower().startswith("memcpy htod")]
    if not copies:
        pytest.skip("the profiler recorded no copies here (CUPTI is not available)")
    assert len(copies) >= 2 and all("pinned -> device" in name for name in copies), copies  # x and y
    cpu_x, cpu_y = on_cpu.next_batch()
    assert x.is_cuda and torch.equal(x.cpu(), cpu_x) and torch.equal(y.cpu(), cpu_y)


def test_the_cuda_random_state_comes_back_with_a_checkpoint(tmp_path):
    model = tiny_model()
    optimizer = build_optimizer(model, TrainConfig(optimizer="adamw"))
    step(model, optimizer, fixed_batch(model))
    cfg = RunConfig()
    cfg.model = model.cfg
    torch.manual_seed(123)
    torch.cuda.manual_seed(123)
    torch.rand(7, device=CUDA)  # the generator moved past its seed
    path = save_checkpoint(tmp_path, 1, model, optimizer, {"step": 1}, cfg, "tok", keep_last=1)
    expected_gpu, expected_cpu = torch.rand(1000, device=CUDA), torch.rand(10)
    torch.manual_seed(999)
    torch.cuda.manual_seed(999)
    load_checkpoint(path, model, optimizer, device=CUDA)
    assert torch.equal(torch.rand(1000, device=CUDA), expected_gpu)
    assert torch.equal(torch.rand(10), expected_cpu)
    assert all(state["exp_avg"].device == model.tok_emb.weight.device for state in optimizer.state.values())


def test_an_export_of_a_gpu_trained_run_gives_transformers_the_same_logits(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_run(tmp_path, monkeypatch, "run")
    train(cfg, progress=False)
    assert log_records(cfg.train.run_dir, "run")[0]["device"].startswith("cuda")
    model, tokenizer, _ = load_for_inference(cfg.train.run_dir, device="cuda")
    out = export_model(model, tokenizer, tmp_path / "hf")
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).to(CUDA).eval()
    ids = torch.randint(0, tokenizer.vocab_size, (2, cfg.model.context), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids.to(CUDA)), hf(ids.to(CUDA)).logits
    assert float((ours - theirs).abs().max()) < 2e-3


def test_ddp_over_nccl_at_world_size_one_takes_the_plain_models_steps():
    if not dist.is_nccl_available():
        pytest.skip("this torch was built without NCCL")
    plain, shared = tiny_model(), tiny_model()  # the same seed: the same weights
    batches = [fixed_batch(plain, seed) for seed in (1, 2)]
    dist.init_process_group("cpu:gloo,cuda:nccl", store=dist.HashStore(), rank=0, world_size=1)
    try:
        ddp = distributed.wrap(shared, "ddp", World(), precision="bf16")
        assert isinstance(ddp, torch.nn.parallel.DistributedDataParallel)
        losses = {}
        for name, net, owner in (("plain", plain, plain), ("ddp", ddp, shared)):
            optimizer = build_optimizer(owner, TrainConfig(optimizer="adamw"))
            micro_batches = iter(batches * 3)  # two micro-batches a step: the first one's backward skips the sync
            losses[name] = [float(train_step(net, optimizer, lambda: next(micro_batches), 2, 1e-3, 1.0, bf16(),
                                             NO_SCALING)[0]) for _ in range(3)]
    finally:
        distributed.leave()
    assert losses["ddp"] == pytest.approx(losses["plain"], rel=1e-5)
    for (name, p), q in zip(plain.named_parameters(), shared.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6, msg=name)
