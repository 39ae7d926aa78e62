"""Exit statuses of the CLI that the orchestrator reads (is a failed stage worth a retry?), and the light error
types the CLI maps onto them without importing torch or timm at start-up."""

from __future__ import annotations

# The command rejected its input (bad params, catalogue, model name, weights that do not fit): permanent.
EXIT_REJECTED_INPUT = 2
# Something outside the command was briefly unavailable (tracking server down, registry lock held): retry.
# 75 is EX_TEMPFAIL of sysexits.h, the conventional "try again later".
EXIT_TRANSIENT = 75


class ModelError(ValueError):
    """A model name timm does not know, or weights that do not fit the architecture: no retry can fix it."""


class InputError(ValueError):
    """A command's input file is not what it needs (e.g. a predict CSV without an ``image`` column): permanent."""
