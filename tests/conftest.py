"""Test-wide settings: one intra-op thread.

The tests use tiny models, whose ops are far too small to gain from threads; with several threads
on a busy 2-core machine each tiny op pays thread hand-off and spin-wait costs instead.
"""
import torch

torch.set_num_threads(1)
