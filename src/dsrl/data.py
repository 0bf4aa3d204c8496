"""GSM8K data in verl's parquet schema: preparation, reading, batching and prompt encoding.

Kept torch-free at import time because ``dsrl prepare-data`` runs in the light workflow environment.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from dsrl.atomic import atomic_output

INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
REQUIRED_COLUMNS = ("data_source", "prompt", "ability", "reward_model", "extra_info")
SYNTHETIC_SOURCE = "dsrl/synthetic_gsm8k"
GSM8K_SOURCE = "openai/gsm8k"
ANSWER_MARKER = "#### "

# (name, subject pronoun, possessive pronoun) so generated sentences stay grammatical.
_PEOPLE = (
    ("Natalia", "she", "her"),
    ("Weng", "she", "her"),
    ("Betty", "she", "her"),
    ("Maria", "she", "her"),
    ("Lena", "she", "her"),
    ("James", "he", "his"),
    ("Albert", "he", "his"),
    ("Tom", "he", "his"),
    ("Ken", "he", "his"),
    ("Omar", "he", "his"),
)
_NAMES = tuple(person[0] for person in _PEOPLE)
_ITEMS = ("clips", "stickers", "muffins", "pencils", "marbles", "cards", "apples", "bracelets")


def _tpl_half_as_many(rng: random.Random) -> tuple[str, list[str], int]:
    (name, subj, poss), item = rng.choice(_PEOPLE), rng.choice(_ITEMS)
    first = 2 * rng.randint(5, 60)
    half = first // 2
    total = first + half
    question = (
        f"{name} sold {item} to {first} of {poss} friends in April, and then {subj} sold half as many "
        f"{item} in May. How many {item} did {name} sell altogether in April and May?"
    )
    steps = [
        f"{name} sold {first}/2 = <<{first}/2={half}>>{half} {item} in May.",
        f"{name} sold {first}+{half} = <<{first}+{half}={total}>>{total} {item} altogether in April and May.",
    ]
    return question, steps, total


def _tpl_hourly_wage(rng: random.Random) -> tuple[str, list[str], int]:
    name, subj, _ = rng.choice(_PEOPLE)
    rate, monday, tuesday = rng.randint(8, 30), rng.randint(2, 9), rng.randint(2, 9)
    hours = monday + tuesday
    pay = rate * hours
    question = (
        f"{name} earns ${rate} an hour for babysitting. {subj.capitalize()} babysat for {monday} hours "
        f"on Monday and {tuesday} hours on Tuesday. How much did {subj} earn?"
    )
    steps = [
        f"{name} babysat {monday}+{tuesday} = <<{monday}+{tuesday}={hours}>>{hours} hours.",
        f"{subj.capitalize()} earned {rate}*{hours} = $<<{rate}*{hours}={pay}>>{pay}.",
    ]
    return question, steps, pay


def _tpl_change(rng: random.Random) -> tuple[str, list[str], int]:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    packs, price = rng.randint(2, 9), rng.randint(2, 12)
    cost = packs * price
    bill = next(b for b in (20, 50, 100, 200) if b > cost)
    change = bill - cost
    question = (
        f"{name} buys {packs} packs of {item} at ${price} per pack and pays with a ${bill} bill. "
        f"How much change does {name} get back?"
    )
    steps = [
        f"The {item} cost {packs}*{price} = $<<{packs}*{price}={cost}>>{cost}.",
        f"{name} gets {bill}-{cost} = $<<{bill}-{cost}={change}>>{change} in change.",
    ]
    return question, steps, change


def _tpl_boxes_left(rng: random.Random) -> tuple[str, list[str], int]:
    per_box, boxes = rng.randint(4, 12), rng.randint(6, 20)
    baked, sold = per_box * boxes, rng.randint(1, boxes - 1)
    left = boxes - sold
    question = (
        f"A bakery bakes {baked} cookies and packs them into boxes of {per_box}. It sells {sold} boxes. "
        f"How many boxes of cookies are left?"
    )
    steps = [
        f"The bakery fills {baked}/{per_box} = <<{baked}/{per_box}={boxes}>>{boxes} boxes.",
        f"After selling, {boxes}-{sold} = <<{boxes}-{sold}={left}>>{left} boxes are left.",
    ]
    return question, steps, left


def _tpl_pages_left(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    per_day, days = rng.randint(5, 40), rng.randint(2, 10)
    read = per_day * days
    total = read + rng.randint(10, 300)
    left = total - read
    question = (
        f"{name}'s book has {total} pages. {name} reads {per_day} pages a day for {days} days. "
        f"How many pages are left to read?"
    )
    steps = [
        f"{name} reads {per_day}*{days} = <<{per_day}*{days}={read}>>{read} pages.",
        f"There are {total}-{read} = <<{total}-{read}={left}>>{left} pages left.",
    ]
    return question, steps, left


def _tpl_yearly_salary(rng: random.Random) -> tuple[str, list[str], int]:
    name = rng.choice(_NAMES)
    monthly, years = 100 * rng.randint(15, 90), rng.randint(2, 6)
    yearly = monthly * 12
    total = yearly * years
    question = f"{name} earns ${monthly} every month. How much does {name} earn in {years} years?"
    steps = [
        f"In a year {name} earns {monthly}*12 = $<<{monthly}*12={yearly}>>{yearly}.",
        f"In {years} years that is {yearly}*{years} = $<<{yearly}*{years}={total}>>{total}.",
    ]
    return question, steps, total


_TEMPLATES: tuple[Callable[[random.Random], tuple[str, list[str], int]], ...] = (
    _tpl_half_as_many,
    _tpl_hourly_wage,
    _tpl_change,
    _tpl_boxes_left,
    _tpl_pages_left,
    _tpl_yearly_salary,
)


def synthetic_gsm8k(n: int, seed: int) -> list[dict]:
    """GSM8K-format word problems with exact answers, so the pipeline runs without any download.

    Final answers use thousands separators like the real set (``#### 1,080``) to exercise comma stripping.
    """
    if n < 0:
        raise ValueError(f"synthetic_gsm8k: n must be >= 0, got {n}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        question, steps, result = rng.choice(_TEMPLATES)(rng)
        rows.append({"question": question, "answer": "\n".join([*steps, f"{ANSWER_MARKER}{result:,}"])})
    return rows


def extract_ground_truth(answer: str) -> str:
    """The final number after ``#### `` with commas removed (verl's rule-based reward target)."""
    if ANSWER_MARKER not in answer:
        raise ValueError(f"answer has no {ANSWER_MARKER!r} final-answer marker: {answer[-80:]!r}")
    return answer.rsplit(ANSWER_MARKER, 1)[1].strip().replace(",", "")


def read_gsm8k_jsonl(path: str | os.PathLike) -> list[dict]:
    """Rows of an openai/gsm8k jsonl file, validated so bad lines fail here, not mid-training."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K jsonl file not found: {path}")
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err.msg})") from err
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with 'question' and 'answer'")
            missing = [key for key in ("question", "answer") if key not in row]
            if missing:
                raise ValueError(f"{path}:{lineno}: row is missing {missing}; each row needs 'question' and 'answer'")
            if ANSWER_MARKER not in row["answer"]:
                raise ValueError(f"{path}:{lineno}: answer has no {ANSWER_MARKER!r} final-answer marker")
            rows.append({"question": row["question"], "answer": row["answer"]})
    return rows


def to_verl_rows(rows: Sequence[Mapping[str, Any]], split: str, data_source: str) -> list[dict]:
    """GSM8K rows in verl's schema (examples/data_preprocess/gsm8k.py) so verl-style reward code applies."""
    return [
        {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": f"{row['question']} {INSTRUCTION}"}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": extract_ground_truth(row["answer"])},
            "extra_info": {
                "split": split,
                "index": index,
                "answer": row["answer"],
                "question": row["question"],
            },
        }
        for index, row in enumerate(rows)
    ]


