import copy
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from browser import find_chromium, needs_chromium

from nextword.config import ModelConfig, RunConfig, TrainConfig
from nextword.data.tokenizer import Tokenizer
from nextword.errors import ConfigError, DataError
from nextword.model import GPT
from nextword.tools.trace import Style, render_html, render_text, trace_step

TEXT = "The quick brown fox jumps over the lazy dog, and the dog sleeps."


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    corpus = ("The quick brown fox jumps over the lazy dog.\n" * 30 + "def sleep(dog):\n    return dog.sleeps()\n" * 30
              + "A dog and a fox are animals; the fox is quick and the dog is lazy.\n" * 30)
    return Tokenizer.train([corpus], vocab_size=320)


def tiny_model(tokenizer: Tokenizer, arch: str = "gpt2", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    # A tied head and a plain embedding: a head at zero would start every prediction uniform, and the trace's
    # first step would move nothing these tests look at.
    return GPT(ModelConfig(arch=arch, n_layers=2, d_model=32, n_heads=4, context=32,
                           vocab_size=tokenizer.vocab_size, n_kv_heads=2 if arch == "llama" else 0,
                           tie_embeddings=True, embedding_norm=False))


def batch(tokenizer: Tokenizer, text: str = TEXT) -> tuple[torch.Tensor, torch.Tensor]:
    ids = tokenizer.encode(text)
    return torch.tensor([ids[:-1]]), torch.tensor([ids[1:]])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_number_before_the_step_recomputes_in_float64(tokenizer, arch):
    model = tiny_model(tokenizer, arch)
    original = copy.deepcopy(model).eval()
    result = trace_step(model, tokenizer, TEXT, lr=1e-3, top_k=4)
    x, y = batch(tokenizer)
    with torch.no_grad():
        logits, training_loss = original.logits_and_loss(x, y)
    probs = torch.softmax(logits[0].double(), dim=-1)

    assert [t.id for t in result.tokens] == tokenizer.encode(TEXT)
    assert len(result.positions) == x.shape[1]
    for t, pos in enumerate(result.positions):
        target = int(y[0, t])
        assert pos.index == t and pos.target.id == target
        assert pos.prefix == tokenizer.decode(x[0, : t + 1].tolist())
        assert pos.p_before == pytest.approx(probs[t, target].item(), rel=1e-9)
        assert pos.loss_before == pytest.approx(-math.log(pos.p_before), rel=1e-9)
        top = torch.topk(probs[t], 4)
        assert [c.id for c in pos.top_k] == top.indices.tolist()
        assert [c.p for c in pos.top_k] == pytest.approx(top.values.tolist(), rel=1e-9)
    mean = sum(p.loss_before for p in result.positions) / len(result.positions)
    assert result.loss_before == pytest.approx(mean, rel=1e-12)
    assert result.loss_before == pytest.approx(F.cross_entropy(logits[0].double(), y[0]).item(), rel=1e-9)
    assert result.loss_before == pytest.approx(training_loss.item(), rel=1e-5)  # the loss the training loop logs


def test_an_sgd_step_moves_every_parameter_by_minus_lr_times_its_gradient(tokenizer):
    lr = 0.01
    model = tiny_model(tokenizer, "llama")
    reference = copy.deepcopy(model).eval()
    x, y = batch(tokenizer)
    loss = reference(x, y)
    loss.backward()
    result = trace_step(model, tokenizer, TEXT, lr=lr)

    after = dict(model.named_parameters())
    for name, theta in reference.named_parameters():
        expected = theta.detach() - lr * theta.grad
        torch.testing.assert_close(after[name].detach(), expected, rtol=1e-6, atol=1e-9, msg=name)
    grads = [p.grad.double() for p in reference.parameters()]
    thetas = [p.detach().double() for p in reference.parameters()]
    grad_norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads))
    assert result.grad_norm == pytest.approx(grad_norm, rel=1e-9)
    weight_norm = math.sqrt(sum(float(t.pow(2).sum()) for t in thetas))
    assert result.update_ratio == pytest.approx(lr * grad_norm / weight_norm, rel=1e-4)

    with torch.no_grad():
        logits_after = model(x)
    probs_after = torch.softmax(logits_after[0].double(), dim=-1)
    for t, pos in enumerate(result.positions):
        assert pos.p_after == pytest.approx(probs_after[t, int(y[0, t])].item(), rel=1e-9)
        assert pos.loss_after == pytest.approx(-math.log(pos.p_after), rel=1e-9)
    assert result.loss_after == pytest.approx(F.cross_entropy(logits_after[0].double(), y[0]).item(), rel=1e-9)


