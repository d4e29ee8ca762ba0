"""The front end (gen-worker-1): the miner's HTTP contract, the worker pool, memory guard and result checks.

Nothing here imports ``generation.worker``: the worker is reached over HTTP through ``generation.contract``.
"""
