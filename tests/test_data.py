"""dsrl.data_prep (GSM8K in verl's schema) and dsrl.data (reading, batching and prompt encoding)."""

import ast
import json
import operator
import re
import sys
from pathlib import Path

import pandas as pd
import pytest

from dsrl.data import REQUIRED_COLUMNS, PromptBatcher, encode_prompts, read_prompts
from dsrl.data_prep import INSTRUCTION, main_prepare, prepare_gsm8k, read_gsm8k_jsonl, synthetic_gsm8k, to_verl_rows

REAL_GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _arith(expr: str) -> float:
    """Evaluate +-*/ arithmetic independently of the generator."""

    def walk(node: ast.AST) -> float:
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant):
            return node.value
        raise AssertionError(f"unexpected syntax in {expr!r}")

    return walk(ast.parse(expr, mode="eval").body)


def _write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _gsm8k_dir(tmp_path: Path, n_train: int = 5, n_test: int = 3) -> Path:
    rows = synthetic_gsm8k(n_train + n_test, seed=7)
    tmp_path.mkdir(parents=True, exist_ok=True)
    _write_jsonl(tmp_path / "train.jsonl", rows[:n_train])
    _write_jsonl(tmp_path / "test.jsonl", rows[n_train:])
    return tmp_path


def test_synthetic_is_deterministic_and_seed_dependent():
    assert synthetic_gsm8k(20, seed=3) == synthetic_gsm8k(20, seed=3)
    assert synthetic_gsm8k(20, seed=3) != synthetic_gsm8k(20, seed=4)
    assert synthetic_gsm8k(5, seed=3) == synthetic_gsm8k(20, seed=3)[:5]


def test_synthetic_answers_are_correct_and_in_gsm8k_format():
    rows = synthetic_gsm8k(200, seed=0)
    op_patterns = set()
    for row in rows:
        lines = row["answer"].split("\n")
        assert len(lines) >= 3 and lines[-1].startswith("#### ")
        final = int(lines[-1][len("#### ") :].replace(",", ""))
        annotations = re.findall(r"<<([^=>]+)=([^>]+)>>", row["answer"])
        assert len(annotations) == len(lines) - 1
        for expr, result in annotations:
            assert _arith(expr) == float(result), row["answer"]
        assert float(annotations[-1][1]) == final
        op_patterns.add(tuple(re.sub(r"[\d.]", "", expr) for expr, _ in annotations))
    assert len(op_patterns) >= 4, op_patterns
    assert len({row["question"] for row in rows}) > 190


def test_read_gsm8k_jsonl_reads_rows(tmp_path):
    rows = synthetic_gsm8k(3, seed=1)
    path = _write_jsonl(tmp_path / "x.jsonl", [{**rows[0], "extra": 1}, *rows[1:]])
    path.write_text(path.read_text() + "\n")
    assert read_gsm8k_jsonl(path) == rows


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"question": "q", "answer": "#### 1"}\n{not json\n', r"x\.jsonl:2: not valid JSON"),
        ('{"question": "q"}\n', r"x\.jsonl:1: .*missing \['answer'\]"),
        ('["q", "a"]\n', r"x\.jsonl:1: expected a JSON object"),
        ('{"question": "q", "answer": "it is 5"}\n', r"x\.jsonl:1: answer has no '#### '"),
    ],
)
def test_read_gsm8k_jsonl_errors(tmp_path, content, match):
    path = tmp_path / "x.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_gsm8k_jsonl(path)


def test_read_gsm8k_jsonl_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_gsm8k_jsonl(tmp_path / "nope.jsonl")


def test_to_verl_rows_schema():
    rows = [
        {"question": "How many?", "answer": "2*540 = <<2*540=1080>>1080\n#### 1,080"},
        {"question": "And now?", "answer": "x\n#### -3"},
    ]
    out = to_verl_rows(rows, "test", "openai/gsm8k")
    assert out[0] == {
        "data_source": "openai/gsm8k",
        "prompt": [{"role": "user", "content": "How many? " + INSTRUCTION}],
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "1080"},
        "extra_info": {"split": "test", "index": 0, "answer": rows[0]["answer"], "question": "How many?"},
    }
    assert out[1]["reward_model"]["ground_truth"] == "-3" and out[1]["extra_info"]["index"] == 1
    assert INSTRUCTION == 'Let\'s think step by step and output the final answer after "####".'


