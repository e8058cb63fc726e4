"""Multi-process meta-training: each rank adapts its share of every meta-batch, meta-gradients are all-reduced.

    torchrun --nproc_per_node=2 examples/distributed_fit.py            # gloo on CPU, NCCL on GPUs
    torchrun --nproc_per_node=2 examples/distributed_fit.py --quick

Every rank samples the same meta-batch (same seed) and adapts tasks rank, rank + world, ...; the
summed meta-gradient is all-reduced explicitly (DistributedDataParallel has no double backward), so
the result equals a single-process run on the same tasks. Rank 0 writes the learner.
"""
import argparse

import torch

import metalearn
from metalearn import distributed
from metalearn.tasks import Sinusoid


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output-dir", default="runs/distributed_sinusoid")
    args = parser.parse_args()
    active = distributed.init_from_env()  # reads torchrun's RANK / WORLD_SIZE / MASTER_ADDR
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(1, 40), torch.nn.ReLU(), torch.nn.Linear(40, 40), torch.nn.ReLU(),
                              torch.nn.Linear(40, 1))
    learner = metalearn.fit(Sinusoid(k_shot=10, q_query=10), model=mlp, method="maml", inner_steps=1, inner_lr=0.01,
                            meta_batch=8 if args.quick else 25, meta_steps=20 if args.quick else 2000, meta_lr=1e-3,
                            output_dir=args.output_dir, progress=distributed.rank() == 0)
    if distributed.rank() == 0:
        print(f"world size {distributed.world_size()} (distributed: {active}); final query loss "
              f"{learner.history[-1]['query_loss']:.4f}; learner saved to {args.output_dir}/learner")
    if active:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