def test_an_adamw_step_is_the_training_loops_step(tokenizer):
    train = TrainConfig(lr=1e-3, weight_decay=0.1, grad_clip=1.0)
    model = tiny_model(tokenizer)
    reference = copy.deepcopy(model).eval()
    x, y = batch(tokenizer)
    loss = reference(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), train.grad_clip)
    torch.optim.AdamW(reference.optimizer_groups(train.weight_decay, train.decay_embeddings), lr=train.lr,
                      betas=(train.beta1, train.beta2), eps=train.eps).step()
    result = trace_step(model, tokenizer, TEXT, lr=train.lr, optimizer="adamw", train=train)

    assert result.optimizer == "adamw"
    # A first AdamW step moves each weight by about lr whatever its gradient (m̂/√v̂ = g/|g|), as the page says.
    assert "first step" in render_text(result) and "first step" in render_html(result)
    moved = torch.cat([(a - b).abs().flatten() for a, b in zip(model.parameters(), tiny_model(tokenizer).parameters())])
    assert moved.median().item() == pytest.approx(train.lr, rel=0.05)
    after = dict(model.named_parameters())
    for name, theta in reference.named_parameters():
        torch.testing.assert_close(after[name].detach(), theta.detach(), rtol=1e-6, atol=1e-9, msg=name)
    assert result.loss_after < result.loss_before


def test_a_muon_step_is_the_training_loops_step_and_shows_the_orthogonalised_update(tokenizer):
    from nextword.training.optimizer import build_optimizer

    train = TrainConfig(lr=1e-3, optimizer="muon", muon_lr=0.02)
    model = tiny_model(tokenizer)
    reference = copy.deepcopy(model).eval()
    x, y = batch(tokenizer)
    reference(x, y).backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), train.grad_clip)
    build_optimizer(reference, train, "fp32").step()  # the loop's step in an fp32 run, which the trace is
    result = trace_step(model, tokenizer, TEXT, lr=train.lr, optimizer="muon", train=train)

    after = dict(model.named_parameters())
    for name, theta in reference.named_parameters():
        torch.testing.assert_close(after[name].detach(), theta.detach(), rtol=1e-6, atol=1e-9, msg=name)
    assert result.muon_lr == 0.02 and result.lr == 1e-3
    assert [m.name for m in result.matrices] == [n for n, p in model.named_parameters() if p.dim() == 2
                                                 and n.startswith("blocks.")]
    fc = next(m for m in result.matrices if m.name == "blocks.0.mlp.fc.weight")
    assert fc.shape == (128, 32) and fc.rate == pytest.approx(0.02 * 2)  # √(128/32)
    for m in result.matrices:
        # The gradient's singular values spread over orders of magnitude; the step's lie near the rate.
        assert m.gradient_sigma[0] / m.gradient_sigma[1] > 10
        assert 0.5 * m.rate < m.step_sigma[1] <= m.step_sigma[0] < 1.3 * m.rate
    text, page = render_text(result), render_html(result)
    assert "Muon lr = 0.02, AdamW lr = 0.001" in text and "blocks.1.attn.o.weight" in text
    assert "orthogonalised" in text and "blocks.1.attn.o.weight" in page
    record = json.loads(json.dumps(result.to_dict()))
    assert record["muon_lr"] == 0.02 and len(record["matrices"]) == 12
    assert result.loss_after < result.loss_before


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "muon"])
def test_a_small_step_lowers_the_loss(tokenizer, optimizer):
    result = trace_step(tiny_model(tokenizer, seed=3), tokenizer, TEXT, lr=1e-3, optimizer=optimizer)
    assert result.loss_after < result.loss_before
    assert result.improved > len(result.positions) // 2
    assert 0 < result.update_ratio < 0.05  # "very slightly"


def test_an_untrained_model_scores_about_ln_v_and_the_text_says_why(tokenizer):
    result = trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3)
    ln_v = math.log(tokenizer.vocab_size)
    assert abs(result.loss_before - ln_v) / ln_v < 0.05
    text = render_text(result)
    assert f"ln V = {ln_v:.4f}" in text
    assert "untrained" in text and "p ≈ 1/V" in text
    for heading in ("1. The text as tokens", "2. At each position", "3. The loss of this batch",
                    "4. One optimizer step", "5. The same prediction after the step"):
        assert heading in text
    assert f"{result.improved} of {len(result.positions)} positions improved" in text


