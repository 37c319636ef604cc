"""Where an award becomes an envelope and the envelope moves through its states.

Modules: :mod:`~core.envelopes.creation` (input checks, create),
:mod:`~core.envelopes.lifecycle` (get, send, advance, decline, cancel, expire),
:mod:`~core.envelopes.approvals` (view, record an approval, approve),
:mod:`~core.envelopes.sealing` (document timestamp, completion certificate),
:mod:`~core.envelopes.documents` (revisions in the blob store), links and access codes,
deadlines, notifications, recovery, amendments, guarantees, the certificate PDF.
The signatures themselves are applied in :mod:`core.signing`.

Envelope services: create, send, view, approve (and sign), decline, cancel, expire, seal.

Every function takes the session explicitly and is keyword-only. State changes go through
:mod:`core.states`; each change and its audit events commit in one transaction.

Approving is two steps so that a TSA outage never leaves a document half-signed:

1. :func:`record_approval` stores the party's instruction (who, when, from where, how
   authenticated) and moves the party to ``signing``, atomically and exactly once even when the
   same approval is submitted twice at the same moment (a conditional ``UPDATE``).
   A signing task commits with it (:mod:`core.signing.tasks`).
2. The signing worker (:mod:`core.signing.worker`) runs :func:`apply_pending_signature`, which
   signs every document for that party and, in one transaction, points the documents at their
   new revisions, completes the party, closes the task and hands the envelope to the next party.
   When the TSA is down it records the error and leaves the party in ``signing``; the worker
   tries again with backoff. The last party's signature moves the envelope to ``sealing`` (and
   queues a seal task), and :func:`seal_envelope` adds validation data and a document
   timestamp, then issues the completion certificate.
"""

__all__: list[str] = []
