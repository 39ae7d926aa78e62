"""Optuna studies: the search space, the objective, resume rules and results.
Imports ``ops``, ``config``, ``data``, ``modeling`` and ``registry.tracking``.
"""
