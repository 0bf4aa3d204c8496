"""GSM8K in verl's parquet schema, prepared once: synthetic problems, a local openai/gsm8k folder, or a hub id.

`dsrl prepare-data` runs in the light workflow environment, so this module needs no torch (and pandas only when
it writes). Reading and batching the prepared files is dsrl.data's job.
"""

from __future__ import annotations

import argparse
import json
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dsrl.atomic import atomic_output
from dsrl.data import REQUIRED_COLUMNS

INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'
SYNTHETIC_SOURCE = "dsrl/synthetic_gsm8k"
GSM8K_SOURCE = "openai/gsm8k"
ANSWER_MARKER = "#### "
SYNTHETIC_SIZES = (512, 64)  # train / test problems generated when no size is given

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


@dataclass(frozen=True)
class Template:
    """One kind of word problem: `draw` picks the numbers (and derives the answer), the texts are format strings."""

    question: str
    steps: tuple[str, ...]
    draw: Callable[[random.Random], dict[str, Any]]


def _person(rng: random.Random) -> dict[str, Any]:
    name, subj, poss = rng.choice(_PEOPLE)
    return {"name": name, "subj": subj, "Subj": subj.capitalize(), "poss": poss}


def _half_as_many(rng: random.Random) -> dict[str, Any]:
    v = _person(rng) | {"item": rng.choice(_ITEMS), "first": 2 * rng.randint(5, 60)}
    v["half"] = v["first"] // 2
    return v | {"answer": v["first"] + v["half"]}


def _hourly_wage(rng: random.Random) -> dict[str, Any]:
    v = _person(rng) | {"rate": rng.randint(8, 30), "monday": rng.randint(2, 9), "tuesday": rng.randint(2, 9)}
    v["hours"] = v["monday"] + v["tuesday"]
    return v | {"answer": v["rate"] * v["hours"]}


def _change(rng: random.Random) -> dict[str, Any]:
    v = {
        "name": rng.choice(_NAMES),
        "item": rng.choice(_ITEMS),
        "packs": rng.randint(2, 9),
        "price": rng.randint(2, 12),
    }
    v["cost"] = v["packs"] * v["price"]
    v["bill"] = next(b for b in (20, 50, 100, 200) if b > v["cost"])
    return v | {"answer": v["bill"] - v["cost"]}


def _boxes_left(rng: random.Random) -> dict[str, Any]:
    v = {"per_box": rng.randint(4, 12), "boxes": rng.randint(6, 20)}
    v |= {"baked": v["per_box"] * v["boxes"], "sold": rng.randint(1, v["boxes"] - 1)}
    return v | {"answer": v["boxes"] - v["sold"]}


def _pages_left(rng: random.Random) -> dict[str, Any]:
    v = {"name": rng.choice(_NAMES), "per_day": rng.randint(5, 40), "days": rng.randint(2, 10)}
    v["read"] = v["per_day"] * v["days"]
    v["total"] = v["read"] + rng.randint(10, 300)
    return v | {"answer": v["total"] - v["read"]}


def _yearly_salary(rng: random.Random) -> dict[str, Any]:
    v = {"name": rng.choice(_NAMES), "monthly": 100 * rng.randint(15, 90), "years": rng.randint(2, 6)}
    v["yearly"] = v["monthly"] * 12
    return v | {"answer": v["yearly"] * v["years"]}


# The generator draws a template, then its numbers, from one seeded stream: the order of this table is part of what
# a seed means.
TEMPLATES: tuple[Template, ...] = (
    Template(
        "{name} sold {item} to {first} of {poss} friends in April, and then {subj} sold half as many {item} in May. "
        "How many {item} did {name} sell altogether in April and May?",
        (
            "{name} sold {first}/2 = <<{first}/2={half}>>{half} {item} in May.",
            "{name} sold {first}+{half} = <<{first}+{half}={answer}>>{answer} {item} altogether in April and May.",
        ),
        _half_as_many,
    ),
    Template(
        "{name} earns ${rate} an hour for babysitting. {Subj} babysat for {monday} hours on Monday and {tuesday} "
        "hours on Tuesday. How much did {subj} earn?",
        (
            "{name} babysat {monday}+{tuesday} = <<{monday}+{tuesday}={hours}>>{hours} hours.",
            "{Subj} earned {rate}*{hours} = $<<{rate}*{hours}={answer}>>{answer}.",
        ),
        _hourly_wage,
    ),
    Template(
        "{name} buys {packs} packs of {item} at ${price} per pack and pays with a ${bill} bill. "
        "How much change does {name} get back?",
        (
            "The {item} cost {packs}*{price} = $<<{packs}*{price}={cost}>>{cost}.",
            "{name} gets {bill}-{cost} = $<<{bill}-{cost}={answer}>>{answer} in change.",
        ),
        _change,
    ),
    Template(
        "A bakery bakes {baked} cookies and packs them into boxes of {per_box}. It sells {sold} boxes. "
        "How many boxes of cookies are left?",
        (
            "The bakery fills {baked}/{per_box} = <<{baked}/{per_box}={boxes}>>{boxes} boxes.",
            "After selling, {boxes}-{sold} = <<{boxes}-{sold}={answer}>>{answer} boxes are left.",
        ),
        _boxes_left,
    ),
    Template(
        "{name}'s book has {total} pages. {name} reads {per_day} pages a day for {days} days. "
        "How many pages are left to read?",
        (
            "{name} reads {per_day}*{days} = <<{per_day}*{days}={read}>>{read} pages.",
            "There are {total}-{read} = <<{total}-{read}={answer}>>{answer} pages left.",
        ),
        _pages_left,
    ),
    Template(
        "{name} earns ${monthly} every month. How much does {name} earn in {years} years?",
        (
            "In a year {name} earns {monthly}*12 = $<<{monthly}*12={yearly}>>{yearly}.",
            "In {years} years that is {yearly}*{years} = $<<{yearly}*{years}={answer}>>{answer}.",
        ),
        _yearly_salary,
    ),
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
        template = rng.choice(TEMPLATES)
        values = template.draw(rng)
        steps = [step.format(**values) for step in template.steps]
        answer = "\n".join([*steps, f"{ANSWER_MARKER}{values['answer']:,}"])
        rows.append({"question": template.question.format(**values), "answer": answer})
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
