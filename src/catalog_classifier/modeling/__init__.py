"""The model factory and its weights, torch runtime set-up (torch_setup), the fit loop and frozen mode, training
jobs, metrics and evaluation, prediction, calibration and seed spread. Imports ``ops``, ``config`` and ``data``.
"""
