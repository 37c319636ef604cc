"""The signing worker through the surfaces people use: a TSA outage while signers click
「署名手続きを完了する」 on the signing pages. Their click returns at once, the done page says
署名処理中 and refreshes itself, /metrics and /healthz tell operators, and once the TSA answers
again every committed approval ends signed and the envelope sealed, without anyone acting."""

from __future__ import annotations

import mailbox
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from core.envelopes.documents import read_document
from core.envelopes.lifecycle import get_envelope
from core.model import Base
from core.signing import verify_pdf
from core.storage import create_database_engine, migrate
from gateway.app import build_mail_handler, create_app
from gateway.mailer import MailDispatcher
from gateway.runtime import Gateway, open_gateway
from gateway.server import serve_in_thread
from gateway.settings import load_settings
from tests.fixtures.gateway import SECRETS, envelope_request, new_token, write_config
from tests.fixtures.pdfs import make_pdf
from tests.fixtures.pki import P12_PASSPHRASE, LivePki

LINK = re.compile(r"https?://\S+/sign/\S+")


@dataclass
class Site:
    gateway: Gateway
    url: str
    maildir: Path
    pki: LivePki

    def mail_to(self, address: str) -> str:
        """The signing link of the newest request mail to ``address`` (sends queued mail)."""
        MailDispatcher(self.gateway.sessions, build_mail_handler(self.gateway), 1).run_once()
        box = mailbox.Maildir(str(self.maildir), create=False)
        try:
            bodies = [
                m.get_payload(decode=True).decode()  # type: ignore[union-attr]
                for m in box
                if address in str(m["To"]) and not m.is_multipart()
            ]
        finally:
            box.close()
        links = [link for body in bodies for link in LINK.findall(body)]
        assert links, f"no signing link mailed to {address}"
        return links[-1]


@pytest.fixture
def site(tmp_path: Path, db_engine: Engine, test_pki: LivePki) -> Iterator[Site]:
    """A gateway signing with the test PKI's key and its flaky TSA (certomancer), served on
    loopback with the signing worker running (looking every 0.2 s, alerting after 1 s)."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"""
environment: development
buyer:
  name: "開発市"
database:
  url: "{db_engine.url.render_as_string(hide_password=False)}"
blobs:
  path: blobs
  master_key: ${{TEST_MASTER_KEY}}
signing:
  key:
    kind: pkcs12
    path: {test_pki.signer_p12()}
    passphrase: ${{TEST_P12}}
  trust_roots: [{test_pki.pem_path("root")}]
  tsa:
    urls: [{test_pki.flaky_tsa_url}]
    timeout_seconds: 2
    attempts: 1
  worker:
    interval_seconds: 0.2
    lease_seconds: 30
    alert_after_seconds: 1
mail:
  maildir: mail
  sender: keiyaku@city.example.jp
server:
  public_url: "http://testserver"
  session_key: ${{TEST_SESSION_KEY}}