def _take(rows: list[dict], size: int | None, what: str) -> list[dict]:
    if size is None:
        return rows
    if size > len(rows):
        raise ValueError(f"{what}={size} exceeds the {len(rows)} rows available; use a smaller size or 'all'")
    return rows[:size]


def _load_hub(source: str) -> tuple[list[dict], list[dict]]:
    hint = "pass a local directory holding train.jsonl and test.jsonl, or 'synthetic'"
    try:
        import datasets
    except ImportError as err:
        raise RuntimeError(f"source {source!r} is taken as a hub id but 'datasets' is not installed; {hint}") from err
    try:
        ds = datasets.load_dataset(source, "main")
    except Exception as err:
        raise RuntimeError(f"could not load hub dataset {source!r} ({type(err).__name__}: {err}); {hint}") from err
    return [dict(r) for r in ds["train"]], [dict(r) for r in ds["test"]]


def _write_parquet_atomic(rows: list[dict], path: Path) -> None:
    import pandas as pd  # here, not at the top: `dsrl train`'s preflight imports this module and needs no pandas

    with atomic_output(path) as tmp:
        pd.DataFrame(rows, columns=list(REQUIRED_COLUMNS)).to_parquet(tmp, index=False)


SYNTHETIC_SIZES = (512, 64)  # train / test problems generated when no size is given


