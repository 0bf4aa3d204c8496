"""dsrl: DeepSpeed PPO/GRPO training and the benchmark pipeline around it."""

__version__ = "0.1.0"
