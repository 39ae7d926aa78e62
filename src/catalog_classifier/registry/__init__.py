"""MLflow: tracking wiring, candidate selection, the promotion gate and rules, registry aliases and the served
model. Imports ``ops``, ``config``, ``data``, ``modeling`` and ``infra`` (the PostgreSQL lock).
"""
