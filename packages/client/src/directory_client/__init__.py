"""Client of a Counterpart node: lookups whose answers are verified, not trusted.

``DirectoryClient`` calls a node's DirectoryService; ``verify_answer`` checks an answer's
signatures and Merkle proofs against a pinned federation document; ``counterpart`` is
the command line built on both (``directory_client.cli``).
"""

from directory_client.client import DirectoryClient, load_pinned, pin
from directory_client.errors import (
    ClientError,
    InvalidName,
    NotTrusted,
    ServerError,
    TrustRefused,
    VerificationFailed,
)
from directory_client.verify import MemberStatus, Verification, verify_answer, verify_response

__all__ = [
    "ClientError",
    "DirectoryClient",
    "InvalidName",
    "MemberStatus",
    "NotTrusted",
    "ServerError",
    "TrustRefused",
    "Verification",
    "VerificationFailed",
    "load_pinned",
    "pin",
    "verify_answer",
    "verify_response",
]
