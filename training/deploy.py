"""Deploys a trained GloNet at the depth you can afford: choose k from data, export it for serving.

The program lives in the library, `glonet_keras.cli.deploy`, installed as the console script
`glonet-deploy`; this file runs the same program, with the same flags, from a source checkout:

    python training/deploy.py --preset=glonet_mlp_digits --tolerance=0.01 \
        --export_dir=/tmp/serving --report=/tmp/deploy.json --plot=/tmp/tradeoff.png
    glonet-deploy --run_dir=/tmp/digits_glonet --latency_budget_ms=0.5 --export_dir=/tmp/serving

See `glonet_keras/cli/deploy.py` (or `glonet-deploy --help`) for the flags and exit statuses.
"""

from glonet_keras.cli.deploy import *  # noqa: F401,F403  (its helpers, for importers)
from glonet_keras.cli.deploy import console

if __name__ == "__main__":
    console()
