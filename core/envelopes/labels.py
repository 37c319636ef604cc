"""Japanese labels for operations and authentication means (audit views, certificates)."""

from __future__ import annotations

from core.envelopes.approvals import AUTH_ACCESS_CODE, AUTH_STAFF, AUTH_STAFF_TOTP
from core.model import Party
from core.states import PartyRole

__all__ = [
    "action_ja",
    "auth_method_ja",
    "party_auth_ja",
]


def party_auth_ja(party: Party) -> str:
    """How a party signs, as staff read it: 職員ログイン or メール＋アクセスコード."""
    if party.role is PartyRole.CC:
        return "(写し送付のみ)"
    return "職員ログイン" if party.staff_id is not None else "メールのURL＋アクセスコード"


_METHOD_JA = {
    AUTH_ACCESS_CODE: "メール認証＋アクセスコード",
    AUTH_STAFF: "職員ログイン(署名時にパスワードを再入力)",
    AUTH_STAFF_TOTP: "職員ログイン(署名時にパスワード＋確認コードを再入力)",
}

_ACTION_JA = {
    "envelope.created": "作成",
    "envelope.sent": "送信",
    "party.approved": "承認",
    "party.declined": "却下",
    "envelope.completed": "タイムスタンプ付与・締結",
}


_AUDIT_JA = {
    **_ACTION_JA,
    "envelope.completed": "締結(タイムスタンプ付与)",
    "envelope.cancelled": "取消",
    "envelope.expired": "期限切れ",
    "envelope.deadline_extended": "締切日の変更",
    "party.requested": "署名依頼",
    "party.notified": "写しの通知",
    "party.viewed": "初回閲覧",
    "documents.viewed": "文書の閲覧",
    "document.downloaded": "文書のダウンロード",
    "party.authenticated": "本人確認",
    "party.code_failed": "アクセスコード誤り",
    "party.locked": "URLのロック",
    "party.unlocked": "ロック解除",
    "party.reauth_failed": "署名時の本人確認失敗",
    "party.signed": "電子署名の付与",
    "party.forwarded": "転送",
    "party.resent": "再送",
    "party.reminded": "再通知",
    "party.corrected": "宛先の訂正",
    "party.replaced": "署名者の変更",
    "party.access_code_changed": "アクセスコードの変更",
    "envelope.amends": "変更契約として作成",
    "envelope.copy_requested": "最新文書の案内を送信",
    "envelope.facts_corrected": "検索項目(取引年月日・金額・取引先)の訂正",
    "envelope.updated_from_award": "落札情報の変更を反映",
    "document.retimestamped": "タイムスタンプの更新",
    "retention.purged": "保存期間満了による文書の削除",
    "guarantee.added": "電子保証の登録",
    "guarantee.removed": "電子保証の削除",
    "guarantee.verified": "電子保証の確認",
    "award.released": "落札案件の作成再開",
    "award.dismissed": "落札案件の取り下げ",
    "award.remapped": "落札案件の再マッピング",
    "award.access_code_set": "落札案件のアクセスコード設定",
    "award.change_rejected": "落札情報の変更を拒否",
    "consent.withdrawn": "承諾の撤回",
    "contractor.conflict_resolved": "業者の重複の解消",
    "address_book.add": "アドレス帳に追加",
    "address_book.update": "アドレス帳の変更",
    "address_book.delete": "アドレス帳から削除",
    "address_book.import": "アドレス帳の一括登録",
    "address_book.export": "アドレス帳の出力",
    "api.locked": "APIの利用停止中のアクセス",
    "api.lockout": "APIの利用停止",
    "api_client.networks": "API接続元の変更",
    "blobs.swept": "不要な文書ファイルの削除",
    "login": "ログイン",
    "login.failed": "ログイン失敗",
    "login.locked": "ロック中のログイン",
    "login.lockout": "ログインのロック",
    "login.totp_reused": "使用済みの確認コードによるログイン",
    "settings.changed": "設定の変更",
    "logout": "ログアウト",
    "outbox.retry": "送信の再試行",
    "source.cursor_reset": "取込位置のリセット",
    "staff.add": "職員の追加",
    "staff.update": "職員の変更",
    "staff.import": "職員の一括登録",
    "staff.password_set": "パスワードの設定",
    "staff.sessions_ended": "ログインの強制終了",
    "staff.totp_enabled": "確認コードの設定",
    "staff.totp_disabled": "確認コードの解除",
    "signing.deferred": "署名処理の延期(再試行)",
    "staff.view": "職員の閲覧",
    "staff.download": "職員のダウンロード",
    "staff.download_certificate": "締結証明書のダウンロード",
    "award.envelope_created": "落札情報から作成",
    "link.opened_closed": "終了後のURLアクセス",
    "download.viewed": "ダウンロード画面の表示",
    "certificate.downloaded": "締結証明書のダウンロード",
    "certificate.reissued": "締結証明書の再発行",
}


def action_ja(action: str) -> str:
    """The Japanese label staff see for an audit action (the code itself when none)."""
    return _AUDIT_JA.get(action, action)


def auth_method_ja(method: str | None) -> str:
    """The Japanese label for how a party was authenticated."""
    if not method:
        return ""
    return _METHOD_JA.get(method, method)
