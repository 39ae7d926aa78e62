"""Plumbing every layer may use: atomic file output, exit statuses, progress, interrupts, DVC commands, what each
stage depends on, the git state runs are tagged with, which address a server may listen on. Imports nothing else
from the package.
"""
