"""Train a policy: ``python train.py algorithm=grpo kl=on filter=off`` (every knob is in conf/).

Sweeps: ``python train.py -m algorithm=sft,grpo,ppo,dash kl=on,off filter=on,off``.
Several processes (data parallel): ``accelerate launch --config_file conf/accelerate/ddp_gpu.yaml
--num_processes 4 train.py ...`` (see README).
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

import rlreason.config  # noqa: F401  (registers the schema and the ${debug:...} resolver)
from rlreason.cli import command_line, run_and_report
from rlreason.distributed import hydra_overrides_for_rank


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    return run_and_report(cfg, Path(hydra_cfg.runtime.output_dir), multirun=hydra_cfg.mode == RunMode.MULTIRUN)


if __name__ == "__main__":
    # Under `accelerate launch`, processes other than 0 write nothing into the run folder.
    sys.argv += hydra_overrides_for_rank(sys.argv[1:])
    command_line(main)
