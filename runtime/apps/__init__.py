"""The applications on top of the deployment core: the CLI and its commands, parity, eval, demo, doctor, bench.

Nothing in ``runtime``'s core (``runtime.sampler``, ``runtime.providers``, ``runtime.noise``,
``runtime.requests``), in ``export`` or in ``zoo`` imports this package (tests/test_layers.py).
"""
