"""Walk one real training step of a real model on a piece of text, with every number shown.

Pretraining is this, repeated: the model sees a prefix of the text and predicts a probability for every
possible next token; the loss is the negative log of the probability it gave to the token that actually came
next (cross-entropy); the gradient says how to change each weight to raise that probability; the optimizer
moves the weights a very small step that way. trace_step does one such step and records, for
render_text (a terminal) and render_html (a page) to show:

  1. how the text becomes tokens;
  2. at each position: the prefix, the top predictions, the actual next token, its probability p, −ln p;
  3. the mean of those losses: the training loss of this one-sequence batch;
  4. one optimizer step (SGD: every weight moves by exactly −lr × its gradient), and how small it is; with Muon,
     each hidden matrix's gradient and step by their singular values: the step is the gradient orthogonalised;
  5. the same predictions after the step: p before → after.

In a mixture of experts, each position also shows which experts each sparse block's router chose for it, and
with what weights (model/moe.py).

With the network's optional parts on (model/network.py), one position (the chosen one, else the last) also shows
each of them with its numbers: the embedding's RMS before and after embedding_norm; in each block with a value
embedding, the size of the token's table vector against the v computed from x; each block's residual scalars
before and after the step; the soft-cap's raw and capped logits; and with document masking, which earlier
positions it attends to. `<|endoftext|>` (the tokenizer's end-of-document token) in the text ends a document, as
the shard writer ends each one.

A freshly initialised model gives every token about the same probability 1/V, so its loss is about ln V.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace

import torch

from nextword.config import TrainConfig
from nextword.errors import ConfigError, DataError
from nextword.model import GPT
from nextword.model.loss import softcap
from nextword.model.moe import MoE
from nextword.model.network import document_mask
from nextword.training.optimizer import build_optimizer

DEFAULT_TEXT = "The function returns a new list of the keys in the dictionary."
DEFAULT_SGD_LR = 0.01
ADAMW_RULE = "AdamW as the training loop takes its first step (moments start at zero: each weight moves by about lr)"
MUON_RULE = ("Muon for the blocks' matrices, AdamW for the rest, as the training loop takes its first step (each "
             "matrix moves by its gradient orthogonalised, ≈ U·Vᵀ of the gradient's SVD U·S·Vᵀ)")
RULES = {"sgd": "θ ← θ − lr·∇θ, exactly", "adamw": ADAMW_RULE, "muon": MUON_RULE}


@dataclass
class TokenInfo:
    id: int
    text: str


@dataclass
class Candidate:
    id: int
    text: str
    p: float


@dataclass
class MatrixStep:
    """What Muon did to one hidden matrix: the spread of the singular values σ of its gradient and of its step Δθ.
    Orthogonalising G = U·S·Vᵀ gives about U·Vᵀ: each of the gradient's `rank` nonzero σ becomes about 1 (0.7 …
    1.2 after Newton–Schulz's five steps), so the step's first `rank` σ lie close to the rate however widely the
    gradient's spread. (A short text gives a gradient of low rank: a matrix's gradient sums one outer product per
    token.)"""

    name: str
    shape: tuple[int, int]
    rate: float  # muon_lr · √max(1, rows/columns): the step's σ are about this
    rank: int  # the gradient's nonzero singular values (above 1e-6 of the largest)
    gradient_sigma: tuple[float, float]  # the largest and the rank-th
    step_sigma: tuple[float, float]


@dataclass
class Routing:
    """Where one sparse block sent one position: its chosen experts and their weights, heaviest first."""

    block: int
    experts: list[int]
    weights: list[float]


@dataclass
class ValueEmbeddingSize:
    """One block with a value embedding, at the shown position: attention's values there are v = W_v·x + ve[token],
    the second part read from the token's own row of the block's table. Their sizes (L2 norms) say how much of v
    comes from the token itself rather than from its context."""

    block: int
    table_before: float  # ‖ve[token]‖
    computed_before: float  # ‖W_v·x‖ (with its bias in gpt2)
    table_after: float
    computed_after: float


@dataclass
class ResidualScalars:
    """One block's learned scalars: before it, x = resid_scale·x + x0_scale·x0, x0 being the embedding's output."""

    block: int
    resid_before: float
    resid_after: float
    x0_before: float
    x0_after: float


@dataclass
class CappedLogit:
    """One token's logit at the shown position before the step: the head's raw output, and cap·tanh(raw / cap)."""

    id: int
    text: str
    raw: float
    capped: float


@dataclass
class EmbeddingNorm:
    """The RMS of the embedding (token, plus position in gpt2) at the shown position, as looked up and after
    RMS-normalising it, before and after the step."""

    raw_before: float
    normed_before: float
    raw_after: float
    normed_after: float


@dataclass
class DocumentView:
    """With document masking: the positions the shown position attends to, those of its own document."""

    end_token: int
    start: int  # the first position of its document
    visible: list[int]


@dataclass
class Inside:
    """The network's optional parts at one position, each present only when its option is on."""

    position: int
    embedding_norm: EmbeddingNorm | None = None
    value_embeddings: list[ValueEmbeddingSize] = field(default_factory=list)
    residual_scalars: list[ResidualScalars] = field(default_factory=list)
    softcap: float = 0.0
    capped_logits: list[CappedLogit] = field(default_factory=list)  # the target's first, then the top predictions'
    document: DocumentView | None = None


