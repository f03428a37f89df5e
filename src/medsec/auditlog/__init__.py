"""Tamper-evident logs: RFC 9162 Merkle trees, C2SP checkpoints, witnesses and exports.

``merkle`` is the pure core; ``note``, ``checkpoint`` and ``witness`` implement
the C2SP signed-note, tlog-checkpoint and tlog-cosignature formats; ``store``
is the crash-safe file-backed log; ``export`` builds and verifies offline
bundles of entries with their proofs.
"""

from medsec.auditlog.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from medsec.auditlog.export import EXPORT_FORMAT, ExportSummary, build_export, verify_export
from medsec.auditlog.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    MemoryNodes,
    NodeReader,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    nodes_for_append,
    range_root,
    root,
    verify_consistency,
    verify_inclusion,
)
from medsec.auditlog.note import (
    SIG_TYPE_COSIGNATURE_V1,
    SIG_TYPE_ED25519,
    NoteSignature,
    NoteSigner,
    NoteVerifier,
    key_id,
    open_note,
    parse_note,
)
from medsec.auditlog.store import FileLog
from medsec.auditlog.witness import (
    FileWitnessState,
    MemoryWitnessState,
    TreeHead,
    Witness,
    WitnessState,
    verify_cosignature,
)

__all__ = [
    "EMPTY_ROOT",
    "EXPORT_FORMAT",
    "HASH_SIZE",
    "SIG_TYPE_COSIGNATURE_V1",
    "SIG_TYPE_ED25519",
    "Checkpoint",
    "ExportSummary",
    "FileLog",
    "FileWitnessState",
    "MemoryNodes",
    "MemoryWitnessState",
    "NodeReader",
    "NoteSignature",
    "NoteSigner",
    "NoteVerifier",
    "TreeHead",
    "Witness",
    "WitnessState",
    "build_export",
    "consistency_proof",
    "inclusion_proof",
    "key_id",
    "leaf_hash",
    "node_hash",
    "nodes_for_append",
    "open_note",
    "parse_note",
    "range_root",
    "root",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_cosignature",
    "verify_export",
    "verify_inclusion",
]
