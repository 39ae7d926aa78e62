"""Plumbing every layer may use: atomic file output, exit statuses, progress, interrupts, time-bounded calls,
CPU runtime settings, DVC commands, the git state runs are tagged with. Imports nothing else from the package.
"""
