"""Errors a user can act on. The CLI prints them as one line and exits non-zero."""


class UnicompError(Exception):
    """Base class: the message names what was wrong and what was expected."""


class UnknownNameError(UnicompError, KeyError):
    def __init__(self, kind: str, name: str, choices: list[str]):
        self.kind, self.name, self.choices = kind, name, choices
        super().__init__(f"unknown {kind} {name!r}; choices: {', '.join(choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class RunFolderError(UnicompError):
    """A run folder that does not fit the call (a run already there, a resume that would
    change its settings). The message speaks Python (``resume=True``, ``cfg.out``); ``cli``
    says the same in the command's flags, which the CLI prints instead."""

    def __init__(self, message: str, cli: str):
        super().__init__(message)
        self.cli = cli


class WeightsNotFoundError(UnicompError):
    """Pretrained weights could not be found anywhere we looked."""


class DataError(UnicompError):
    """A data file is missing, malformed or inconsistent."""


class TrainingDivergedError(UnicompError):
    """The loss became NaN or infinite."""


def one_line(err: BaseException) -> str:
    """A library's error message on one line (the CLI prints errors as one line)."""
    return " ".join(str(err).split())
