"""Trains a GloNet (or a baseline) on a named data set, resumably, and optionally exports it.

The program lives in the library, `glonet_keras.cli.train`, installed as the console script
`glonet-train`; this file runs the same program, with the same flags, from a source checkout:

    python training/train.py --model=glonet_mlp --depth=10 --width=64 --dataset=digits \
        --epochs=20 --model_dir=/tmp/digits_glonet
    glonet-train --preset=glonet_mlp_digits --dataset=digits --epochs=5 --model_dir=/tmp/ft

See `glonet_keras/cli/train.py` (or `glonet-train --help`) for the flags and exit statuses.
"""

from glonet_keras.cli.train import *  # noqa: F401,F403  (its helpers, for importers)
from glonet_keras.cli.train import run

if __name__ == "__main__":
    run()