@dataclass
class PositionTrace:
    """Predicting the token at `index + 1` from the tokens 0..index."""

    index: int
    prefix: str
    target: TokenInfo
    p_before: float
    loss_before: float
    p_after: float
    loss_after: float
    top_k: list[Candidate]
    routing: list[Routing] = field(default_factory=list)  # one per sparse block; empty for a dense model


@dataclass
class TraceResult:
    vocab_size: int
    lr: float
    optimizer: str
    tokens: list[TokenInfo]
    positions: list[PositionTrace]
    loss_before: float  # mean of positions[*].loss_before, in nats: the batch's training loss
    loss_after: float
    grad_norm: float  # ‖∇θ‖ over all parameters
    update_ratio: float  # ‖Δθ‖ / ‖θ‖ over all parameters
    focus: int | None = None  # the one position to show, if chosen
    text_tokens: int = 0  # the whole text's length in tokens; more than len(tokens) when it outgrew one window
    muon_lr: float = 0.0  # with Muon: its rate for the hidden matrices (lr is AdamW's, for the rest)
    matrices: list[MatrixStep] = field(default_factory=list)  # with Muon: each hidden matrix's step
    inside: Inside | None = None  # the network's optional parts at one position; None when none is on

    def to_dict(self) -> dict:
        """The JSON other tools read (the fields of issue #4, with Muon its rate and matrices, and with the network's
        optional parts on, `inside`)."""
        record = asdict(self)
        del record["focus"], record["text_tokens"]
        if not self.matrices:
            del record["muon_lr"], record["matrices"]
        if self.inside is None:
            del record["inside"]
        for position in record["positions"]:
            if not position["routing"]:  # a dense model routes nothing
                del position["routing"]
        return record

    @property
    def rates(self) -> str:
        """The learning rate(s), as the headings show them."""
        if self.optimizer == "muon":
            return f"Muon lr = {self.muon_lr:g}, AdamW lr = {self.lr:g}"
        return f"lr = {self.lr:g}"

    @property
    def shown_positions(self) -> list[PositionTrace]:
        return self.positions if self.focus is None else [self.positions[self.focus]]

    @property
    def improved(self) -> int:
        return sum(p.loss_after < p.loss_before for p in self.positions)


