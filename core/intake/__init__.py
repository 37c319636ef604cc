"""Where an award enters: awards and their release into envelopes, contractors and their
usage requests (consent), and the record of each intake run.

Modules: :mod:`~core.intake.awards` (intake, waiting, release, remap),
:mod:`~core.intake.contractors` (corporate-number identity, registered addresses, usage
requests), :mod:`~core.intake.consent` (contract types, 建設業法19条3項),
:mod:`~core.intake.runs` (runs, dead letters, cursors).

Intake: awards, contractors' registered addresses and usage requests into the database.

Idempotent on (source, award id): a record seen before with the same content changes nothing; a
changed award updates its draft envelope, but never one already sent (the change is kept on the
award, reported and left for staff). An award becomes an envelope only when its contractor's
usage request (電子契約利用申出書 / 承諾書) is there and every required contract PDF has been
fetched; until then it waits, visibly (:class:`~core.model.AwardState`), and is released by a
later run or the moment the usage request arrives.

Contract PDFs are fetched when the award is first taken in (or changes) and kept encrypted in
the blob store, so a source that moves or deletes its files afterwards loses nothing.

Sync runs, their counts and their line errors (the dead-letter store) are recorded here too, as
are source cursors, stored in the transaction that commits the records they cover.
"""

__all__: list[str] = []
