"""The command-line programs, installed as console scripts (`glonet-train`, `glonet-deploy`).

Each module holds one absl program: its flags and `main`, and `run()`, the console script's entry
point. `training/train.py` in a source checkout is a shim over the same module, with the same flags.
"""

import functools

from absl import flags


def define_once(define_flags):
    """Makes `define_flags()` register its absl flags on the first call only.

    A program defines its flags when it parses them, not at import: a library module that defined
    them there would collide with the flags of any absl program (or test process) that imports it,
    and the two programs here share flag names.
    """
    done = []

    @functools.wraps(define_flags)
    def define():
        if not done:
            define_flags()
            done.append(True)

    define.reset = done.clear  # For a test that removes the flags again.
    return define


def flags_parser(define_flags, fail):
    """`app.run`'s `flags_parser` for a program: defines its flags, then parses `argv` into absl's
    FLAGS; a bad flag goes to `fail(error)` (one line and exit status 2)."""

    def parse_flags(argv):
        define_flags()
        try:
            return flags.FLAGS(argv)
        except flags.Error as error:
            fail(error)

    return parse_flags