def trace_step(model: GPT, tokenizer, text: str, *, lr: float, optimizer: str = "sgd", top_k: int = 5,
               position: int | None = None, train: TrainConfig | None = None) -> TraceResult:
    """Take one real optimizer step of `model` on `text` (one sequence: x = tokens[:-1], y = tokens[1:]) and
    record every number of it. The model is changed: it is the model after the step.

    The model runs in fp32 with dropout off, so the numbers are exact and repeatable. "sgd" updates every weight
    by exactly −lr·grad (no momentum, clipping or weight decay). "adamw" takes the training loop's step: AdamW
    with the parameter groups, betas, eps and weight decay of `train` (default: TrainConfig()), after clipping
    the gradient norm to train.grad_clip. Its moments start at zero, as at the loop's first step, where each
    weight moves by about lr whatever its gradient's size; later in a run, the moments make steps smaller.
    "muon" takes the loop's step with train.optimizer = muon: Muon at train.muon_lr for the blocks' matrices,
    AdamW at `lr` for the rest; each hidden matrix's gradient and step are recorded by their singular values.
    """
    if optimizer not in RULES:
        raise ConfigError(f"--optimizer {optimizer!r}: choose sgd, adamw or muon")
    if not 0 < lr < math.inf or top_k < 1:  # written so that a nan lr fails it too
        raise ConfigError(f"--lr {lr} must be a finite number above 0 and --top-k {top_k} at least 1")
    text_ids = _encode(tokenizer, text)
    ids = text_ids[: model.cfg.context + 1]  # one training window at most
    if len(ids) < 2:
        raise DataError(f"the text {text!r} is {len(ids)} token(s); a training step needs at least 2 "
                        "(a prefix and a next token); give a longer --text")
    focus = _check_position(position, len(ids) - 1)

    model.float().eval()
    device = model.tok_emb.weight.device
    x = torch.tensor([ids[:-1]], device=device)
    y = torch.tensor([ids[1:]], device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in params]

    shown_at = focus if focus is not None else len(ids) - 2  # where the optional parts are shown: else the last
    model.zero_grad(set_to_none=True)
    with _watch(model, shown_at) as seen, torch.no_grad():
        logits = model(x)
    inside_before = _moment(model, seen)
    routing = _routing(model)
    loss = model(x, y)  # the training loop's own loss and gradient
    loss.backward()
    grad_norm = _norm(p.grad for p in params if p.grad is not None)
    train = train or TrainConfig()
    gradients = {id(p): p.grad.detach().clone() for p in model.hidden_matrices()} if optimizer == "muon" else {}
    _optimizer_step(model, params, optimizer, lr, train)
    update_ratio = _norm(p.detach() - b for p, b in zip(params, before)) / _norm(before)
    steps = {id(p): p.detach() - b for p, b in zip(params, before)}
    model.zero_grad(set_to_none=True)
    with _watch(model, shown_at) as seen, torch.no_grad():
        logits_after = model(x)
    inside_after = _moment(model, seen)

    log_p_before = torch.log_softmax(logits[0].detach().double(), dim=-1)
    log_p_after = torch.log_softmax(logits_after[0].double(), dim=-1)
    positions = [
        _position(t, ids, tokenizer, log_p_before[t], log_p_after[t], top_k, [r[t] for r in routing])
        for t in range(len(ids) - 1)
    ]
    return TraceResult(
        vocab_size=model.cfg.vocab_size, lr=lr, optimizer=optimizer,
        tokens=[TokenInfo(i, tokenizer.token_text(i)) for i in ids], positions=positions,
        loss_before=sum(p.loss_before for p in positions) / len(positions),
        loss_after=sum(p.loss_after for p in positions) / len(positions),
        grad_norm=grad_norm, update_ratio=update_ratio, focus=focus, text_tokens=len(text_ids),
        muon_lr=train.muon_lr if optimizer == "muon" else 0.0,
        matrices=[_matrix_step(name, p, gradients[id(p)], steps[id(p)], train.muon_lr)
                  for name, p in model.named_parameters() if id(p) in gradients],
        inside=_inside(model, tokenizer, x, positions[shown_at], inside_before, inside_after),
    )


def _encode(tokenizer, text: str) -> list[int]:
    """The text's tokens, with each `<|endoftext|>` in it (the tokenizer's end-of-document token, written out) read as
    that token, as the shard writer puts it after every document. The tokenizer alone encodes it as ordinary text."""
    documents = [tokenizer.encode(part) for part in text.split(tokenizer.eos_token)]
    ids = documents[0]
    for document in documents[1:]:
        ids += [tokenizer.eos_id, *document]
    return ids


# ---- The network's optional parts at one position --------------------------------------------------------------

