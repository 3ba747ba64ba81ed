"""verl integration: agent loop, reward function, oversample-filter-rank sampler, dataset rows.

Importing this package imports no verl: each module imports it itself, so the rest of PyVision runs
without verl installed.
"""