def test_a_trained_model_is_not_called_untrained(tokenizer):
    model = tiny_model(tokenizer)
    for _ in range(30):
        result = trace_step(model, tokenizer, TEXT, lr=0.5)
    assert result.loss_before < 0.7 * math.log(tokenizer.vocab_size)
    text = render_text(result)
    assert "untrained" not in text and "nats below ln V" in text


def test_json_has_exactly_the_issue_fields(tokenizer):
    result = trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3, top_k=3)
    record = json.loads(json.dumps(result.to_dict()))
    assert set(record) == {"vocab_size", "lr", "optimizer", "tokens", "positions", "loss_before", "loss_after",
                           "grad_norm", "update_ratio"}
    assert set(record["tokens"][0]) == {"id", "text"}
    assert set(record["positions"][0]) == {"index", "prefix", "target", "p_before", "loss_before", "p_after",
                                           "loss_after", "top_k"}
    assert set(record["positions"][0]["top_k"][0]) == {"id", "text", "p"}
    assert len(record["positions"][0]["top_k"]) == 3
    mean = sum(p["loss_before"] for p in record["positions"]) / len(record["positions"])
    assert record["loss_before"] == pytest.approx(mean)
    assert "".join(t["text"] for t in record["tokens"]) == TEXT


def test_one_position_can_be_chosen(tokenizer):
    result = trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3, position=-1)
    last = result.positions[-1]
    assert result.shown_positions == [last]
    starts = [line.strip().split(" ")[0] for line in render_text(result).splitlines()]
    assert starts.count(str(last.index)) == 3  # its token, its prediction, and its prediction after the step
    assert starts.count("0") == 1  # position 0 only in the token list
    with pytest.raises(ConfigError, match="--position 99"):
        trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3, position=99)


def test_bad_input_gets_a_clear_error(tokenizer):
    with pytest.raises(DataError, match="at least 2"):
        trace_step(tiny_model(tokenizer), tokenizer, "T", lr=1e-3)
    with pytest.raises(ConfigError, match="sgd, adamw or muon"):
        trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3, optimizer="adam")


def test_colour_only_when_asked(tokenizer):
    result = trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3)
    assert "\x1b[" in render_text(result, Style(True))
    assert "\x1b[" not in render_text(result, Style(False))


def test_html_page_is_self_contained_and_shows_the_tokens(tokenizer):
    result = trace_step(tiny_model(tokenizer), tokenizer, TEXT + " <b>&", lr=1e-3)
    page = render_html(result)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "src=" not in page and "href=" not in page and "<script" not in page and "<link" not in page
    assert page.count(">quick<") + page.count("> quick<") >= 2  # the text coloured before and after
    assert "&lt;" in page and "<b>" not in page  # the text is escaped, never markup
    assert page.count('class="tok"') == 2 * len(result.tokens)


@needs_chromium
def test_html_page_renders_in_a_headless_browser(tmp_path, tokenizer):
    import matplotlib.image

    page = tmp_path / "trace.html"
    page.write_text(render_html(trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=1e-3)), encoding="utf-8")
    shot = tmp_path / "shot.png"
    subprocess.run([find_chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                    f"--screenshot={shot}", "--window-size=1000,800", page.as_uri()], check=True, timeout=60,
                   capture_output=True)
    pixels = matplotlib.image.imread(shot)
    assert pixels.std() > 0.01  # something is drawn, not a blank page


def write_run(run_dir: Path, tokenizer: Tokenizer) -> Path:
    """A run directory with one checkpoint of tiny_model, as `nextword train` leaves it."""
    from nextword.training import checkpoint

    run_dir.mkdir()
    cfg = RunConfig()
    cfg.model = tiny_model(tokenizer).cfg
    model = tiny_model(tokenizer)
    cfg.save(run_dir / "config.toml")
    tokenizer.save(run_dir / "tokenizer.json")
    checkpoint.save_checkpoint(run_dir, 1, model, torch.optim.AdamW(model.parameters()), {"step": 1}, cfg,
                               tokenizer.hash, keep_last=1)
    return run_dir


def test_trace_command_on_a_run(tmp_path, tokenizer, capsys):
    from nextword import cli

    run_dir = write_run(tmp_path / "run", tokenizer)
    page = tmp_path / "trace.html"
    assert cli.main(["trace", str(run_dir), "--text", TEXT, "--json", "--html", str(page)]) == 0
    record = json.loads(capsys.readouterr().out)
    expected = trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=0.01)
    assert record["loss_before"] == pytest.approx(expected.loss_before, rel=1e-9)
    assert record["loss_after"] == pytest.approx(expected.loss_after, rel=1e-9)
    assert record["optimizer"] == "sgd" and record["lr"] == 0.01
    assert "quick" in page.read_text(encoding="utf-8")

    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    assert cli.main(["trace", str(run_dir), "--file", str(tmp_path / "text.txt"), "--position", "2"]) == 0
    out = capsys.readouterr().out
    assert "5. The same prediction after the step" in out and "\x1b[" not in out
    assert cli.main(["trace", str(run_dir), "--file", str(tmp_path / "missing.txt")]) == 2
    assert "missing.txt" in capsys.readouterr().err