@contextmanager
def _watch(model: GPT, position: int) -> Iterator[dict[str, torch.Tensor]]:
    """Forward hooks that keep, from the forward pass inside, what the optional parts worked on at `position`: each
    block's value embedding ("table3") and v projection ("computed3"), the embedding as looked up ("token", plus
    "place" in gpt2) and as normalised ("normed": the input of the embedding's dropout), and the final norm's
    output ("final"), which the head turns into the raw logits."""
    cfg = model.cfg
    watched: list[tuple[str, torch.nn.Module]] = []
    for index, block in enumerate(model.blocks):
        if block.attn.value_embed is not None:
            watched += [(f"table{index}", block.attn.value_embed), (f"computed{index}", block.attn.v)]
    if cfg.embedding_norm:
        watched.append(("token", model.tok_emb))
        if model.pos_emb is not None:
            watched.append(("place", model.pos_emb))
    if cfg.logit_softcap:
        watched.append(("final", model.norm))
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(module, args, output=None):  # a forward hook gets the output; a pre-hook only the inputs
            tensor = args[0] if output is None else output
            seen[name] = tensor[..., position, :].detach().double().reshape(-1)
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in watched]
    if cfg.embedding_norm:
        handles.append(model.dropout.register_forward_pre_hook(keep("normed")))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class _Moment:
    """The optional parts' numbers at the shown position at one moment, before or after the step."""

    tables: dict[int, float]  # block → ‖ve[token]‖
    computed: dict[int, float]  # block → ‖W_v·x‖
    resid_scales: list[float]
    x0_scales: list[float]
    raw_logits: torch.Tensor | None  # before the soft-cap
    embedding_rms: tuple[float, float] | None  # as looked up, as normalised


def _rms(vector: torch.Tensor) -> float:
    return float(vector.pow(2).mean().sqrt())


def _moment(model: GPT, seen: dict[str, torch.Tensor]) -> _Moment:
    blocks = [index for index, block in enumerate(model.blocks) if block.attn.value_embed is not None]
    raw_logits = embedding_rms = None
    if "final" in seen:
        head = model.tok_emb.weight if model.cfg.tie_embeddings else model.lm_head.weight
        raw_logits = head.detach().double() @ seen["final"]
    if "token" in seen:
        embedding_rms = (_rms(seen["token"] + seen.get("place", 0)), _rms(seen["normed"]))
    scalars = model.cfg.residual_scalars
    return _Moment(tables={i: float(seen[f"table{i}"].norm()) for i in blocks},
                   computed={i: float(seen[f"computed{i}"].norm()) for i in blocks},
                   resid_scales=model.resid_scales.tolist() if scalars else [],
                   x0_scales=model.x0_scales.tolist() if scalars else [],
                   raw_logits=raw_logits, embedding_rms=embedding_rms)


def _inside(model: GPT, tokenizer, x: torch.Tensor, shown: PositionTrace, before: _Moment,
            after: _Moment) -> Inside | None:
    """The optional parts at the shown position; None when the network has none of them on."""
    cfg = model.cfg
    inside = Inside(position=shown.index, document=_document_view(cfg.doc_masking, cfg.document_end, x, shown.index))
    if before.embedding_rms is not None:
        inside.embedding_norm = EmbeddingNorm(*before.embedding_rms, *after.embedding_rms)
    inside.value_embeddings = [ValueEmbeddingSize(block, before.tables[block], before.computed[block],
                                                  after.tables[block], after.computed[block])
                               for block in before.tables]
    inside.residual_scalars = [ResidualScalars(block, before.resid_scales[block], after.resid_scales[block],
                                               before.x0_scales[block], after.x0_scales[block])
                               for block in range(len(before.resid_scales))]
    if before.raw_logits is not None:
        inside.softcap = cfg.logit_softcap
        capped = softcap(before.raw_logits, cfg.logit_softcap)
        ids = [shown.target.id] + [c.id for c in shown.top_k if c.id != shown.target.id]
        inside.capped_logits = [CappedLogit(i, tokenizer.token_text(i), float(before.raw_logits[i]), float(capped[i]))
                                for i in ids]
    return None if inside == Inside(position=shown.index) else inside


def _document_view(doc_masking: bool, document_end: int, x: torch.Tensor, position: int) -> DocumentView | None:
    """The positions `position` attends to, by the network's own document mask; None without document masking or
    when the text holds no end-of-document token (then it is one document, and attention plainly causal)."""
    if not doc_masking or not bool((x == document_end).any()):
        return None
    visible = document_mask(x, document_end, None)[0, 0, position].nonzero().flatten().tolist()
    return DocumentView(end_token=document_end, start=visible[0], visible=visible)


def _routing(model: GPT) -> list[list[Routing]]:
    """Per sparse block, per position: the router's choice in the forward pass just made (before the step)."""
    blocks = []
    for index, block in enumerate(model.blocks):
        if isinstance(block.mlp, MoE):
            experts, weights = block.mlp.routing
            blocks.append([Routing(index, e.tolist(), [round(float(w), 6) for w in ws])
                           for e, ws in zip(experts[0], weights[0])])
    return blocks


