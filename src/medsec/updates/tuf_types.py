"""The python-tuf and securesystemslib names the repository side uses, from their defining modules.

``tuf.api.metadata`` and ``securesystemslib.signer`` re-export these without ``__all__``, which
``mypy --strict`` does not count as an export. Importing them here from where they are defined
keeps type checking strict whether or not ``implicit_reexport`` is enabled for those packages.
"""

from __future__ import annotations

from securesystemslib.signer._crypto_signer import CryptoSigner
from securesystemslib.signer._key import Key, SSlibKey
from securesystemslib.signer._signer import Signer
from tuf.api._payload import Delegations, MetaFile, Role, Root, Snapshot, SuccinctRoles, TargetFile, Targets, Timestamp
from tuf.api.metadata import Metadata

__all__ = [
    "CryptoSigner",
    "Delegations",
    "Key",
    "MetaFile",
    "Metadata",
    "Role",
    "Root",
    "SSlibKey",
    "Signer",
    "Snapshot",
    "SuccinctRoles",
    "TargetFile",
    "Targets",
    "Timestamp",
]
