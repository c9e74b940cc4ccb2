"""rlreason: reinforcement learning of language models on reasoning tasks (SFT, GRPO, PPO, DASH)."""

__version__ = "0.1.0"