def _check_position(position: int | None, count: int) -> int | None:
    if position is None:
        return None
    if not -count <= position < count:
        raise ConfigError(f"--position {position}: this text has positions 0 to {count - 1}")
    return position % count


def _optimizer_step(model: GPT, params: list[torch.nn.Parameter], name: str, lr: float, train: TrainConfig) -> None:
    if name == "sgd":
        torch.optim.SGD(params, lr=lr).step()
        return
    optimizer = build_optimizer(model, replace(train, lr=lr, optimizer=name), "fp32")  # the trace computes in fp32
    if train.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, train.grad_clip)
    optimizer.step()


def _matrix_step(name: str, matrix: torch.Tensor, gradient: torch.Tensor, step: torch.Tensor,
                 muon_lr: float) -> MatrixStep:
    rows, columns = matrix.shape
    gradient_sigma = torch.linalg.svdvals(gradient.double())
    step_sigma = torch.linalg.svdvals(step.double())
    rank = int((gradient_sigma > 1e-6 * gradient_sigma[0]).sum())
    return MatrixStep(name=name, shape=(rows, columns), rate=muon_lr * math.sqrt(max(1.0, rows / columns)),
                      rank=rank, gradient_sigma=(float(gradient_sigma[0]), float(gradient_sigma[rank - 1])),
                      step_sigma=(float(step_sigma[0]), float(step_sigma[rank - 1])))


def _norm(tensors) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def _position(t: int, ids: list[int], tokenizer, log_p_before: torch.Tensor, log_p_after: torch.Tensor,
              top_k: int, routing: list[Routing]) -> PositionTrace:
    target = ids[t + 1]
    top = torch.topk(log_p_before, min(top_k, log_p_before.shape[0]))
    return PositionTrace(
        index=t,
        prefix=tokenizer.decode(ids[: t + 1]),
        target=TokenInfo(target, tokenizer.token_text(target)),
        p_before=math.exp(log_p_before[target]), loss_before=-float(log_p_before[target]),
        p_after=math.exp(log_p_after[target]), loss_after=-float(log_p_after[target]),
        top_k=[Candidate(int(i), tokenizer.token_text(int(i)), math.exp(lp))
               for lp, i in zip(top.values.tolist(), top.indices.tolist())],
        routing=routing,
    )


# ---- Rendering: terminal, HTML ----------------------------------------------------------------------------------

def explain_loss(result: TraceResult) -> list[str]:
    """What the mean loss means, and why an untrained model's loss is about ln V."""
    ln_v = math.log(result.vocab_size)
    lines = [f"A model that gives all V = {result.vocab_size:,} tokens the same probability 1/V has loss "
             f"−ln(1/V) = ln V = {ln_v:.4f} nats."]
    if abs(result.loss_before - ln_v) < 0.05 * ln_v:
        lines.append(f"This loss ({result.loss_before:.4f}) is within 5% of ln V: the model is untrained (or nearly). "
                     "Its weights are small random numbers, so its logits are all close to 0 and softmax turns them "
                     "into almost equal probabilities, p ≈ 1/V = {:.2e} for every token, whichever came next."
                     .format(1 / result.vocab_size))
    else:
        lines.append(f"This loss ({result.loss_before:.4f}) is {ln_v - result.loss_before:.4f} nats below ln V: on "
                     f"average (a geometric mean) the model gives the actual next token p = e^(−loss) = "
                     f"{math.exp(-result.loss_before):.2e}, {math.exp(ln_v - result.loss_before):,.1f}× the "
                     "uniform 1/V.")
    return lines


