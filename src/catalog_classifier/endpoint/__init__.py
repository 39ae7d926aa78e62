"""The champion's HTTP endpoint: request limits and streaming decode (``payload``), cross-request batching of the
forward pass (``batching``), the Ray Serve application (``ray_app``), which version is champion (``champion``).
Imports ``ops``, ``config``, ``data``, ``modeling`` and ``registry``.
"""
