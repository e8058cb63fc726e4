"""Speed and memory benchmarks (run as scripts: ``python -m benchmarks.meta_step``, ``python -m benchmarks.memory``)."""
