"""A torchrun worker script for tests/distributed/test_ddp.py: `transferlab finetune`, except that rank 0 stops
(as Ctrl-C would) right after writing the checkpoint of epoch ``DDP_STOP_AFTER_EPOCH``.

Usage: torchrun --nproc_per_node 2 tests/distributed/ddp_interrupt.py DATA --out DIR ... (same flags as
`transferlab finetune`). torchrun then ends the other rank, as it does when any worker fails.
Importing this file changes nothing (pytest's doctest collection imports it).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    from transferlab.cli import app
    from transferlab.finetune import FineTuner

    save = FineTuner._save_checkpoint
    stop_after = int(os.environ.get("DDP_STOP_AFTER_EPOCH", "1"))

    def save_then_stop(self, *args, **kwargs):
        save(self, *args, **kwargs)
        if self.epoch >= stop_after:
            raise KeyboardInterrupt

    FineTuner._save_checkpoint = save_then_stop  # only rank 0 saves, so only rank 0 stops
    app(["finetune", *sys.argv[1:]], prog_name="ddp_interrupt")


if __name__ == "__main__":
    main()
