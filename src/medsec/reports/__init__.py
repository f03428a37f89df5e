"""Documents medsec hands to people: status reports, service reports, disclosures.

A report is built once as a :class:`~medsec.reports.document.Document` from live data and
then rendered to HTML (:mod:`medsec.reports.html`) and PDF (:mod:`medsec.reports.pdf`), so
both forms always carry the same figures.
"""
