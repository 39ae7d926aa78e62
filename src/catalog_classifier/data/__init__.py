"""Catalogue reading, robust image decoding, the quality audit, the seeded split, manifests and in-memory
image sets. Imports ``ops`` and ``config``.
"""
