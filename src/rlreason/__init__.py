"""rlreason: reinforcement learning of language models on reasoning tasks (SFT, GRPO, PPO, DASH)."""

import os

# OpenMP threads that wait for work sleep instead of spinning. On a CPU shared with other jobs (more
# runnable threads than cores) spinning workers starve the thread they wait for: generating with a
# tiny model fell from ~500 to 9 new tokens/s on 2 busy cores. Set before torch loads OpenMP (every
# entry point imports rlreason first); an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