""",
        encoding="utf-8",
    )
    settings = load_settings(config, environ={**SECRETS, "TEST_P12": P12_PASSPHRASE.decode()})
    gateway = open_gateway(settings)
    try:
        with serve_in_thread(create_app(gateway, run_mailer=False)) as url:
            yield Site(gateway, url, tmp_path / "mail", test_pki)
    finally:
        test_pki.flaky.fail_next(0)
        gateway.close()


def _sign_in(site: Site, link: str, code: str) -> httpx.Client:
    client = httpx.Client(base_url=site.url, timeout=60, follow_redirects=False)
    path = link.split("testserver", 1)[1]
    page = client.get(path)
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None, page.text
    answer = client.post(path, data={"access_code": code, "csrf_token": csrf.group(1)})
    assert answer.status_code == 303, answer.text
    return client


def _complete(client: httpx.Client, link: str) -> tuple[httpx.Response, float]:
    path = link.split("testserver", 1)[1]
    documents = client.get(f"{path}/documents")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', documents.text)
    assert csrf is not None
    fields = re.findall(r'name="(field_[0-9a-f]+)"', documents.text)
    form = {"csrf_token": csrf.group(1), **dict.fromkeys(fields, "令和8年12月7日")}
    started = time.monotonic()
    answer = client.post(f"{path}/complete", data=form)
    return answer, time.monotonic() - started


def _done_heading(client: httpx.Client, link: str) -> str:
    page = client.get(link.split("testserver", 1)[1] + "/done")
    assert page.status_code == 200, page.text
    heading = re.search(r'<h1 id="status">([^<]+)</h1>', page.text)
    assert heading is not None, page.text
    if heading.group(1) == "署名処理中":
        assert '<meta http-equiv="refresh"' in page.text  # the page refreshes itself
    return heading.group(1)


def _wait_for(predicate: object, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_tsa_outage_never_strands_an_approval(site: Site) -> None:
    token = new_token(site.gateway, "e-bid")
    api = httpx.Client(base_url=site.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    created = api.post("/api/v1/envelopes", json=envelope_request(send=True))
    assert created.status_code == 201, created.text
    envelope_id = created.json()["id"]

    # The TSA fails (503) from now on; the approver's click still returns at once.
    site.pki.flaky.fail_next(1_000_000)
    link = site.mail_to("kacho@city.example.jp")
    approver = _sign_in(site, link, "1111")
    answer, seconds = _complete(approver, link)
    assert answer.status_code == 303 and answer.headers["location"].endswith("/done")
    assert seconds < 2.0  # no TSA round trip (nor its 2 s timeout) inside the click
    assert _done_heading(approver, link) == "署名処理中"

    # Operators see it: the envelope keeps the error, /metrics counts it, /healthz degrades.
    def deferred() -> bool:
        body = api.get(f"/api/v1/envelopes/{envelope_id}").json()
        return body["parties"][0]["state"] == "signing" and bool(body.get("last_error"))

    _wait_for(deferred, 20)
    metrics = httpx.get(f"{site.url}/metrics").text
    waiting = re.search(r'keiyaku_signing_waiting\{age="lt_1m"\} (\d+)', metrics)
    assert waiting is not None and int(waiting.group(1)) == 1
    time.sleep(1.2)  # past signing.worker.alert_after_seconds
    health = httpx.get(f"{site.url}/healthz").json()
    assert health["status"] == "degraded"
    assert health["checks"]["signing"]["status"] == "down"
    assert health["checks"]["tsa"]["status"] == "down"  # a real timestamp request failed

    # The TSA answers again: the worker signs without anyone acting; the page says 完了.
    site.pki.flaky.fail_next(0)
    _wait_for(lambda: _done_heading(approver, link) == "署名手続きが完了しました", 90)
    health = httpx.get(f"{site.url}/healthz").json()
    assert health["checks"]["signing"]["status"] == "ok"

    # The contractor and the official sign while the TSA fails again, then it recovers:
    # every approval ends signed and the envelope sealed.
    for address, code in (("ichiro@takahashi.example.co.jp", "2468"),):
        site.pki.flaky.fail_next(1_000_000)
        link = site.mail_to(address)
        client = _sign_in(site, link, code)
        answer, seconds = _complete(client, link)
        assert answer.status_code == 303 and seconds < 2.0
        site.pki.flaky.fail_next(0)
        _wait_for(lambda c=client, lk=link: _done_heading(c, lk) == "署名手続きが完了しました", 90)
    link = site.mail_to("shicho@city.example.jp")
    official = _sign_in(site, link, "3333")
    site.pki.flaky.fail_next(1_000_000)
    answer, _seconds = _complete(official, link)
    assert answer.status_code == 303
    time.sleep(1.0)
    assert api.get(f"/api/v1/envelopes/{envelope_id}").json()["state"] == "sent"
    site.pki.flaky.fail_next(0)
    _wait_for(
        lambda: api.get(f"/api/v1/envelopes/{envelope_id}").json()["state"] == "completed", 90
    )
    body = api.get(f"/api/v1/envelopes/{envelope_id}").json()
    assert all(p["state"] == "completed" for p in body["parties"])
    for position in range(len(body["documents"])):
        pdf = api.get(f"/api/v1/envelopes/{envelope_id}/documents/{position}")
        assert pdf.status_code == 200
        report = verify_pdf(pdf.content, trust_roots=[site.pki.root])
        assert report.ok, report.as_dict()
        assert sum(1 for s in report.signatures if s.kind == "approval") == 3
    metrics = httpx.get(f"{site.url}/metrics").text
    assert "keiyaku_signing_oldest_waiting_seconds 0.0" in metrics
    for opened in (api, approver, client, official):
        opened.close()


def _documents(site: Site, envelope_id: str) -> list[bytes]:
    """The envelope's documents as the next signer's page reads them (not completed yet, so
    the API does not hand them out)."""
    with site.gateway.sessions() as session:
        envelope = get_envelope(session=session, envelope_id=envelope_id)
        return [read_document(runtime=site.gateway.runtime, document=d) for d in envelope.documents]


@contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Callable[[str], None]]:
    """A real small file system at ``path`` (tmpfs), to fill and to make read-only; yields a
    function that remounts it with other options. Needs root (CI runs as root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)

    try:
        yield remount
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_then_read_only_disk_answers_503_and_signing_completes(site: Site) -> None:
    """The blob store on a real full, then read-only, file system: creates answer 503 with the
    coded error and Retry-After and leave no file behind. An approval made while the disk is
    read-only is signed all the same: its signature commits with its blob in the database
    (core.staged_blobs), the document downloads from there, and the blob's file is written
    once the disk is writable again."""
    token = new_token(site.gateway, "e-bid")
    store = site.gateway.runtime.blobs.root
    with (
        httpx.Client(
            base_url=site.url, headers={"Authorization": f"Bearer {token}"}, timeout=60
        ) as api,
        _tmpfs(store, "96k") as remount,
    ):
        big = envelope_request(pdfs=[make_pdf(pages=1, size_target=300_000), make_pdf(pages=1)])
        full = api.post("/api/v1/envelopes", json=big)
        assert full.status_code == 503, full.text
        assert full.json()["error"]["code"] == "storage.full"
        assert full.headers["Retry-After"].isdigit()
        assert "保存領域" in full.json()["error"]["message_ja"]
        assert [p for p in store.rglob("*") if p.is_file()] == []  # nothing half-written
        assert api.get("/api/v1/envelopes").json()["total"] == 0

        remount("size=64m")
        created = api.post("/api/v1/envelopes", json=envelope_request(send=True))
        assert created.status_code == 201, created.text
        envelope_id = created.json()["id"]
        remount("ro")
        refused = api.post("/api/v1/envelopes", json=envelope_request())
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage.read_only"
        files = sorted(p.name for p in store.rglob("*") if p.is_file())

        link = site.mail_to("kacho@city.example.jp")
        approver = _sign_in(site, link, "1111")
        answer, _seconds = _complete(approver, link)
        assert answer.status_code == 303
        _wait_for(lambda: _done_heading(approver, link) == "署名手続きが完了しました", 90)
        body = api.get(f"/api/v1/envelopes/{envelope_id}").json()
        assert body["parties"][0]["state"] == "completed" and body["last_error"] is None
        # nothing could be written to the store: the signed document comes from the database
        assert sorted(p.name for p in store.rglob("*") if p.is_file()) == files
        with site.gateway.sessions() as session:
            staged = session.execute(text("SELECT count(*) FROM staged_blobs")).scalar()
        documents = range(len(body["documents"]))
        assert staged == len(documents)  # one signature revision per document
        # what operators watch: held blobs, and for how long (the disk needs them)
        assert (
            f"keiyaku_staged_blobs {float(len(documents))}" in httpx.get(f"{site.url}/metrics").text
        )
        signed = _documents(site, envelope_id)
        for pdf in signed:
            report = verify_pdf(pdf, trust_roots=[site.pki.root])
            (signature,) = report.signatures
            assert signature.kind == "approval" and signature.intact and signature.trusted
            assert signature.timestamp_valid and not report.unsigned_bytes

        remount("rw")

        def flushed() -> bool:
            with site.gateway.sessions() as session:
                return session.execute(text("SELECT count(*) FROM staged_blobs")).scalar() == 0

        _wait_for(flushed, 90)  # the signing worker's next pass writes the file durably
        metrics = httpx.get(f"{site.url}/metrics").text
        assert "keiyaku_staged_blobs 0.0" in metrics
        assert "keiyaku_staged_blob_oldest_seconds 0.0" in metrics
        assert len([p for p in store.rglob("*") if p.is_file()]) == len(files) + len(documents)
        site.gateway.runtime.blobs.fallback = None  # the files alone, now
        assert _documents(site, envelope_id) == signed
        approver.close()


