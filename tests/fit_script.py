"""A small deterministic meta-training run, used by the kill-and-resume test as a subprocess."""
import sys

import torch

import metalearn
from tests.helpers import SinusoidFamily, mlp

if __name__ == "__main__":
    out, steps = sys.argv[1], int(sys.argv[2])
    resume = sys.argv[3] if len(sys.argv) > 3 else None
    torch.set_num_threads(1)
    metalearn.fit(SinusoidFamily(), model=mlp(), method="maml", inner_steps=2, meta_batch=4, meta_steps=steps,
                  meta_lr=1e-3, schedule="cosine", checkpoint_every=1, output_dir=out, resume=resume, progress=False)