@pytest.mark.parametrize("page", ["missing-folder/trace.html", "."])
def test_an_html_page_that_cannot_be_written_is_a_one_line_error(tmp_path, tokenizer, capsys, page):
    from nextword import cli

    run_dir = write_run(tmp_path / "run", tokenizer)
    assert cli.main(["trace", str(run_dir), "--text", TEXT, "--html", str(tmp_path / page)]) == 2
    err = capsys.readouterr().err
    assert "--html" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("lr", [math.nan, math.inf])
def test_a_learning_rate_that_is_not_a_finite_number_is_refused(tokenizer, lr):
    with pytest.raises(ConfigError, match="--lr"):
        trace_step(tiny_model(tokenizer), tokenizer, TEXT, lr=lr)


def test_a_text_longer_than_the_context_is_cut_to_one_window_and_says_so(tmp_path, tokenizer, capsys):
    from nextword import cli

    run_dir = write_run(tmp_path / "run", tokenizer)
    long_text = " ".join([TEXT] * 10)
    assert len(tokenizer.encode(long_text)) > 33
    assert cli.main(["trace", str(run_dir), "--text", long_text, "--json"]) == 0
    captured = capsys.readouterr()
    assert len(json.loads(captured.out)["tokens"]) == 33  # context 32 + 1
    assert f"is {len(tokenizer.encode(long_text)):,} tokens" in captured.err and "the first 33" in captured.err


def test_a_sparse_model_shows_which_experts_each_position_went_to(tokenizer):
    torch.manual_seed(0)
    model = GPT(ModelConfig(arch="llama", n_layers=2, d_model=32, n_heads=4, context=32, moe_every=2,
                            vocab_size=tokenizer.vocab_size, n_experts=4, experts_per_token=2, d_expert=16))
    x, _ = batch(tokenizer)
    before = copy.deepcopy(model).eval()
    with torch.no_grad():
        before(x)
    chosen, weights = before.blocks[1].mlp.routing  # what the router did before the step, [1, T, 2] each
    result = trace_step(model, tokenizer, TEXT, lr=1e-3)
    record = json.loads(json.dumps(result.to_dict()))
    assert len(record["positions"]) == x.shape[1]
    for t, position in enumerate(record["positions"]):
        (routing,) = position["routing"]  # one sparse block: the second
        assert routing["block"] == 1 and routing["experts"] == chosen[0, t].tolist()
        assert routing["weights"] == pytest.approx(weights[0, t].tolist(), abs=1e-6)
        assert sum(routing["weights"]) == pytest.approx(1.0, abs=1e-5)  # top-k renormalised
    text = render_text(result)
    first = record["positions"][0]["routing"][0]
    assert "experts (block: expert×weight)" in text
    assert f"1: {first['experts'][0]}×{first['weights'][0]:.2f}" in text
    assert "experts (block" in render_html(result)


def optioned_model(tokenizer: Tokenizer, **options) -> GPT:
    torch.manual_seed(0)
    # Each test turns on the options it looks at; the rest off, the head tied, so the first step moves the table.
    plain = dict(tie_embeddings=True, embedding_norm=False, zero_init_head=False)
    return GPT(ModelConfig(arch="llama", n_layers=3, d_model=32, n_heads=4, n_kv_heads=2, context=32,
                           vocab_size=tokenizer.vocab_size, **(plain | options)))


