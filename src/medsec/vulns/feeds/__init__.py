"""Readers for vulnerability feeds in their upstream formats: OSV, NVD CVE API 2.0, CISA KEV, FIRST EPSS.

Each reader turns files into :mod:`medsec.vulns.model` values. A malformed record raises
:class:`~medsec.vulns.errors.FeedRecordError`, or, when the caller passes an ``errors`` list, is skipped and
its error appended there.
"""
