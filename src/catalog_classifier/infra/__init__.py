"""The team stack on one machine: what to start and with which settings (composition), starting, checking and
stopping it (lifecycle), and its pieces: a PostgreSQL cluster (postgres), detached services (services), owner-only
secret files (secrets). Imports ``ops`` and ``config``; ranks beside ``modeling`` (neither imports the other), below
``registry`` and ``tuning``, which use its PostgreSQL.
"""
