"""Downstream tasks: a multiple-choice and a LAMBADA-style last-word task, each a local lm-eval YAML over a JSONL
file written here, scored three ways that must agree: nextword's harness model, a sum by hand of nextword's own
log-probabilities, and lm-eval's Hugging Face model on `nextword export`'s directory. Nothing is downloaded."""

import json
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from families import llama3_tokenizer  # noqa: E402

from nextword import cli  # noqa: E402
from nextword.config import ModelConfig, RunConfig  # noqa: E402
from nextword.data.tokenizer import Tokenizer  # noqa: E402
from nextword.model import GPT  # noqa: E402
from nextword.tools.downstream import RESULTS_FILE, read_results, run_tasks  # noqa: E402

pytest.importorskip("lm_eval")

CONTEXT = 24  # tokens: the longest question below does not fit, so its context is cut from the left

PASSAGES = [
    "the cat sat on the mat and the dog sat on the log",
    "two plus two is four and three plus three is six",
    "the sun rises in the east and sets in the west",
    "bread is made from flour and water and salt",
    "the river runs down the hill to the sea",
    "a red apple fell from the old tree",
]
# The model is trained on PASSAGES; each task also holds an example whose answer it has never seen.
UNSEEN_PASSAGE = "a blue whale swims in the deep cold ocean"
QUESTIONS = [
    {"question": "the cat sat on the", "choices": ["mat", "sea", "west"], "label": 0},
    {"question": "the cat sat on the", "choices": ["mat", "whale"], "label": 1},
    {"question": "two plus two is", "choices": ["six", "four", "salt"], "label": 1},
    {"question": "the sun rises in the", "choices": ["hill", "tree", "east", "log"], "label": 2},
    {"question": "bread is made from", "choices": ["flour", "apples"], "label": 0},
    {"question": "the river runs down the hill to the sea and the sun rises in the east and sets in the west, "
                 "and a red apple fell from the old", "choices": ["tree", "cat", "water"], "label": 0},
]

MULTIPLE_CHOICE_YAML = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}"}}
  cache_dir: "{cache}"
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
# As lm-eval's lambada_openai: the passage without its last word, then that word after a space.
LAST_WORD_YAML = """\
task: tiny_last_word
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}"}}
  cache_dir: "{cache}"
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small run fastest on one thread, and far slower on two when another process shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tasks(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("tasks")
    cache = folder / "datasets-cache"
    for name, rows, template in (("choice", QUESTIONS, MULTIPLE_CHOICE_YAML),
                                 ("last_word", [{"text": p} for p in PASSAGES + [UNSEEN_PASSAGE]], LAST_WORD_YAML)):
        data = folder / f"{name}.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
        (folder / f"{name}.yaml").write_text(template.format(data=data, cache=cache), encoding="utf-8")
    return [str(folder / "choice.yaml"), str(folder / "last_word.yaml")]


def fitted_model(tokenizer: Tokenizer, arch: str, steps: int = 300) -> GPT:
    """A tiny model trained a little on the passages, so that it prefers some answers and the figures say
    something: documents as the shard writer lays them out, each after the token a document follows."""
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, n_layers=2, d_model=48, n_heads=2, context=CONTEXT, vocab_size=tokenizer.vocab_size,
                      tie_embeddings=True, embedding_norm=False)  # a network transformers has built in
    model = GPT(cfg)
    stream = []
    for passage in PASSAGES:
        stream += tokenizer.document_start + tokenizer.encode(passage) + [tokenizer.eos_id]
    stream = torch.tensor(stream * 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - CONTEXT - 1, (8,), generator=generator)
        x = torch.stack([stream[s: s + CONTEXT] for s in starts])
        y = torch.stack([stream[s + 1: s + CONTEXT + 1] for s in starts])
        optimizer.zero_grad()
        model(x, y).backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module", params=["gpt2", "llama-with-bos"])
def family(request, tmp_path_factory) -> tuple[GPT, Tokenizer]:
    """nextword's own tokenizer (no beginning token), and a Llama 3-style one that begins every document with
    <|begin_of_text|>."""
    if request.param == "gpt2":
        tokenizer = Tokenizer.train(PASSAGES * 5, vocab_size=300)
        return fitted_model(tokenizer, "gpt2"), tokenizer
    tokenizer = Tokenizer.load(llama3_tokenizer(tmp_path_factory.mktemp("llama3")))
    assert tokenizer.document_start == [tokenizer.bos_id]
    return fitted_model(tokenizer, "llama"), tokenizer


def logprob_by_hand(model: GPT, tokenizer: Tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) from the model's logits over the whole text: the continuation's tokens are
    those the whole text has past the context's own (a document-start token first where the family has one),
    and the text keeps its last context + 1 tokens."""
    whole = tokenizer.document_start + tokenizer.encode(context + continuation)
    n_continuation = len(whole) - len(tokenizer.document_start + tokenizer.encode(context))
    ids = torch.tensor(whole[-(CONTEXT + 1):])
    with torch.no_grad():
        logprobs = F.log_softmax(model(ids[None, :-1])[0].double(), dim=-1)
    rows = range(len(ids) - 1 - n_continuation, len(ids) - 1)
    total = sum(logprobs[i, ids[i + 1]].item() for i in rows)
    greedy = all(logprobs[i].argmax().item() == ids[i + 1].item() for i in rows)
    return total, greedy


