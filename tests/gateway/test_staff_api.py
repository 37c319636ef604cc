"""``POST /api/v1/staff/import`` over HTTP (SQLite and PostgreSQL): dry run, bad lines (422 with
line numbers, nothing written), skipping them, CP932 multipart, the scope and the allow-lists."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from core.model import ApiClient, AuditEvent, Staff
from core.staff.access import set_client_networks
from core.staff.accounts import add_staff
from tests.gateway.conftest import LiveGateway

URL = "/api/v1/staff/import"
CSV = (
    "氏名,所属,メールアドレス,権限,閲覧範囲\n"
    "田中 一郎,契約課,tanaka@city.example.jp,sender;signer,部署\n"
    "佐藤 花子,総務課,sato@city.example.jp,admin,全体\n"
)
BAD = (
    CSV
    + "鈴木 三郎,土木課,not-an-address,sender,own\n"
    + "高橋,土木課,t@city.example.jp,boss,own\n"
)


def _emails(live: LiveGateway) -> list[str]:
    with live.gateway.sessions() as session:
        return sorted(session.scalars(select(Staff.email)))


def _imports(live: LiveGateway) -> list[AuditEvent]:
    with live.gateway.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == "staff.import")))


def _csv(data: str, encoding: str = "utf-8") -> dict[str, object]:
    return {
        "content": data.encode(encoding),
        "headers": {"Content-Type": f"text/csv; charset={encoding}"},
    }


def test_dry_run_then_import(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    with live.gateway.sessions() as session:
        add_staff(
            session=session,
            name="田中 一郎",
            email="tanaka@city.example.jp",
            roles="sender",
            scope="own",
            department="契約課",
            actor="test",
        )
        add_staff(
            session=session,
            name="退職 者",
            email="gone@city.example.jp",
            roles="sender",
            scope="own",
            actor="test",
        )
        session.commit()
    token = live.token("personnel", ["staff:write"])
    with live.client(token) as api:
        dry = api.post(URL, params={"dry_run": "true", "disable_missing": "true"}, **_csv(CSV))
        assert dry.status_code == 200, dry.text
        body = dry.json()
        assert body["applied"] is False and body["errors"] == [] and body["unchanged"] == 0
        assert [(c["line"], c["email"], c["scope"]) for c in body["created"]] == [
            (3, "sato@city.example.jp", "all")
        ]
        assert body["updated"] == [
            {
                "line": 2,
                "email": "tanaka@city.example.jp",
                "changes": {
                    "roles": {"from": "sender", "to": "sender,signer"},
                    "scope": {"from": "own", "to": "department"},
                },
            }
        ]
        assert body["disabled"] == [{"email": "gone@city.example.jp", "name": "退職 者"}]
        assert _emails(live) == ["gone@city.example.jp", "tanaka@city.example.jp"]  # nothing
        assert _imports(live) == []

        done = api.post(URL, params={"disable_missing": "true"}, **_csv(CSV, "cp932"))
        assert done.status_code == 200 and done.json()["applied"] is True
        assert {k: v for k, v in done.json().items() if k != "applied"} == {
            k: v for k, v in body.items() if k != "applied"
        }
    with live.gateway.sessions() as session:
        staff = {s.email: s for s in session.scalars(select(Staff))}
    assert staff["sato@city.example.jp"].roles == "admin"
    assert staff["tanaka@city.example.jp"].roles == "sender,signer"
    assert staff["gone@city.example.jp"].disabled
    (event,) = _imports(live)
    assert event.actor == "api:personnel" and event.ip in ("127.0.0.1", "::1")
    assert event.detail["created"] == 1 and event.detail["disabled"] == 1


def test_a_bad_line_refuses_the_file_unless_skipped(
    live_gateway: Callable[..., LiveGateway],
) -> None:
    live = live_gateway()
    token = live.token("personnel", ["staff:write"])
    with live.client(token) as api:
        for params in ({}, {"dry_run": "true"}):
            refused = api.post(URL, params=params, **_csv(BAD))
            assert refused.status_code == 422
            error = refused.json()["error"]
            assert error["code"] == "staff.import_invalid"
            assert [(e["line"], e["code"]) for e in error["details"]["errors"]] == [
                (4, "staff.bad_email"),
                (5, "staff.unknown_role"),
            ]
            assert "取り込みませんでした" in error["message_ja"]
        assert _emails(live) == [] and _imports(live) == []

        skipped = api.post(
            URL,
            params={"skip_bad_lines": "true"},
            files={"file": ("職員.csv", BAD.encode("cp932"), "text/csv")},
        )
        assert skipped.status_code == 200, skipped.text
        assert skipped.json()["applied"] is True
        assert [e["line"] for e in skipped.json()["errors"]] == [4, 5]
    assert _emails(live) == ["sato@city.example.jp", "tanaka@city.example.jp"]
    (event,) = _imports(live)
    assert event.detail["skipped_lines"] == [4, 5]


def test_unreadable_requests(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    token = live.token("personnel", ["staff:write"])
    with live.client(token) as api:
        header = api.post(URL, **_csv("name,email\nx,y@example.jp\n"))
        assert header.status_code == 422 and header.json()["error"]["code"] == "staff.import_header"
        wide = api.post(URL, **_csv("name," + "x" * 200_000 + "\n"))
        assert wide.status_code == 422
        assert wide.json()["error"]["code"] == "staff.import_unreadable"
        big = api.post(URL, **_csv("name,department,email,roles,scope\n" + "x" * (1024 * 1024)))
        assert big.status_code == 413
        json_body = api.post(URL, json={"csv": CSV})
        assert json_body.status_code == 415
        no_file = api.post(URL, files={"other": ("a.csv", b"x")})
        assert no_file.status_code == 422 and no_file.json()["error"]["code"] == "request.invalid"
    assert _emails(live) == []


def test_scope_and_allow_lists(live_gateway: Callable[..., LiveGateway]) -> None:
    live = live_gateway()
    envelopes_only = live.token("e-bid")  # the default scopes never include staff:write
    with live.client(envelopes_only) as api:
        refused = api.post(URL, **_csv(CSV))
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "auth.forbidden"
    with live.client() as anonymous:
        assert anonymous.post(URL, **_csv(CSV)).status_code == 401
    token = live.token("personnel", ["staff:write"])
    with live.gateway.sessions() as session:
        client = session.scalars(select(ApiClient).where(ApiClient.name == "personnel")).one()
        set_client_networks(session=session, client=client, networks=["10.0.0.0/8"])
        session.commit()
    with live.client(token) as api:
        outside = api.post(URL, **_csv(CSV))
        assert outside.status_code == 403 and outside.json()["error"]["code"] == "auth.ip_refused"
    assert _emails(live) == []
    fenced = live_gateway(extra='staff:\n  allowed_networks: ["10.0.0.0/8"]\n')
    with fenced.client(fenced.token("hr", ["staff:write"])) as api:
        answer = api.post(URL, **_csv(CSV))
        assert answer.status_code == 403
        assert answer.json()["error"]["code"] == "request.ip_refused"