class Style:
    """ANSI colour when writing to a terminal that wants it (https://no-color.org), else plain text."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def _wrap(self, code: str, text: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.enabled else text

    def bold(self, text: str) -> str:
        return self._wrap("1", text)

    def good(self, text: str) -> str:
        return self._wrap("32", text)

    def bad(self, text: str) -> str:
        return self._wrap("31", text)


def shown(text: str, width: int = 0) -> str:
    """A token or prefix as a Python string literal (so spaces and newlines are visible), cut from the left."""
    literal = repr(text)
    if width and len(literal) > width:
        literal = "…" + literal[-(width - 1):]
    return literal


def matrix_lines(result: TraceResult) -> list[str]:
    """Muon's matrices as a table: each one's gradient and step by their largest and smallest singular values."""
    if not result.matrices:
        return []
    lines = ["Each hidden matrix by the singular values σ of its gradient and its step (the largest … the r-th, r the "
             "gradient's rank, and their ratio). The gradient's spread widely; Muon's step is the gradient "
             "orthogonalised, each of those σ about 1, times the matrix's rate muon_lr·√max(1, rows/columns) (plus "
             "a small weight decay), so the step's sit close to that rate:",
             f"{'matrix':<26}  {'shape':>9}  {'r':>3}  {'gradient σ':<30}  {'step σ':<30}  rate"]
    for m in result.matrices:
        spread = [f"{high:.3g} … {low:.3g} ({high / low:,.1f}×)" for high, low in (m.gradient_sigma, m.step_sigma)]
        lines.append(f"{m.name:<26}  {m.shape[0]:>4}×{m.shape[1]:<4}  {m.rank:>3}  {spread[0]:<30}  {spread[1]:<30}  "
                     f"{m.rate:.3g}")
    return lines


def routing_text(routing: list[Routing]) -> str:
    """'1: 3×0.62 5×0.38  3: 0×0.55' — each sparse block's chosen experts and weights."""
    return "  ".join(f"{r.block}: " + " ".join(f"{e}×{w:.2f}" for e, w in zip(r.experts, r.weights))
                     for r in routing)


def inside_lines(result: TraceResult) -> list[str]:
    """The network's optional parts at the shown position, each with its numbers; empty when none is on."""
    inside = result.inside
    if inside is None:
        return []
    token = result.tokens[inside.position]
    lines = []
    if inside.embedding_norm:
        e = inside.embedding_norm
        lines += ["Embedding norm: the embedding is RMS-normalised before the first block. Its RMS at this position, "
                  f"as looked up → normalised: {e.raw_before:.4g} → {e.normed_before:.4g} (after the step: "
                  f"{e.raw_after:.4g} → {e.normed_after:.4g})", ""]
    if inside.value_embeddings:
        lines += [f"Value embeddings: in these blocks attention's values are v = W_v·x + ve[token], ve[token] being "
                  f"the row of {shown(token.text)} (id {token.id}) in the block's own table. Their sizes (L2 norms), "
                  "and the table's share of the two:",
                  f"{'block':>5}  {'‖ve[token]‖':>11}  {'‖W_v·x‖':>9}  {'share':>6}  "
                  "after the step: ‖ve‖, ‖W_v·x‖"]
        for v in inside.value_embeddings:
            share = v.table_before / (v.table_before + v.computed_before)
            lines.append(f"{v.block:>5}  {v.table_before:>11.4g}  {v.computed_before:>9.4g}  {share:>6.1%}  "
                         f"{v.table_after:.4g}, {v.computed_after:.4g}")
        lines.append("")
    if inside.residual_scalars:
        lines += ["Residual scalars: before block i, x = resid_scale·x + x0_scale·x0 (x0: the embedding's output)",
                  f"{'block':>5}  {'resid_scale before → after':<28}  x0_scale before → after"]
        lines += [f"{r.block:>5}  {f'{r.resid_before:.6g} → {r.resid_after:.6g}':<28}  "
                  f"{r.x0_before:.6g} → {r.x0_after:.6g}" for r in inside.residual_scalars]
        lines.append("")
    if inside.capped_logits:
        lines += [f"Logit soft-cap: each logit becomes cap·tanh(raw / cap), cap = {inside.softcap:g}, before the "
                  "softmax (the target first, then the top predictions):",
                  f"{'token':<16}  {'raw logit':>10}  {'capped':>10}"]
        lines += [f"{shown(c.text, 16):<16}  {c.raw:>10.4f}  {c.capped:>10.4f}" for c in inside.capped_logits]
        lines.append("")
    if inside.document:
        d = inside.document
        hidden = f"; positions 0 to {d.start - 1} belong to earlier documents and are masked" if d.start else ""
        lines += [f"Document masking: attention stays within a document (the end-of-document token is id "
                  f"{d.end_token}). This position's document starts at position {d.start}, so it attends to "
                  f"positions {d.visible[0]} to {d.visible[-1]}{hidden}.", ""]
    return lines[:-1]


