"""MLflow: tracking wiring, candidate selection, the promotion gate and rules, registry aliases and the served
model. Imports ``ops``, ``config``, ``data`` and ``modeling``.
"""
