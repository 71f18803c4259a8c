"""How a policy fails while a request runs: :class:`PolicyFailure`.

A failing statement raises :class:`PolicyFailure`; the engine turns it into
``context.LastError`` (``Source`` = the policy element, ``Reason``, ``Message``, ``Section``,
``Path``, ``PolicyId``, ``Scope``) and runs the ``<on-error>`` section. When no ``on-error``
statement builds a response of its own, the client gets the failure's *default response*:
``status`` with the JSON body ``{"statusCode": status, "message": public_message,
"reason": reason}``.

``public_message`` is what the client may see; ``message`` (the ``LastError.Message``) may say
more. They differ for expression failures: the client gets "Internal server error" and never
a .NET exception text, a traceback or any policy source; ``on-error`` can still read the
detail in ``context.LastError.Message`` and choose to show it.

Load-time problems are not raised from here: the document compiler reports them as
:class:`tlsgate.config.errors.Problem` (``FILE:LINE:COL: message``).
"""

from __future__ import annotations

# Reasons of policy failures, as ``context.LastError.Reason`` and the access log show them.
EXPRESSION_FAILURE = "ExpressionValueEvaluationFailure"
HEADER_NOT_FOUND = "HeaderNotFound"
HEADER_VALUE_NOT_ALLOWED = "HeaderValueNotAllowed"
CERTIFICATE_MISSING = "ClientCertificateMissing"
CERTIFICATE_NOT_TRUSTED = "ClientCertificateNotTrusted"
CERTIFICATE_EXPIRED = "ClientCertificateExpired"
CERTIFICATE_NOT_YET_VALID = "ClientCertificateNotYetValid"
CERTIFICATE_REVOKED = "ClientCertificateRevoked"
CERTIFICATE_REVOCATION_UNKNOWN = "ClientCertificateRevocationUnknown"
CERTIFICATE_IDENTITY_MISMATCH = "ClientCertificateIdentityMismatch"
CERTIFICATE_REASONS = (
    CERTIFICATE_MISSING, CERTIFICATE_NOT_TRUSTED, CERTIFICATE_EXPIRED, CERTIFICATE_NOT_YET_VALID,
    CERTIFICATE_REVOKED, CERTIFICATE_REVOCATION_UNKNOWN, CERTIFICATE_IDENTITY_MISMATCH,
)

INTERNAL_ERROR_MESSAGE = "Internal server error"


class PolicyFailure(Exception):
    """A statement failed: what ``context.LastError`` shows and what the client gets by
    default. ``section`` is filled in by the engine."""

    def __init__(self, *, source: str, reason: str, message: str, status: int,
                 public_message: str | None = None, policy_id: str = "", path: str = "",
                 scope: str = "") -> None:
        super().__init__(f"{source}: {reason}: {message}")
        self.source = source
        self.reason = reason
        self.message = message
        self.status = status
        self.public_message = message if public_message is None else public_message
        self.policy_id = policy_id
        self.path = path
        self.scope = scope
        self.section = ""
