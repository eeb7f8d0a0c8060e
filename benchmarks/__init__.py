"""plmkit against the transformers path, side by side: training tokens/s, collators, loader.

Run ``python -m benchmarks --help``. Every training measurement runs in a fresh subprocess
(:mod:`benchmarks.worker`), plmkit (A) and the baseline (B) alternate, and the median of the
repeats is reported; ``python -m benchmarks all`` writes ``benchmarks/results/<host>.json``
and regenerates ``docs/benchmarks.md`` (:mod:`benchmarks.report`).
"""
