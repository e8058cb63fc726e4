"""The paper-reproduction and evidence experiments behind README's and docs' numbers.

Run each from the repository root as a module, e.g. ``python -m experiments.leave_one_out --quick``; ``--help``
lists its options. ``experiments.common`` holds what they share. The short scripts a user copies are in
``examples/``.
"""