def test_the_networks_optional_parts_are_shown_with_the_models_own_numbers(tokenizer):
    cap, focus = 0.5, 5
    model = optioned_model(tokenizer, value_embeddings=True, residual_scalars=True, logit_softcap=cap,
                           embedding_norm=True, tie_embeddings=False)
    before = copy.deepcopy(model).eval()
    x, _ = batch(tokenizer)
    token = int(x[0, focus])
    result = trace_step(model, tokenizer, TEXT, lr=0.05, position=focus)
    inside = result.inside
    assert inside.position == focus

    # The embedding: its RMS as looked up, and after F.rms_norm (about 1, less the eps's share).
    looked_up = before.tok_emb.weight[token].double()
    normed = F.rms_norm(looked_up, (32,), eps=model.cfg.norm_eps)
    assert inside.embedding_norm.raw_before == pytest.approx(looked_up.pow(2).mean().sqrt().item(), rel=1e-6)
    assert inside.embedding_norm.normed_before == pytest.approx(normed.pow(2).mean().sqrt().item(), rel=1e-6)
    assert inside.embedding_norm.raw_after != inside.embedding_norm.raw_before  # the table moved

    # Value embeddings in blocks 2 and 0 (every other one, counted back from the last), sized by the model's own
    # table and, in block 0 (whose input is the normed embedding while the scalars start at 1 and 0), its own v.
    assert [v.block for v in inside.value_embeddings] == [0, 2]
    for v in inside.value_embeddings:
        table = before.blocks[v.block].attn.value_embed.weight[token]
        assert v.table_before == pytest.approx(table.norm().item(), rel=1e-6)
        assert v.table_after == pytest.approx(model.blocks[v.block].attn.value_embed.weight[token].norm().item(),
                                              rel=1e-6)
    with torch.no_grad():
        x0 = F.rms_norm(before.tok_emb(x), (32,), eps=model.cfg.norm_eps)
        computed = before.blocks[0].attn.v(before.blocks[0].attn_norm(x0))[0, focus]
    assert inside.value_embeddings[0].computed_before == pytest.approx(computed.norm().item(), rel=1e-5)

    # The residual scalars are the parameters, before and after the step.
    assert [r.resid_before for r in inside.residual_scalars] == before.resid_scales.tolist()
    assert [r.x0_before for r in inside.residual_scalars] == before.x0_scales.tolist()
    assert [r.resid_after for r in inside.residual_scalars] == model.resid_scales.tolist()
    assert [r.x0_after for r in inside.residual_scalars] == model.x0_scales.tolist()
    assert any(r.x0_after != 0 for r in inside.residual_scalars)

    # The soft-cap: the target's logit and the top predictions', raw and capped; the capped ones are the model's.
    assert inside.softcap == cap
    assert [c.id for c in inside.capped_logits][:1] == [result.positions[focus].target.id]
    with torch.no_grad():
        logits = before(x)[0, focus]
    for c in inside.capped_logits:
        assert c.capped == pytest.approx(cap * math.tanh(c.raw / cap), rel=1e-9)
        assert c.capped == pytest.approx(logits[c.id].item(), rel=1e-4, abs=1e-6)
    assert max(abs(c.raw - c.capped) for c in inside.capped_logits) > 1e-3  # a cap this low does bend them

    text, page = render_text(result), render_html(result)
    assert f"6. Inside the network at position {focus}" in text and "Inside the network" in page
    for shown_number in (f"{inside.residual_scalars[1].x0_after:.6g}", f"{inside.value_embeddings[1].table_before:.4g}",
                         f"{inside.capped_logits[0].capped:.4f}", f"{inside.embedding_norm.raw_before:.4g}"):
        assert shown_number in text and shown_number in page
    assert "cap = 0.5" in text and "W_v·x" in text and "resid_scale" in text
    record = json.loads(json.dumps(result.to_dict()))
    assert record["inside"]["residual_scalars"][2]["x0_after"] == inside.residual_scalars[2].x0_after
    assert "document" not in text.lower()  # document masking is off


def test_document_masking_shows_where_the_positions_document_starts(tokenizer):
    model = optioned_model(tokenizer, doc_masking=True, document_end=tokenizer.eos_id)
    text = "The quick fox.<|endoftext|>The lazy dog sleeps."
    first = tokenizer.encode("The quick fox.")
    end_at = len(first)  # the end token's position
    result = trace_step(copy.deepcopy(model), tokenizer, text, lr=1e-3, position=end_at + 2)
    assert [t.id for t in result.tokens] == first + [tokenizer.eos_id] + tokenizer.encode("The lazy dog sleeps.")
    document = result.inside.document
    assert document.end_token == tokenizer.eos_id and document.start == end_at + 1
    assert document.visible == [end_at + 1, end_at + 2]
    assert (f"starts at position {end_at + 1}" in render_text(result)
            and f"positions 0 to {end_at} belong to earlier documents" in render_text(result))
    # The end token itself still belongs to the document it ends; the text before any end token is one document.
    assert trace_step(copy.deepcopy(model), tokenizer, text, lr=1e-3, position=end_at).inside.document.start == 0
    assert trace_step(copy.deepcopy(model), tokenizer, TEXT, lr=1e-3).inside is None