def test_prepare_synthetic_roundtrip(tmp_path):
    train, test = prepare_gsm8k("synthetic", tmp_path / "out", train_size=12, test_size=4, seed=5)
    assert (train.name, test.name) == ("train.parquet", "test.parquet")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["test.parquet", "train.parquet"]
    train_rows, test_rows = read_prompts(train), read_prompts(test)
    assert (len(train_rows), len(test_rows)) == (12, 4)
    assert {r["data_source"] for r in train_rows + test_rows} == {"dsrl/synthetic_gsm8k"}
    assert [r["extra_info"]["split"] for r in test_rows] == ["test"] * 4
    expected = synthetic_gsm8k(16, seed=5)
    assert [r["extra_info"]["question"] for r in train_rows + test_rows] == [r["question"] for r in expected]
    again = prepare_gsm8k("synthetic", tmp_path / "again", train_size=12, test_size=4, seed=5)
    assert read_prompts(again[0]) == train_rows


def test_prepare_local_dir_sizes(tmp_path):
    src = _gsm8k_dir(tmp_path / "src")
    train, test = prepare_gsm8k(str(src), tmp_path / "all", train_size=None, test_size=None)
    assert (len(read_prompts(train)), len(read_prompts(test))) == (5, 3)
    assert read_prompts(train)[0]["data_source"] == "openai/gsm8k"
    train, _ = prepare_gsm8k(str(src), tmp_path / "two", train_size=2, test_size=1)
    assert [r["extra_info"]["question"] for r in read_prompts(train)] == [
        r["question"] for r in read_gsm8k_jsonl(src / "train.jsonl")[:2]
    ]
    with pytest.raises(ValueError, match="train_size=6 exceeds the 5 rows"):
        prepare_gsm8k(str(src), tmp_path / "big", train_size=6)
    with pytest.raises(ValueError, match="test_size must be a positive int"):
        prepare_gsm8k(str(src), tmp_path / "zero", test_size=0)


def test_prepare_defaults_keep_every_real_row_and_512_64_synthetic(tmp_path):
    src = _gsm8k_dir(tmp_path / "src")
    train, test = prepare_gsm8k(str(src), tmp_path / "real")
    assert (len(read_prompts(train)), len(read_prompts(test))) == (5, 3)
    train, test = prepare_gsm8k("synthetic", tmp_path / "synthetic")
    assert (len(read_prompts(train)), len(read_prompts(test))) == (512, 64)


def test_prepare_hub_without_datasets_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError, match="local directory .*'synthetic'"):
        prepare_gsm8k("openai/gsm8k", tmp_path / "out")


@pytest.mark.skipif(not REAL_GSM8K.is_dir(), reason="real GSM8K (../shared/data/gsm8k beside the checkout) is absent")
def test_prepare_real_gsm8k(tmp_path):
    train, test = prepare_gsm8k(str(REAL_GSM8K), tmp_path, train_size=None, test_size=None)
    train_rows, test_rows = read_prompts(train), read_prompts(test)
    assert (len(train_rows), len(test_rows)) == (7473, 1319)
    assert train_rows[0]["reward_model"]["ground_truth"] == "72"
    assert all(re.fullmatch(r"-?[\d.]+", r["reward_model"]["ground_truth"]) for r in train_rows + test_rows)


def test_read_prompts_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        read_prompts(tmp_path / "missing.parquet")
    partial = tmp_path / "partial.parquet"
    pd.DataFrame({"data_source": ["x"], "prompt": [[{"role": "user", "content": "q"}]]}).to_parquet(partial)
    missing = r"missing columns \['ability', 'reward_model', 'extra_info'\]"
    with pytest.raises(ValueError, match=missing) as err:
        read_prompts(partial)
    assert str(list(REQUIRED_COLUMNS)) in str(err.value)
    empty = tmp_path / "empty.parquet"
    pd.DataFrame({col: pd.Series([], dtype=object) for col in REQUIRED_COLUMNS}).to_parquet(empty)
    with pytest.raises(ValueError, match="empty.parquet: file has no rows"):
        read_prompts(empty)


def test_batcher_epochs_are_drop_last_permutations():
    batcher = PromptBatcher(num_rows=10, batch_size=3, seed=0)
    epochs = [[batcher.next_batch() for _ in range(3)] for _ in range(3)]
    for batches in epochs:
        flat = [i for b in batches for i in b]
        assert all(len(b) == 3 for b in batches)
        assert len(set(flat)) == 9 and set(flat) <= set(range(10))
    assert epochs[0] != epochs[1] != epochs[2]
    assert batcher.state_dict()["epoch"] == 2