def prepare_gsm8k(
    source: str,
    out_dir: str | os.PathLike,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
) -> tuple[Path, Path]:
    """Write ``train.parquet`` and ``test.parquet`` from ``synthetic``, a local jsonl dir, or a hub id.

    For local/hub sources a size of None keeps every row, as verl's preprocessing does, and an int keeps the
    first N (no shuffling, so a given size always selects the same problems). Synthetic data has no "all": None
    means 512 train / 64 test problems.
    """
    for what, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and size <= 0:
            raise ValueError(f"{what} must be a positive int or None (all rows), got {size}")
    if source == "synthetic":
        train_size = SYNTHETIC_SIZES[0] if train_size is None else train_size
        test_size = SYNTHETIC_SIZES[1] if test_size is None else test_size
        rows = synthetic_gsm8k(train_size + test_size, seed)
        train, test, data_source = rows[:train_size], rows[train_size:], SYNTHETIC_SOURCE
    else:
        if Path(source).is_dir():
            train_all = read_gsm8k_jsonl(Path(source) / "train.jsonl")
            test_all = read_gsm8k_jsonl(Path(source) / "test.jsonl")
        else:
            train_all, test_all = _load_hub(source)
        train, test = _take(train_all, train_size, "train_size"), _take(test_all, test_size, "test_size")
        data_source = GSM8K_SOURCE

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.parquet", out / "test.parquet"
    for path, rows_, split in ((paths[0], train, "train"), (paths[1], test, "test")):
        _write_parquet_atomic(to_verl_rows(rows_, split, data_source), path)
    return paths


