"""The source record kept on an award for re-mapping: attachments by SHA-256, put back from the
award's documents; other values as they were."""

from __future__ import annotations

import base64
import hashlib
import secrets

from core.blobs import BlobStore
from core.intake.awards import compact_record, restore_record
from core.model import Award, AwardDocument
from tests.fixtures.pdfs import make_pdf


def test_attachments_are_kept_by_hash_and_put_back_from_the_awards_documents(
    blobs: BlobStore,
) -> None:
    pdf, other = make_pdf(pages=1), make_pdf(pages=2)
    long_text = base64.b64encode(secrets.token_bytes(6000)).decode()  # decodes, but no PDF
    record = {
        "案件番号": "R7-1",
        "落札金額": "",
        "contractPdf": base64.b64encode(pdf).decode(),
        "raw": other,
        "備考": long_text,
        "コード": "****",
    }
    kept = compact_record(record)
    assert kept["contractPdf"] == {"$award_document_sha256": hashlib.sha256(pdf).hexdigest()}
    assert kept["raw"] == {"$award_document_sha256": hashlib.sha256(other).hexdigest()}
    assert kept["備考"] == long_text and kept["コード"] == "****" and kept["落札金額"] == ""

    award = Award(record=kept)
    award.documents = [
        AwardDocument(position=0, name="契約書", origin="attachment", blob_id=blobs.put(pdf),
                      sha256=hashlib.sha256(pdf).hexdigest(), size=len(pdf)),
    ]  # fmt: skip
    restored = restore_record(award=award, blobs=blobs)
    assert restored is not None
    assert base64.b64decode(restored["contractPdf"]) == pdf
    assert restored["raw"] is None  # no document holds those bytes any more
    assert restored["備考"] == long_text and restored["案件番号"] == "R7-1"
    assert restore_record(award=Award(record=None), blobs=blobs) is None
