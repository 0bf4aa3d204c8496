"""GSM8K scoring, data-source dispatch, custom reward files and batch scoring."""

import math
import time

import pytest

from dsrl import reward

GSM8K_ANSWER = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n"
    "#### 72"
)
FILLER = " The shop keeps careful records of every sale it makes during the spring." * 6  # > 300 chars


# ---- extraction -------------------------------------------------------------------------------------


def test_strict_reads_the_gsm8k_answer_line():
    assert reward.extract_solution(GSM8K_ANSWER) == "72"
    assert reward.extract_solution(GSM8K_ANSWER, method="flexible") == "72"


def test_strict_takes_the_last_marker_and_strips_commas():
    text = "First guess #### 10\nOn reflection the total is 1,234 dollars.\n#### 1,234"
    assert reward.extract_solution(text) == "1234"


def test_strict_needs_the_marker_and_a_number_right_after_it():
    assert reward.extract_solution("The answer is 72.") is None
    assert reward.extract_solution("####72") is None
    # as in verl, a dollar sign after the marker is not part of the number pattern
    assert reward.extract_solution("#### $18") is None


def test_negative_numbers():
    assert reward.extract_solution("The balance ends at\n#### -5") == "-5"
    assert reward.extract_solution("so the change is -12", method="flexible") == "-12"


def test_flexible_takes_the_last_number_like_token_as_written():
    assert reward.extract_solution("It costs $18 in total, from 3 items", method="flexible") == "3"
    assert reward.extract_solution("The ticket costs $18", method="flexible") == "18"
    # no comma stripping and a sentence-final period stays attached, exactly as verl
    assert reward.extract_solution("They raised 1,500 dollars", method="flexible") == "1,500"
    assert reward.extract_solution("The total is 72.", method="flexible") == "72."
    assert reward.extract_solution("Answer: 42 . . .", method="flexible") == "42"


def test_flexible_with_only_dots_returns_the_first_dot_like_verl():
    assert reward.extract_solution("Well. Hmm. I am not sure.", method="flexible") == "."
    assert reward.gsm8k_compute_score("Well. Hmm.", "72", method="flexible", format_score=0.1) == 0.1


def test_flexible_without_a_number_is_no_answer():
    assert reward.extract_solution("I do not know", method="flexible") is None
    assert reward.extract_solution("", method="flexible") is None


def test_only_the_last_300_characters_are_searched():
    assert reward.extract_solution("#### 72\n" + FILLER) is None
    # 42 is cut off; only the filler's full stops remain, and verl answers with the first of them
    assert reward.extract_solution("Answer 42." + FILLER, method="flexible") == "."
    assert reward.gsm8k_compute_score("#### 72\n" + FILLER, "72", format_score=0.1) == 0.0
    assert reward.extract_solution("#### 1" + FILLER + "#### 72") == "72"


def test_unknown_method_names_the_valid_ones():
    with pytest.raises(ValueError, match="strict, flexible"):
        reward.extract_solution(GSM8K_ANSWER, method="lenient")


# ---- scoring --------------------------------------------------------------------------------------------


def test_gsm8k_score_correct_wrong_and_missing():
    assert reward.gsm8k_compute_score(GSM8K_ANSWER, "72") == 1.0
    assert reward.gsm8k_compute_score(GSM8K_ANSWER, "71") == 0.0
    assert reward.gsm8k_compute_score(GSM8K_ANSWER, "71", format_score=0.1) == 0.1
    assert reward.gsm8k_compute_score("The answer is 72", "72", format_score=0.1) == 0.0
    assert reward.gsm8k_compute_score("The answer is 72", "72", method="flexible") == 1.0
    assert reward.gsm8k_compute_score(GSM8K_ANSWER, "72", score=2.5) == 2.5
    assert type(reward.gsm8k_compute_score(GSM8K_ANSWER, "71")) is float


def test_gsm8k_ground_truth_must_be_text():
    with pytest.raises(TypeError, match="ground_truth must be a str"):
        reward.gsm8k_compute_score(GSM8K_ANSWER, 72)


