"""Database schema of generated reports: every security status report, kept so it can be downloaded
and verified again (RA-6).

Kept apart from ``models.py`` so reports migrate on their own branch (revision 0007). A row is written
once, in the transaction that appended its audit entries, and never changed.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from medsec.server.db import Base
from medsec.server.models import UTCDateTime


class StatusReport(Base):
    """One signed security status report of one hospital: the three files and the signed statement."""

    __tablename__ = "status_reports"
    __table_args__ = (Index("ix_status_reports_organization_id_generated_at", "organization_id", "generated_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)  # sr-<hex>
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id"))
    lang: Mapped[str] = mapped_column(String(8))
    generated_by: Mapped[str] = mapped_column(String(64))
    generated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    content_sha256: Mapped[str] = mapped_column(String(64))
    pdf_sha256: Mapped[str] = mapped_column(String(64))
    html_sha256: Mapped[str] = mapped_column(String(64))
    json_sha256: Mapped[str] = mapped_column(String(64))
    envelope_sha256: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str] = mapped_column(String(64))
    audit_index: Mapped[int] = mapped_column(BigInteger)
    pdf: Mapped[bytes] = mapped_column(LargeBinary)
    html: Mapped[bytes] = mapped_column(LargeBinary)
    json: Mapped[bytes] = mapped_column(LargeBinary)
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