def prompt_file_rows(path: str | os.PathLike) -> int:
    """Rows of a verl-schema parquet, from its footer alone; fails on a missing file, columns or rows."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt parquet not found: {path} (create it with `dsrl prepare-data`)")
    try:
        meta = pq.read_metadata(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid/OSError for a file that is not parquet
        raise ValueError(f"{path}: not a parquet file ({exc})") from exc
    missing = [col for col in REQUIRED_COLUMNS if col not in meta.schema.to_arrow_schema().names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected columns {list(REQUIRED_COLUMNS)}")
    if meta.num_rows == 0:
        raise ValueError(f"{path}: file has no rows")
    return meta.num_rows


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """Rows of a verl-schema parquet as plain Python objects (lists/dicts, not numpy arrays)."""
    prompt_file_rows(path)
    return pq.read_table(path, columns=list(REQUIRED_COLUMNS)).to_pylist()


class PromptBatcher:
    """Epoch-wise shuffled, drop-last batches of row indices whose order survives checkpoint/resume.

    Each epoch's permutation depends only on (seed, epoch), so the state is just (epoch, position).
    """

    def __init__(self, num_rows: int, batch_size: int, seed: int, shuffle: bool = True) -> None:
        if num_rows <= 0 or batch_size <= 0:
            raise ValueError(f"num_rows ({num_rows}) and batch_size ({batch_size}) must be positive")
        if batch_size > num_rows:
            raise ValueError(f"batch_size ({batch_size}) is larger than the number of prompt rows ({num_rows})")
        self.num_rows, self.batch_size, self.seed, self.shuffle = num_rows, batch_size, seed, shuffle
        self.batches_per_epoch = num_rows // batch_size
        self.epoch, self.position = 0, 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_rows)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)

    def next_batch(self) -> list[int]:
        """Global row indices of the next batch, moving to the next epoch when this one is used up."""
        if self.position >= self.batches_per_epoch:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._epoch_order(self.epoch)
        start = self.position * self.batch_size
        self.position += 1
        return self._order[start : start + self.batch_size].tolist()

    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "num_rows": self.num_rows,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "shuffle": self.shuffle,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the position; refuses a state from a batcher over different data or settings."""
        for key in ("num_rows", "batch_size", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"PromptBatcher state has {key}={state[key]!r} but this run has "
                    f"{key}={getattr(self, key)!r}; "
                    "resume with the same data and batch settings"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
            raise ValueError(
                f"PromptBatcher state epoch={epoch}, position={position} is out of range "
                f"(position must be in [0, {self.batches_per_epoch}])"
            )
        self.epoch, self.position = epoch, position
        self._order = self._epoch_order(epoch)


def encode_prompts(
    rows: Sequence[Mapping[str, Any]], tokenizer: Any, max_prompt_length: int, filter_overlong: bool
) -> tuple[list[list[int]], list[int]]:
    """Chat-templated prompt token ids and the indices of the rows kept after the length filter."""
    encoded: list[list[int]] = []
    kept: list[int] = []
    for index, row in enumerate(rows):
        out = tokenizer.apply_chat_template(list(row["prompt"]), add_generation_prompt=True, tokenize=True)
        ids = [int(i) for i in (out["input_ids"] if isinstance(out, Mapping) else out)]
        if len(ids) > max_prompt_length:
            if filter_overlong:
                continue
            raise ValueError(
                f"prompt row {index} has {len(ids)} tokens > data.max_prompt_length={max_prompt_length}; "
                "raise the limit or enable data.filter_overlong_prompts"
            )
        encoded.append(ids)
        kept.append(index)
    if not kept:
        raise ValueError(f"all {len(rows)} prompts exceed data.max_prompt_length={max_prompt_length}")
    return encoded, kept


def _size_arg(text: str) -> int | None:
    if text == "all":
        return None
    try:
        value = int(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {text!r}") from err
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive int or 'all', got {value}")
    return value


def main_prepare(argv: Sequence[str] | None = None) -> None:
    """``dsrl prepare-data``: write train/test parquet files in verl's GSM8K schema."""
    parser = argparse.ArgumentParser(prog="dsrl prepare-data", description=main_prepare.__doc__)
    parser.add_argument(
        "--source", required=True, help="'synthetic', a dir with train.jsonl and test.jsonl, or a hub id"
    )
    parser.add_argument("--out-dir", required=True, type=Path, help="where train.parquet and test.parquet go")
    parser.add_argument(
        "--train-size",
        type=_size_arg,
        default=None,
        help=f"first N train rows, or 'all' (default: every row of a folder or hub source, as verl's "
        f"preprocessing; {SYNTHETIC_SIZES[0]} for synthetic)",
    )
    parser.add_argument(
        "--test-size",
        type=_size_arg,
        default=None,
        help=f"first N test rows, or 'all' (default: every row of a folder or hub source; "
        f"{SYNTHETIC_SIZES[1]} for synthetic)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the synthetic generator")
    args = parser.parse_args(argv)
    train, test = prepare_gsm8k(
        args.source, args.out_dir, train_size=args.train_size, test_size=args.test_size, seed=args.seed
    )
    print(f"wrote {train} and {test}")
