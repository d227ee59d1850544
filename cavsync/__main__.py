"""`python -m cavsync ...`: the `cavsync` command line run as a module, which is how torchrun starts it on every rank:

torchrun --nproc-per-node 8 -m cavsync train --data manifest.jsonl --out-dir RUN
"""

from cavsync.cli import app

app(prog_name="cavsync")
