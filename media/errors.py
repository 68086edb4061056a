"""Typed errors raised by the media layer."""


class AudioFormatError(ValueError):
    """Audio that does not have the format a component expects.

    The message says what was expected and what was found, so it can be shown
    to a caller as it is (it never contains audio or transcript content).
    """