def test_batcher_seed_and_shuffle():
    def take(b: PromptBatcher, n: int) -> list:
        return [b.next_batch() for _ in range(n)]

    assert take(PromptBatcher(20, 4, seed=1), 8) == take(PromptBatcher(20, 4, seed=1), 8)
    assert take(PromptBatcher(20, 4, seed=1), 8) != take(PromptBatcher(20, 4, seed=2), 8)
    plain = PromptBatcher(5, 2, seed=1, shuffle=False)
    assert take(plain, 3) == [[0, 1], [2, 3], [0, 1]]


def test_batcher_resume_continues_identically():
    original = PromptBatcher(num_rows=11, batch_size=4, seed=9)
    for _ in range(5):
        original.next_batch()
    state = json.loads(json.dumps(original.state_dict()))
    resumed = PromptBatcher(num_rows=11, batch_size=4, seed=9)
    resumed.load_state_dict(state)
    assert [resumed.next_batch() for _ in range(7)] == [original.next_batch() for _ in range(7)]


def test_batcher_errors():
    with pytest.raises(ValueError, match=r"batch_size \(8\).*\(5\)"):
        PromptBatcher(num_rows=5, batch_size=8, seed=0)
    state = PromptBatcher(num_rows=12, batch_size=4, seed=0).state_dict()
    with pytest.raises(ValueError, match="num_rows=12 but this run has num_rows=13"):
        PromptBatcher(num_rows=13, batch_size=4, seed=0).load_state_dict(state)


class _WordTokenizer:
    """One token per whitespace-separated word; returns a plain list like some tokenizers do."""

    def apply_chat_template(self, messages, add_generation_prompt, tokenize):
        assert add_generation_prompt and tokenize
        return [len(word) for m in messages for word in m["content"].split()]


def _prompt_rows(*contents: str) -> list:
    return [{"prompt": [{"role": "user", "content": c}]} for c in contents]


def test_encode_prompts_filters_overlong():
    rows = _prompt_rows("a bb ccc", "a b c d e f", "dd ee")
    ids, kept = encode_prompts(rows, _WordTokenizer(), max_prompt_length=3, filter_overlong=True)
    assert kept == [0, 2]
    assert ids == [[1, 2, 3], [2, 2]]


def test_encode_prompts_errors():
    rows = _prompt_rows("a bb ccc", "a b c d e f")
    with pytest.raises(ValueError, match="row 1 has 6 tokens > data.max_prompt_length=3"):
        encode_prompts(rows, _WordTokenizer(), max_prompt_length=3, filter_overlong=False)
    with pytest.raises(ValueError, match="all 2 prompts exceed data.max_prompt_length=2"):
        encode_prompts(rows, _WordTokenizer(), max_prompt_length=2, filter_overlong=True)


def test_encode_prompts_with_hf_tokenizer():
    pytest.importorskip("transformers")
    from dsrl.models import train_tokenizer

    tokenizer = train_tokenizer([r["question"] for r in synthetic_gsm8k(50, seed=0)], vocab_size=300)
    rows = to_verl_rows(synthetic_gsm8k(3, seed=2), "train", "x")
    ids, kept = encode_prompts(rows, tokenizer, max_prompt_length=10_000, filter_overlong=False)
    assert kept == [0, 1, 2] and all(isinstance(i, int) for seq in ids for i in seq)
    text = tokenizer.apply_chat_template(rows[1]["prompt"], add_generation_prompt=True, tokenize=False)
    assert tokenizer.decode(ids[1]) == text


def test_main_prepare_cli_defaults_to_every_row_and_says_so(tmp_path, capsys):
    src = _gsm8k_dir(tmp_path / "src")
    main_prepare(["--source", str(src), "--out-dir", str(tmp_path / "out")])
    assert len(read_prompts(tmp_path / "out" / "train.parquet")) == 5
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main_prepare(["--help"])
    assert "default: every row of a folder or hub source" in " ".join(capsys.readouterr().out.split())


def test_main_prepare_cli(tmp_path, capsys):
    main_prepare(["--source", "synthetic", "--out-dir", str(tmp_path), "--train-size", "6", "--test-size=2"])
    assert len(read_prompts(tmp_path / "train.parquet")) == 6
    assert "train.parquet" in capsys.readouterr().out
    src = _gsm8k_dir(tmp_path / "src")
    main_prepare(["--source", str(src), "--out-dir", str(tmp_path / "real"), "--train-size=all", "--test-size=all"])
    assert len(read_prompts(tmp_path / "real" / "train.parquet")) == 5
    with pytest.raises(SystemExit):
        main_prepare(["--source", "synthetic", "--out-dir", str(tmp_path), "--train-size", "-1"])