def render_text(result: TraceResult, style: Style | None = None) -> str:
    s = style or Style(False)
    r = result
    bits = lambda nats: nats / math.log(2)  # noqa: E731
    out = [s.bold(f"One training step on {len(r.tokens)} tokens, {r.optimizer.upper()} with {r.rates}"), ""]

    out.append(s.bold(f"1. The text as tokens ({len(r.tokens)} tokens from a vocabulary of {r.vocab_size:,})"))
    out.append(f"   {'#':>4}  {'id':>7}  token")
    out += [f"   {i:>4}  {tok.id:>7}  {shown(tok.text)}" for i, tok in enumerate(r.tokens)]
    out.append("")

    out.append(s.bold("2. At each position the model sees a prefix and predicts the next token"))
    routed = bool(r.positions[0].routing)
    experts_width = max((len(routing_text(pos.routing)) for pos in r.shown_positions), default=0)
    experts_header = f"  {'experts (block: expert×weight)':<{experts_width}}" if routed else ""
    out.append(f"   {'pos':>4}  {'prefix (what the model sees)':<32}  {'actual next':<14}  {'p':>9}  "
               f"{'−ln p':>7}  {'bits':>6}{experts_header}  top {len(r.positions[0].top_k)} predictions")
    for pos in r.shown_positions:
        top = ", ".join(f"{shown(c.text)} {c.p:.3g}" for c in pos.top_k)
        experts = f"  {routing_text(pos.routing):<{experts_width}}" if routed else ""
        out.append(f"   {pos.index:>4}  {shown(pos.prefix, 32):<32}  {shown(pos.target.text, 14):<14}  "
                   f"{pos.p_before:>9.3g}  {pos.loss_before:>7.4f}  {bits(pos.loss_before):>6.2f}{experts}  {top}")
    out.append("   loss = −ln p in nats (natural log); bits = −log₂ p = nats / ln 2")
    if routed:
        out.append("   experts: in each sparse block, the experts the router sent this position to, each × its weight")
    out.append("")

    out.append(s.bold(f"3. The loss of this batch: the mean over {len(r.positions)} positions = "
                      f"{r.loss_before:.4f} nats ({bits(r.loss_before):.4f} bits)"))
    out.append("   This is F.cross_entropy(logits, targets), the number the training loop computes and logs.")
    out += [f"   {line}" for line in explain_loss(r)]
    out.append("")

    out.append(s.bold(f"4. One optimizer step: {RULES[r.optimizer]}"))
    out.append(f"   gradient norm ‖∇θ‖ = {r.grad_norm:.4g}")
    out.append(f"   update size ‖Δθ‖/‖θ‖ = {r.update_ratio:.3g}: the weights moved by {100 * r.update_ratio:.3g}% "
               "of their size")
    out += [f"   {line}" for line in matrix_lines(r)]
    out.append("")

    out.append(s.bold("5. The same prediction after the step"))
    out.append(f"   {'pos':>4}  {'actual next':<14}  {'p before → after':<23}  loss before → after")
    for pos in r.shown_positions:
        change = s.good if pos.loss_after < pos.loss_before else s.bad
        out.append(f"   {pos.index:>4}  {shown(pos.target.text, 14):<14}  "
                   + change(f"{pos.p_before:<10.4g} → {pos.p_after:<10.4g}  {pos.loss_before:.4f} → "
                            f"{pos.loss_after:.4f}"))
    delta = r.loss_after - r.loss_before
    summary = (f"   mean loss {r.loss_before:.4f} → {r.loss_after:.4f} ({delta:+.4f} nats); "
               f"{r.improved} of {len(r.positions)} positions improved")
    out.append((s.good if delta < 0 else s.bad)(summary))
    inside = inside_lines(r)
    if inside:
        out += ["", s.bold(f"6. Inside the network at position {r.inside.position} (the options this model has on)")]
        out += [f"   {line}" if line else "" for line in inside]
    return "\n".join(out)


PAGE_CSS = """
body { font: 15px/1.5 system-ui, sans-serif; max-width: 70em; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
.text { font: 16px/2.2 ui-monospace, monospace; white-space: pre-wrap; border: 1px solid #ddd; padding: .5em; }
.tok { border-radius: 3px; padding: 2px 0; border-right: 1px solid #fff; }
table { border-collapse: collapse; font-size: 14px; } td, th { padding: 2px 8px; text-align: left; }
th { border-bottom: 1px solid #999; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
code { white-space: pre; } .better { color: #080; } .worse { color: #b00; } .note { color: #555; }
"""


