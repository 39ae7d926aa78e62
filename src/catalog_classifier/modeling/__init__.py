"""The model factory and its weights, the training loop and frozen mode, evaluation, prediction, seed spread
and the speed benchmark's measurements. Imports ``ops``, ``config`` and ``data``.
"""