@pytest.fixture(scope="module")
def scored(family, tasks) -> dict:
    """lm-eval's results of both tasks on the family's model, with every example's requests and answers."""
    model, tokenizer = family
    return run_tasks(model, tokenizer, tasks, keep_samples=True)


def test_figures_match_a_sum_by_hand_of_the_models_log_probabilities(family, scored):
    model, tokenizer = family
    long = QUESTIONS[-1]  # too long for the model's window with its answer: scored from its last tokens
    assert len(tokenizer.document_start + tokenizer.encode(f"{long['question']} {long['choices'][0]}")) > CONTEXT + 1
    results = scored

    correct = []
    for sample in results["samples"]["tiny_choice"]:
        ours = [response[0] for response in sample["resps"]]
        by_hand = [logprob_by_hand(model, tokenizer, *arguments) for arguments in sample["arguments"]]
        assert [logprob for logprob, _ in ours] == pytest.approx([logprob for logprob, _ in by_hand], abs=1e-4)
        correct.append(max(range(len(by_hand)), key=lambda i: by_hand[i][0]) == sample["doc"]["label"])
    assert len(correct) == len(QUESTIONS)
    assert results["results"]["tiny_choice"]["acc,none"] == pytest.approx(sum(correct) / len(correct))

    lls, greedy = [], []
    for sample in results["samples"]["tiny_last_word"]:
        (context, word), = sample["arguments"]
        assert context + word == sample["doc"]["text"] and word.startswith(" ")
        (ours,), by_hand = sample["resps"][0], logprob_by_hand(model, tokenizer, context, word)
        assert ours[0] == pytest.approx(by_hand[0], abs=1e-4) and ours[1] == by_hand[1]
        lls.append(by_hand[0])
        greedy.append(by_hand[1])
    figures = results["results"]["tiny_last_word"]
    assert figures["acc,none"] == pytest.approx(sum(greedy) / len(greedy))
    assert figures["perplexity,none"] == pytest.approx(math.exp(-sum(lls) / len(lls)), rel=1e-4)
    # The fitted model gets some right and some wrong: the figures are not a trivial 0 or 1.
    assert 0 < sum(correct) < len(correct) and 0 < sum(greedy) < len(greedy)


def test_lm_eval_on_the_exported_model_gives_the_same_figures(family, tasks, scored, tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    import lm_eval
    from lm_eval.tasks import TaskManager

    from lm_eval.models.huggingface import HFLM

    from nextword.tools.export import export_model

    model, tokenizer = family
    ours = scored
    out = export_model(model, tokenizer, tmp_path / "hf")
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    # A family with a beginning token: lm-eval is asked to add it (--model_args pretrained=OUT,add_bos_token=True,
    # which goes to the tokenizer as here), as for any model whose tokenizer does not add it by itself.
    add_bos = bool(tokenizer.document_start) or None
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, **({"add_bos_token": True} if add_bos else {}))
    hflm = HFLM(pretrained=hf_model, tokenizer=hf_tokenizer, batch_size=4, add_bos_token=add_bos)
    theirs = lm_eval.simple_evaluate(model=hflm, tasks=tasks, task_manager=TaskManager(include_defaults=False))
    for task in ("tiny_choice", "tiny_last_word"):
        for a, b in zip(ours["samples"][task], theirs["samples"][task], strict=True):
            assert a["arguments"] == b["arguments"]
            assert [r[0][0] for r in a["resps"]] == pytest.approx([r[0][0] for r in b["resps"]], abs=1e-4)
            assert [r[0][1] for r in a["resps"]] == [r[0][1] for r in b["resps"]]
        for metric in ("acc,none", "acc_norm,none", "perplexity,none"):
            if metric in ours["results"][task]:
                assert ours["results"][task][metric] == pytest.approx(theirs["results"][task][metric], rel=1e-4)


