"""Training, data sources and the quality metric: what makes and judges a model, apart from the zoo's core.

``train`` (the trainer, its config and run directory), ``data`` (the data sources), ``metrics``
(the reference classifier and Frechet distance). The core (``zoo.registry``, ``zoo.models``,
``zoo.solvers``...), ``export`` and the deployment runtime never import this package.
"""

__all__ = ["NonFiniteLossError"]


class NonFiniteLossError(ArithmeticError):
    """Training produced a NaN or inf loss or gradient: stopped before it reached the weights."""
