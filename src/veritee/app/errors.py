"""Errors of distributed apps: each names what failed and where, in one line.

Exit codes (the CLI's, beyond the common ones): 2 a descriptor or argument is malformed,
7 a module's attestation was not acceptable, 10 a deployment cannot proceed (state file,
a module or connection refused), 11 a node agent did not answer or refused, 12 the secure
world dropped an event (replayed, altered, misrouted).
"""

from __future__ import annotations

from veritee.errors import Error


class AppError(Error):
    """A deployment cannot proceed; the message says which module or connection and why."""

    exit_code = 10


class DescriptorError(AppError):
    """The descriptor is malformed or inconsistent; the message names the file, line, field."""

    exit_code = 2

    def __init__(self, message: str, *, where: str = "", field: str = "") -> None:
        self.where = where
        self.field = field
        self.message = message
        prefix = ": ".join(p for p in (where, field) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class UnsupportedField(DescriptorError):
    """An Authentic Execution field that only makes sense on SGX or Sancus (or leaks keys)."""


class DescriptorProblems(DescriptorError):
    """A descriptor has several problems: the first is the message, all are in ``problems``."""

    def __init__(self, problems: tuple[DescriptorError, ...]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more: see 'veritee deploy --check')"
        super().__init__(
            first.message + (more if len(problems) > 1 else ""),
            where=first.where,
            field=first.field,
        )
        self.problems = problems


class SourceNotFound(DescriptorError):
    """A module's source is not where the descriptor says (or not one file a build can take)."""


class StateError(AppError):
    """The deployment state file is missing, unreadable, or does not name what was asked."""


class AppAlreadyRunning(StateError):
    """A deploy would replace modules of the app that already run on a node (another
    deployment's, or this state file's without --force): nothing was loaded."""


class NodeError(AppError):
    """A node agent did not answer, or refused a request (its reason is in the message)."""

    exit_code = 11


class NodeUnreachable(NodeError):
    """No node agent answers at the address the descriptor gives."""


class AttestationRefused(AppError):
    """A module's evidence did not appraise as acceptable; it is not connected."""

    exit_code = 7


class KeyMismatch(AttestationRefused):
    """A key a node agent reported differs from the attested one (a swapped key)."""


class EventDropped(AppError):
    """The secure world refused an event (replay, altered, misrouted, malformed)."""

    exit_code = 12

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class TransportError(AppError):
    """Sending to another node agent failed (it is down, or the link broke)."""

    exit_code = 11


class Unauthenticated(NodeError):
    """A request about an app came without its owner's signature (HTTP 401)."""

    status = 401


class BadRequestSignature(Unauthenticated):
    """A signed request whose signature does not verify, or covers another request (401)."""


class StaleRequest(Unauthenticated):
    """A signed request whose time is outside the agent's window (a recorded one, late)."""


class ReplayedRequest(Unauthenticated):
    """A signed request whose nonce the agent has seen within its window (a replay)."""


class TooManyRequests(Unauthenticated):
    """An app's owner spent more nonces within the window than the agent remembers (429)."""

    status = 429


class NotAppOwner(NodeError):
    """A request about an app signed by a key other than the one the app is owned by (403)."""

    status = 403