@pytest.mark.parametrize("batch_size", [1, 3, 64])
def test_scoring_from_a_shared_cache_equals_scoring_each_text_whole(batch_size):
    """Continuations that share a context are scored from one KV cache, several to a forward; each must get what
    one forward over its own context and continuation gives, whether batches are small or large and whether
    the context is cut to fit the window."""
    from nextword.tools.harness import score_continuations

    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=2, d_model=32, n_heads=2, context=12, vocab_size=50, init_std=0.3)).eval()
    generator = torch.Generator().manual_seed(1)

    def ids(n):
        return torch.randint(0, 50, (n,), generator=generator).tolist()

    shared, long = ids(5), ids(20)
    pairs = [(shared, ids(1)), (shared, ids(3)), (shared, ids(6)), (ids(5), ids(2)), (long, ids(4)), (long, ids(12)),
             ([7], ids(11))]
    expected = []
    with torch.no_grad():
        for context, continuation in pairs:
            text = torch.tensor((context + continuation)[-13:])
            logprobs = F.log_softmax(model(text[None, :-1])[0], dim=-1)[-len(continuation):]
            target = torch.tensor(continuation)
            expected.append((logprobs.gather(1, target[:, None]).sum().item(),
                             bool((logprobs.argmax(-1) == target).all())))
    scores = score_continuations(model, pairs, batch_size)
    assert [s for s, _ in scores] == pytest.approx([s for s, _ in expected], abs=1e-4)
    assert [g for _, g in scores] == [g for _, g in expected]


def test_a_continuation_longer_than_the_window_is_refused_in_one_line():
    from nextword.errors import DataError
    from nextword.tools.harness import score_continuations

    model = GPT(ModelConfig(n_layers=1, d_model=16, n_heads=2, context=8, vocab_size=20)).eval()
    with pytest.raises(DataError, match="1 to 8"):
        score_continuations(model, [([1, 2], list(range(9)))])


@pytest.fixture
def run_dir(tmp_path):
    """A run directory holding an untrained model as its checkpoint at step 7."""
    from nextword.training.checkpoint import save_checkpoint

    tokenizer = Tokenizer.train(PASSAGES * 5, vocab_size=300)
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=1, d_model=32, n_heads=2, context=CONTEXT, vocab_size=tokenizer.vocab_size))
    cfg = RunConfig()
    cfg.model = model.cfg
    run = tmp_path / "run"
    run.mkdir()
    cfg.save(run / "config.toml")
    tokenizer.save(run / "tokenizer.json")
    save_checkpoint(run, 7, model, torch.optim.AdamW(model.parameters()), {"step": 7}, cfg, tokenizer.hash,
                    keep_last=1)
    (run / "log.jsonl").write_text(json.dumps({"kind": "run", "time": 0.0, "device": "cpu"}) + "\n")
    return run


