"""The team stack on one machine: what to start and with which settings (composition), starting, checking and
stopping it (lifecycle), and how long MLflow logging takes on it (logging_latency). Imports ``ops`` and ``config``.
"""
