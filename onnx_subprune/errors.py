"""Error types: user errors (bad input, shown as one line, exit 1) versus internal bugs."""


class SubpruneError(Exception):
    """A problem with the user's input (model, calibration data, options).

    The CLI prints ``str(error)`` on one line of stderr and exits with status 1.
    """


class ConfigError(SubpruneError):
    """An option of :class:`config.PruneConfig` out of range: ``option`` (the field name) and
    ``problem`` (what is wrong with its value)."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem


class UnsupportedPattern(SubpruneError):
    """The graph has no pattern the pruner can handle (e.g. nothing prunable)."""


class QualityError(SubpruneError):
    """The pruned model is further from the original than the user allowed; nothing is written."""


class InternalError(Exception):
    """A bug: the package disagrees with itself (e.g. the size model with the written model)."""
