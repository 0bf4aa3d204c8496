"""A dense toy reward for learning tests: the share of response characters that are digits.

A random tiny model emits digits rarely (about 1 in 200 characters), so a rising score shows that rollout,
reward, advantages, updates and the weights used for the next rollout all fit together.
"""


def compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs):
    if not solution_str:
        return 0.0
    return sum(c.isdigit() for c in solution_str) / len(solution_str)
