"""The typed ``params.yaml`` loader, where each stage's files live, and validated overrides written back.
Imports only ``ops``.
"""
