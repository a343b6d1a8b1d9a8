"""Errors a user can cause. The CLI prints these as one line and exits non-zero; anything else is a bug."""


class NasxError(Exception):
    """Base class of every user-facing error (bad config, bad input file, infeasible budget)."""

    def __init__(self, *args):
        # torch re-raises an error from a DataLoader worker as type(error)("Caught <type> in DataLoader worker
        # process k.\nOriginal Traceback ...\n<module>.<type>: <message>"); keep it one line: the message
        if len(args) == 1 and isinstance(args[0], str) and args[0].startswith("Caught ") \
                and "\nOriginal Traceback" in args[0]:
            last = [line for line in args[0].splitlines() if line.strip()][-1]
            args = (last.partition(": ")[2] or last,)
        super().__init__(*args)


class ConfigError(NasxError):
    """A config key holds a value nasx cannot use. The message names the key and what it accepts."""


class ArchError(NasxError):
    """An architecture does not belong to its space. The message names the gene."""


class InfeasibleBudgetError(NasxError):
    """No architecture of the space fits the budget. The message gives the space's minimum cost."""


class DatasetError(NasxError):
    """A dataset path is missing or malformed. The message names the path and the layout expected."""


class ArtifactError(NasxError):
    """A file a run wrote earlier is unreadable (truncated, emptied, overwritten). The message names the file and
    what to delete for its stage to redo it."""


class NonFiniteLossError(NasxError):
    """Training produced a NaN or infinite loss; a checkpoint was written before stopping."""


class MetricError(NasxError, ValueError):
    """A metric cannot be computed from its inputs (e.g. too few impostor pairs for a FAR)."""


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (for wrapping library errors into a nasx error)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())
