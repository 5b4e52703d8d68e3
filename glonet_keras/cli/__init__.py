"""The command-line programs, installed as console scripts (`glonet-train`).

Each module holds one absl program: its flags and `main`, and `run()`, the console script's entry
point. `training/train.py` in a source checkout is a shim over the same module, with the same flags.
"""