def _loss_colour(loss: float, scale: float) -> str:
    """White at loss 0, deep red at `scale` nats and above."""
    level = min(max(loss / scale, 0.0), 1.0)
    return f"hsl(0, 85%, {100 - 45 * level:.0f}%)"


def _coloured_text(result: TraceResult, when: str, scale: float) -> str:
    spans = [f'<span class="tok" style="background:#eee" title="first token: nothing to predict it from">'
             f"{html.escape(result.tokens[0].text)}</span>"]
    for pos in result.positions:
        p, loss = (pos.p_before, pos.loss_before) if when == "before" else (pos.p_after, pos.loss_after)
        spans.append(f'<span class="tok" style="background:{_loss_colour(loss, scale)}" '
                     f'title="p = {p:.4g}, loss = {loss:.4f} nats">{html.escape(pos.target.text)}</span>')
    return f'<div class="text">{"".join(spans)}</div>'


def render_html(result: TraceResult) -> str:
    """One self-contained page: the text coloured by per-token loss before and after, and the tables."""
    r = result
    scale = max(math.log(r.vocab_size), 1e-9)
    esc = html.escape
    token_rows = "".join(f'<tr><td class="num">{i}</td><td class="num">{t.id}</td><td><code>{esc(shown(t.text))}'
                         "</code></td></tr>" for i, t in enumerate(r.tokens))
    position_rows = []
    for pos in r.shown_positions:
        top = ", ".join(f"<code>{esc(shown(c.text))}</code> {c.p:.3g}" for c in pos.top_k)
        verdict = "better" if pos.loss_after < pos.loss_before else "worse"
        position_rows.append(
            f'<tr><td class="num">{pos.index}</td><td><code>{esc(shown(pos.prefix, 40))}</code></td>'
            f"<td><code>{esc(shown(pos.target.text))}</code></td><td>{top}</td>"
            f"<td>{esc(routing_text(pos.routing))}</td>"
            f'<td class="num">{pos.p_before:.4g}</td><td class="num">{pos.loss_before:.4f}</td>'
            f'<td class="num {verdict}">{pos.p_after:.4g}</td><td class="num {verdict}">{pos.loss_after:.4f}</td></tr>')
    rule = RULES[r.optimizer]
    explanation = "".join(f"<p>{esc(line)}</p>" for line in explain_loss(r))
    matrices = matrix_lines(r)
    matrix_table = f"<p>{esc(matrices[0])}</p><pre>{esc(chr(10).join(matrices[1:]))}</pre>" if matrices else ""
    inside = inside_lines(r)
    inside_section = (f"<h2>Inside the network at position {r.inside.position}</h2>\n<pre>{esc(chr(10).join(inside))}"
                      "</pre>") if inside else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>nextword trace</title><style>{PAGE_CSS}</style></head>
<body>
<h1>One training step on {len(r.tokens)} tokens ({r.optimizer.upper()}, {esc(r.rates)})</h1>
<p class="note">Each token is coloured by its loss −ln p (white: 0; deep red: ln V = {scale:.2f} nats or more).
Hover over a token for its numbers.</p>
<h2>Before the step: mean loss {r.loss_before:.4f} nats</h2>
{_coloured_text(r, "before", scale)}
<h2>After the step: mean loss {r.loss_after:.4f} nats ({r.improved} of {len(r.positions)} positions improved)</h2>
{_coloured_text(r, "after", scale)}
<h2>What the loss means</h2>
<p>The mean of the per-position losses is F.cross_entropy(logits, targets), the training loss of this batch.</p>
{explanation}
<h2>The step: {esc(rule)}</h2>
<p>Gradient norm ‖∇θ‖ = {r.grad_norm:.4g}; update size ‖Δθ‖/‖θ‖ = {r.update_ratio:.3g}.</p>
{matrix_table}
<h2>Each position</h2>
<table><tr><th>pos</th><th>prefix</th><th>actual next</th><th>top predictions (before)</th>
<th>experts (block: expert×weight)</th><th>p before</th>
<th>loss before</th><th>p after</th><th>loss after</th></tr>
{"".join(position_rows)}</table>
{inside_section}
<h2>The tokens</h2>
<table><tr><th>#</th><th>id</th><th>token</th></tr>{token_rows}</table>
</body></html>
"""
