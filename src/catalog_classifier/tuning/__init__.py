"""Optuna studies: the search space, the objective, studies shared by workers on one storage, resume rules, results.
Imports ``ops``, ``config``, ``data``, ``modeling``, ``infra.postgres`` and
``registry.tracking``.
"""
