"""`python -m transferlab.finetune` was the torchrun entry before the CLI moved out of the library
layers; it now says where the command went instead of silently doing nothing."""

import sys

sys.stderr.write(
    "error: `python -m transferlab.finetune` is now `python -m transferlab finetune` "
    "(under torchrun: torchrun --nproc_per_node N -m transferlab finetune DATA --out DIR ...)\n"
)
sys.exit(2)