@pytest.mark.parametrize("source", ["openai/gsm8k", "dsrl/synthetic_gsm8k"])
def test_default_compute_score_dispatches_gsm8k_sources(source):
    assert reward.default_compute_score(source, GSM8K_ANSWER, "72") == 1.0
    assert reward.default_compute_score(source, "so 72", "72", None, method="flexible") == 1.0
    assert reward.default_compute_score(source, GSM8K_ANSWER, "7", {"split": "test"}, format_score=0.2) == 0.2


def test_default_compute_score_rejects_unknown_source_and_kwargs():
    with pytest.raises(NotImplementedError, match="openai/gsm8k, dsrl/synthetic_gsm8k"):
        reward.default_compute_score("lighteval/MATH", GSM8K_ANSWER, "72")
    with pytest.raises(TypeError, match="method, format_score, score"):
        reward.default_compute_score("openai/gsm8k", GSM8K_ANSWER, "72", temperature=1.0)


# ---- custom reward files -----------------------------------------------------------------------------


CUSTOM_REWARD = """
from dataclasses import dataclass
from math import sqrt

THRESHOLD = 3


@dataclass
class Verdict:
    value: float


def length_reward(data_source, solution_str, ground_truth, extra_info=None, bonus=0.0):
    return Verdict(len(solution_str) + bonus).value


def _private_helper():
    return sqrt(THRESHOLD)
"""


@pytest.fixture
def custom_file(tmp_path):
    path = tmp_path / "my_reward.py"
    path.write_text(CUSTOM_REWARD)
    return path


def test_load_custom_reward_fn_by_path_and_name(custom_file):
    fn = reward.load_custom_reward_fn(str(custom_file), "length_reward")
    assert fn("openai/gsm8k", "abcd", "1", None, bonus=0.5) == 4.5


def test_load_custom_reward_fn_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.py"):
        reward.load_custom_reward_fn(str(tmp_path / "nope.py"))


def test_load_custom_reward_fn_missing_name_lists_defined_callables(custom_file):
    with pytest.raises(AttributeError, match="no 'compute_score'; callables it defines: Verdict, length_reward\\.$"):
        reward.load_custom_reward_fn(str(custom_file))


def test_load_custom_reward_fn_not_callable(custom_file):
    with pytest.raises(TypeError, match="'THRESHOLD'.*int, not a callable"):
        reward.load_custom_reward_fn(str(custom_file), "THRESHOLD")


# ---- batch scoring -------------------------------------------------------------------------------------


def batch(n):
    return dict(
        data_sources=["openai/gsm8k"] * n,
        solution_strs=[f"#### {i}" for i in range(n)],
        ground_truths=[str(i if i % 2 == 0 else -1) for i in range(n)],
        extra_infos=[{"index": i} for i in range(n)],
    )


@pytest.mark.parametrize("num_workers", [1, 4])
def test_score_batch_preserves_order_and_passes_kwargs(num_workers):
    def slow_first(data_source, solution_str, ground_truth, extra_info, **kwargs):
        time.sleep(0.02 if extra_info["index"] == 0 else 0.0)
        return reward.default_compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs)

    scores = reward.score_batch(slow_first, **batch(6), reward_kwargs={"format_score": 0.1}, num_workers=num_workers)
    assert scores == [1.0, 0.1, 1.0, 0.1, 1.0, 0.1]


def test_score_batch_counts_bools_as_numbers():
    def is_even(data_source, solution_str, ground_truth, extra_info):
        return extra_info["index"] % 2 == 0

    scores = reward.score_batch(is_even, **batch(3), reward_kwargs={})
    assert scores == [1.0, 0.0, 1.0]
    assert all(type(s) is float for s in scores)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ("1.0", TypeError, "str '1.0' for sample 2"),
        ({"score": 1}, TypeError, "dict"),
        (math.nan, ValueError, "finite"),
    ],
)
def test_score_batch_rejects_bad_return_values(value, error, match):
    def bad_on_two(data_source, solution_str, ground_truth, extra_info):
        return value if extra_info["index"] == 2 else 1.0

    with pytest.raises(error, match=match):
        reward.score_batch(bad_on_two, **batch(3), reward_kwargs={})


def test_score_batch_rejects_mismatched_lengths():
    inputs = batch(3)
    inputs["ground_truths"] = inputs["ground_truths"][:2]
    with pytest.raises(ValueError, match="'ground_truths': 2"):
        reward.score_batch(reward.default_compute_score, **inputs, reward_kwargs={})
