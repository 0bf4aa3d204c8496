"""Rule-based rewards: GSM8K answer matching, data-source dispatch and user-supplied reward functions.

GSM8K scoring follows verl's ``reward_score/gsm8k.py`` so scores match verl runs; this module needs no torch.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from numbers import Real
from pathlib import Path
from typing import Any

# Long generations make the regex slow and the answer is at the end, so verl only searches this tail.
SOLUTION_CLIP_CHARS = 300
EXTRACT_METHODS = ("strict", "flexible")
GSM8K_DATA_SOURCES = ("openai/gsm8k", "dsrl/synthetic_gsm8k")
GSM8K_REWARD_KWARGS = ("method", "format_score", "score")

_STRICT_ANSWER = re.compile(r"#### (\-?[0-9\.\,]+)")
_NUMBER_LIKE = re.compile(r"(\-?[0-9\.\,]+)")


def extract_solution(solution_str: str, method: str = "strict") -> str | None:
    """The model's final answer in the last 300 characters, or None when there is none.

    ``strict`` demands the GSM8K ``#### <number>`` format (the last one wins, commas dropped; like verl,
    ``#### $18`` is not an answer because the number must follow ``#### `` directly); ``flexible`` takes the
    last number-like token as written, ignoring a bare ``.`` (when every match is a dot, verl returns the first dot,
    which then scores ``format_score``).
    """
    if method not in EXTRACT_METHODS:
        raise ValueError(f"Unknown extraction method {method!r}; valid: {', '.join(EXTRACT_METHODS)}.")
    tail = solution_str[-SOLUTION_CLIP_CHARS:]
    if method == "strict":
        found = _STRICT_ANSWER.findall(tail)
        return found[-1].replace(",", "") if found else None
    found = _NUMBER_LIKE.findall(tail)
    candidates = [token for token in found if token not in ("", ".")]
    if candidates:
        return candidates[-1]
    return found[0] if found else None  # only bare dots: verl's loop ends on the first one


def gsm8k_compute_score(
    solution_str: str,
    ground_truth: str,
    method: str = "strict",
    format_score: float = 0.0,
    score: float = 1.0,
) -> float:
    """``score`` for an exact string match, ``format_score`` for a wrong answer, 0.0 for no answer."""
    if not isinstance(ground_truth, str):
        raise TypeError(
            f"gsm8k ground_truth must be a str such as '72' (it is compared as text), "
            f"got {type(ground_truth).__name__} {ground_truth!r}."
        )
    answer = extract_solution(solution_str, method=method)
    if answer is None:
        return 0.0
    return float(score) if answer == ground_truth else float(format_score)


def default_compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    **reward_kwargs: Any,
) -> float:
    """Score one sample with the rule that belongs to its data source (verl's ``default_compute_score``)."""
    if data_source not in GSM8K_DATA_SOURCES:
        raise NotImplementedError(
            f"No reward rule for data_source {data_source!r}; supported: {', '.join(GSM8K_DATA_SOURCES)} "
            f"(or configure a custom reward function)."
        )
    unknown = sorted(set(reward_kwargs) - set(GSM8K_REWARD_KWARGS))
    if unknown:
        raise TypeError(
            f"Unknown reward_kwargs {unknown} for {data_source!r}; valid: {', '.join(GSM8K_REWARD_KWARGS)}."
        )
    return gsm8k_compute_score(solution_str, ground_truth, **reward_kwargs)


def load_custom_reward_fn(path: str, name: str = "compute_score") -> Callable[..., Any]:
    """Import ``name`` from the Python file at ``path`` (verl's ``custom_reward_function.path/name``)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"custom reward function file not found: {path!r} (resolved to {file}).")
    # A unique, registered module name lets dataclasses/pickling inside the user file resolve their module.
    module_name = f"dsrl_custom_reward_{hashlib.sha1(str(file).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import custom reward file {file}: not a Python source file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    if not hasattr(module, name):
        defined = sorted(
            attr
            for attr, obj in vars(module).items()
            if callable(obj) and getattr(obj, "__module__", None) == module_name and not attr.startswith("_")
        )
        raise AttributeError(
            f"custom reward file {file} has no {name!r}; callables it defines: {', '.join(defined) or 'none'}."
        )
    fn = getattr(module, name)
    if not callable(fn):
        raise TypeError(f"{name!r} in custom reward file {file} is a {type(fn).__name__}, not a callable.")
    return fn


def _as_score(value: Any, index: int) -> float:
    """Rewards must be finite numbers; a dict/str/None/NaN would otherwise fail far away in tensor code."""
    if not (isinstance(value, Real) or (hasattr(value, "dtype") and getattr(value, "ndim", None) == 0)):
        raise TypeError(
            f"reward function returned {type(value).__name__} {value!r} for sample {index}; expected a number."
        )
    result = float(value)
    if not math.isfinite(result):
        raise ValueError(f"reward function returned {result} for sample {index}; rewards must be finite.")
    return result


def score_batch(
    fn: Callable[..., Any],
    *,
    data_sources: Sequence[str],
    solution_strs: Sequence[str],
    ground_truths: Sequence[str],
    extra_infos: Sequence[dict | None],
    reward_kwargs: dict[str, Any],
    num_workers: int = 1,
) -> list[float]:
    """Score every sample with ``fn(data_source, solution_str, ground_truth, extra_info, **reward_kwargs)``.

    Results keep the input order; ``num_workers > 1`` runs the calls in threads, which helps rules that wait
    on I/O (e.g. a sandbox) while pure-Python rules gain little.
    """
    lengths = {
        "data_sources": len(data_sources),
        "solution_strs": len(solution_strs),
        "ground_truths": len(ground_truths),
        "extra_infos": len(extra_infos),
    }
    if len(set(lengths.values())) != 1:
        raise ValueError(f"score_batch inputs differ in length: {lengths}.")
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}.")

    def call(i: int) -> Any:
        return fn(data_sources[i], solution_strs[i], ground_truths[i], extra_infos[i], **reward_kwargs)

    indices = range(len(solution_strs))
    if num_workers == 1:
        raw = [call(i) for i in indices]
    else:
        with ThreadPoolExecutor(max_workers=num_workers) as pool:
            raw = list(pool.map(call, indices))
    return [_as_score(value, i) for i, value in enumerate(raw)]


class RewardScorer:
    """One step's scores: decode each prompt's `n` responses and score them against the prompt row's ground truth."""

    def __init__(self, fn: Callable[..., Any], tokenizer: Any, reward_kwargs: dict[str, Any], num_workers: int):
        self.fn, self.tokenizer, self.reward_kwargs, self.num_workers = fn, tokenizer, reward_kwargs, num_workers

    def score(self, rows: Sequence[Mapping[str, Any]], responses: list[list[int]], n: int) -> list[float]:
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        expanded = [row for row in rows for _ in range(n)]
        return score_batch(
            self.fn,
            data_sources=[r["data_source"] for r in expanded],
            solution_strs=texts,
            ground_truths=[r["reward_model"]["ground_truth"] for r in expanded],
            extra_infos=[r.get("extra_info") for r in expanded],
            reward_kwargs=self.reward_kwargs,
            num_workers=self.num_workers,
        )