def test_eval_tasks_prints_a_table_saves_the_results_and_the_report_shows_them(run_dir, tasks, capsys):
    assert cli.main(["eval", str(run_dir), "--tasks", ",".join(tasks), "--limit", "3", "--num-fewshot", "1"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["task", "metric", "value", "stderr", "few-shot", "examples"]
    rows = read_results(run_dir)
    assert {(r["task"], r["metric"]) for r in rows} == {
        ("tiny_choice", "acc"), ("tiny_choice", "acc_norm"), ("tiny_last_word", "perplexity"),
        ("tiny_last_word", "acc")}
    assert all(r["num_fewshot"] == 1 and r["examples"] == 3 and r["step"] == 7 and r["limit"] == 3 for r in rows)
    for r in rows:
        assert f"{r['task']}" in out and f"{r['value']:.4f}" in out

    # Run again with another few-shot count: both are kept; the same count again replaces its rows.
    assert cli.main(["eval", str(run_dir), "--tasks", tasks[0], "--limit", "2", "--num-fewshot", "0"]) == 0
    assert cli.main(["eval", str(run_dir), "--tasks", tasks[0], "--limit", "2", "--num-fewshot", "0"]) == 0
    rows = read_results(run_dir)
    assert sorted((r["task"], r["num_fewshot"]) for r in rows if r["metric"] == "acc") == [
        ("tiny_choice", 0), ("tiny_choice", 1), ("tiny_last_word", 1)]

    assert cli.main(["report", str(run_dir)]) == 0
    page = (run_dir / "report" / "index.html").read_text()
    assert "<h2>Downstream tasks</h2>" in page and page.count("<td>tiny_choice</td>") == 4


def test_a_report_without_downstream_results_has_no_such_section(run_dir):
    assert not (run_dir / RESULTS_FILE).exists()
    assert cli.main(["report", str(run_dir)]) == 0
    assert "Downstream" not in (run_dir / "report" / "index.html").read_text()


def test_without_lm_eval_one_line_names_the_extra_to_install(run_dir, tasks, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what an environment without the package imports
    assert cli.main(["eval", str(run_dir), "--tasks", tasks[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "nextword eval: downstream tasks need lm-evaluation-harness: pip install 'nextword[downstream]'"


@pytest.mark.parametrize("tasks_flag, message", [
    ("no_such_dir/missing.yaml", "no_such_dir/missing.yaml: no such task file"),
    (",", "--tasks is empty"),
])
def test_tasks_that_cannot_run_are_one_line_errors(run_dir, tasks_flag, message, capsys):
    assert cli.main(["eval", str(run_dir), "--tasks", tasks_flag]) == 2
    assert message in capsys.readouterr().err


def test_eval_tasks_in_the_config_run_once_training_ends(tmp_path, tasks, monkeypatch, capsys):
    """[eval] tasks: checked before training (a missing task file stops it before any step), then scored on the
    final checkpoint and saved with the run."""
    monkeypatch.setenv("NEXTWORD_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(20):
        (corpus / f"doc_{i}.txt").write_text(" ".join(PASSAGES[(i + j) % len(PASSAGES)] for j in range(12)) + "\n")
    cfg = RunConfig()
    cfg.model.n_layers, cfg.model.d_model, cfg.model.n_heads, cfg.model.context = 1, 32, 2, CONTEXT
    cfg.data.sources, cfg.data.vocab_size, cfg.data.data_dir = [str(corpus)], 300, str(tmp_path / "data")
    cfg.train.run_dir, cfg.train.micro_batch, cfg.train.steps = str(tmp_path / "run"), 4, 3
    cfg.train.precision, cfg.train.compile, cfg.train.threads = "fp32", "off", 1
    cfg.eval.batches, cfg.eval.sample_tokens, cfg.eval.prompts = 1, 4, ["the "]
    cfg.eval.tasks, cfg.eval.task_limit = [str(tmp_path / "missing.yaml")], 2
    cfg.save(tmp_path / "missing.toml")
    assert cli.main(["train", "--config", str(tmp_path / "missing.toml"), "--quiet"]) == 2
    assert "missing.yaml: no such task file" in capsys.readouterr().err
    assert not (tmp_path / "run" / "checkpoints").exists()

    cfg.eval.tasks = [tasks[0]]
    cfg.save(tmp_path / "run.toml")
    assert cli.main(["train", "--config", str(tmp_path / "run.toml"), "--quiet"]) == 0
    assert "downstream tasks: " in capsys.readouterr().out
    rows = read_results(tmp_path / "run")
    assert [(r["task"], r["metric"], r["step"], r["examples"]) for r in rows] == [
        ("tiny_choice", "acc", 3, 2), ("tiny_choice", "acc_norm", 3, 2)]


GENERATE_YAML = """\
task: tiny_generate
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}"}}
  cache_dir: "{cache}"
test_split: test
output_type: generate_until
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
generation_kwargs:
  until: [" and", "\\\\n"]
  max_gen_toks: 5
metric_list:
  - metric: exact_match
"""


def test_generated_answers_are_the_greedy_tokens_cut_at_the_first_stop(family, tmp_path):
    model, tokenizer = family
    data = tmp_path / "generate.jsonl"
    data.write_text("".join(json.dumps({"text": p}) + "\n" for p in PASSAGES), encoding="utf-8")
    task = tmp_path / "generate.yaml"
    task.write_text(GENERATE_YAML.format(data=data, cache=tmp_path / "cache"), encoding="utf-8")
    results = run_tasks(model, tokenizer, [str(task)], keep_samples=True)

    exact = []
    for sample in results["samples"]["tiny_generate"]:
        (context, settings), = sample["arguments"]
        ids = tokenizer.document_start + tokenizer.encode(context)
        new = []
        with torch.no_grad():
            for _ in range(5):
                token = model(torch.tensor(ids[-CONTEXT:])[None])[0, -1].argmax().item()
                if token == tokenizer.eos_id:
                    break
                ids.append(token)
                new.append(token)
        text = tokenizer.decode(new)
        for stop in (" and", "\n"):
            text = text.split(stop)[0]
        assert sample["resps"][0][0] == text
        exact.append(text == sample["target"])
    assert any(exact), "the fitted model completes some passages, so the figure is not a trivial 0"
    assert results["results"]["tiny_generate"]["exact_match,none"] == pytest.approx(sum(exact) / len(exact))


ROLLING_YAML = """\
task: tiny_rolling
dataset_path: json
dataset_kwargs:
  data_files: {{test: "{data}"}}
  cache_dir: "{cache}"
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
"""


def whole_text_by_hand(model: GPT, tokenizer: Tokenizer, text: str) -> float:
    """log p(text): every token, the first after the token a document follows, in windows of CONTEXT tokens, the
    last of which reaches back to a whole window of context."""
    ids = tokenizer.before_text + tokenizer.encode(text)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, CONTEXT):
            end = min(start + CONTEXT, len(ids) - 1)  # predicts ids[start + 1: end + 1]
            first = max(0, end - CONTEXT)
            logprobs = F.log_softmax(model(torch.tensor(ids[first:end])[None])[0].double(), dim=-1)
            targets = ids[start + 1: end + 1]
            total += sum(logprobs[len(logprobs) - len(targets) + i, t].item() for i, t in enumerate(targets))
    return total


def test_a_whole_text_is_scored_in_windows_as_nextword_eval_text_does(family, tmp_path):
    """A perplexity task (as WikiText): each text's log-likelihood summed over windows of the model's context;
    a text that fits one window gets the loss `nextword eval --text` takes over it. Bits per byte is the same
    figure in both."""
    from nextword.tools.evaluate import evaluate_text

    model, tokenizer = family
    texts = ["the cat sat on the mat", "a blue whale", QUESTIONS[-1]["question"]]
    assert all(len(tokenizer.encode(text)) <= CONTEXT for text in texts[:2])  # one window each
    assert len(tokenizer.encode(texts[-1])) > 2 * CONTEXT  # and the last one three
    data = tmp_path / "rolling.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    task = tmp_path / "rolling.yaml"
    task.write_text(ROLLING_YAML.format(data=data, cache=tmp_path / "cache"), encoding="utf-8")
    results = run_tasks(model, tokenizer, [str(task)], keep_samples=True)

    logprobs = [sample["resps"][0][0] for sample in results["samples"]["tiny_rolling"]]
    assert logprobs == pytest.approx([whole_text_by_hand(model, tokenizer, t) for t in texts], rel=1e-5)
    for logprob, text in zip(logprobs[:2], texts[:2]):
        figures = evaluate_text(model, tokenizer, text, CONTEXT, "cpu")
        assert -logprob == pytest.approx(figures["loss"] * figures["tokens"], rel=1e-5)
    total_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert results["results"]["tiny_rolling"]["bits_per_byte,none"] == pytest.approx(
        -sum(logprobs) / (total_bytes * math.log(2)), rel=1e-6)
