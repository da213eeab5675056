"""Error types both sides raise for bad input; the controller maps them to one line and an exit code."""

from __future__ import annotations


class RgtError(Exception):
    """A failure with a one-line message meant for a person."""

    exit_code = 1


class BadInput(RgtError):
    """The user gave something malformed (exit 2)."""

    exit_code = 2


class TransportError(RgtError):
    """The box could not be reached (exit 3): never a claim that the run is dead."""

    exit_code = 3


class GateRefused(RgtError):
    """A safety gate refused (exit 4), e.g. teardown before a verified pull."""

    exit_code = 4
