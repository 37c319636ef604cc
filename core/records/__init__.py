"""What is kept and how it is found again: the audit trail, records-law facts and search,
monthly reports, retention, long-term validity (archive timestamps), backups and the
sweep of unreferenced blobs.
"""

__all__: list[str] = []
