"""Error types: user errors (bad input, shown as one line, exit 1) versus internal bugs."""


class SubpruneError(Exception):
    """A problem with the user's input (model, calibration data, options).

    The CLI prints ``str(error)`` on one line of stderr and exits with status 1.
    """


class UnsupportedPattern(SubpruneError):
    """The graph has no pattern the pruner can handle (e.g. nothing prunable)."""


class QualityError(SubpruneError):
    """The pruned model is further from the original than the user allowed; nothing is written."""
