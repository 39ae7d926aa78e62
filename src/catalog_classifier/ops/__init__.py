"""Plumbing every layer may use: atomic file output, exit statuses, progress, interrupts, time-bounded calls,
CPU runtime settings, DVC commands. Imports nothing else from the package.
"""