@pytest.mark.postgres
def test_a_lock_held_elsewhere_answers_503_in_time_not_a_hang(
    tmp_path: Path, test_pki: LivePki, request: pytest.FixtureRequest
) -> None:
    """PostgreSQL: a table locked by another session makes the API answer 503 database.timeout
    within the configured lock timeout; backends terminated under the app are replaced."""
    url = request.getfixturevalue("postgres_url")
    engine = create_database_engine(url)
    migrate(engine)
    config = write_config(
        tmp_path,
        request.getfixturevalue("devpki"),
        database_url=url,
        extra="",
    )
    text_config = config.read_text(encoding="utf-8").replace(
        f'  url: "{url}"\n', f'  url: "{url}"\n  lock_timeout_seconds: 1\n'
    )
    config.write_text(text_config, encoding="utf-8")
    gateway = open_gateway(load_settings(config, environ=SECRETS))
    try:
        with serve_in_thread(create_app(gateway, run_mailer=False)) as base:
            token = new_token(gateway, "e-bid")
            client = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            assert client.post("/api/v1/envelopes", json=envelope_request()).status_code == 201
            with engine.connect() as holder:
                holder.execute(text("LOCK TABLE envelopes IN ACCESS EXCLUSIVE MODE"))
                started = time.monotonic()
                answer = client.get("/api/v1/envelopes")
                waited = time.monotonic() - started
                holder.rollback()
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "database.timeout"
            assert answer.headers["Retry-After"].isdigit()
            assert waited < 10
            # Every backend of this database killed (an admin, a failover): the next requests
            # work again on fresh connections.
            with engine.connect() as admin:
                admin.execute(
                    text(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                )
            answers = [client.get("/api/v1/envelopes").status_code for _ in range(3)]
            assert answers[-1] == 200 and all(a in (200, 503) for a in answers)
            client.close()
    finally:
        gateway.close()
        with engine.begin() as conn:
            tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY"))
        engine.dispose()
