"""Errors meant for the person running repre (exit status 2), apart from internal failures (exit 1)."""


class UserError(Exception):
    """A bad input: config, path, data or checkpoint. The message says what is wrong and what to do."""


def user_message(exc: UserError) -> str:
    """The error's message. One raised in a data loader's worker comes back as a UserError whose text is the
    worker's whole traceback, which ends with the message."""
    text = str(exc)
    return text.rsplit("UserError: ", 1)[-1].strip() if "Original Traceback" in text else text


class NoTestSplit(UserError):
    """Data without a held-out split (a folder without val/ or test/, shards without val/): `root` is its folder.
    The message says what evaluation needs; a command that can do without it says its own."""

    def __init__(self, message: str, root: str) -> None:
        super().__init__(message)
        self.root = root


class StoppedEarly(Exception):
    """The run stopped before its end (exit status 3): interrupted, it resumes from its last checkpoint; stopped
    by non-finite steps in a row, a new run starts from the last good one (the log names it). `summary`: the
    run's summary (what summary.json holds); the message is it as JSON."""

    def __init__(self, summary: dict) -> None:
        import json

        super().__init__(json.dumps(summary))
        self.summary = summary

    def __reduce__(self) -> tuple:  # pickled (a torchrun worker's error): built again from the summary
        return type(self), (self.summary,)
