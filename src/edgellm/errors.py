"""The one error type edgellm raises for bad input: a message a user can act on."""


class EdgeLLMError(Exception):
    """A problem with the user's input, told in one line that names the problem and the fix.

    The CLI prints it as `error: <message>` and exits with `exit_code`; anything else
    that escapes is a bug in edgellm.
    """

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))


class VerificationFailed(EdgeLLMError):
    """The converted or re-authored model disagrees with the reference beyond tolerance."""

    exit_code = 3
