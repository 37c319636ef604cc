"""What the HTTP app shares across requests: the gateway, the access-code policy, the cookie
signer, templates, the page renderer and the mail worker."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from core.envelopes.labels import action_ja
from core.envelopes.links import AccessCodePolicy
from core.staff.accounts import roles_ja, scope_ja
from core.states import party_role_ja
from gateway.background import SigningWorker
from gateway.mailer import MailDispatcher, jst
from gateway.pages.cookies import CookieSigner
from gateway.pages.render import PageRenderer
from gateway.runtime import Gateway

if TYPE_CHECKING:  # the sinks (and their transports) are imported only when configured
    from gateway.sinks import PushbackWorker

TEMPLATES = Path(__file__).parent / "templates"


def page_templates(override_dir: Path | None) -> jinja2.Environment:
    """HTML templates (autoescaped); an admin's folder overrides any built-in one."""
    loaders: list[jinja2.BaseLoader] = []
    if override_dir is not None:
        loaders.append(jinja2.FileSystemLoader(str(override_dir)))
    loaders.append(jinja2.FileSystemLoader(str(TEMPLATES)))
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    env.filters["jst"] = jst
    # Codes staff would otherwise read in English on their pages.
    env.filters["roles_ja"] = roles_ja
    env.filters["scope_ja"] = scope_ja
    env.filters["party_role_ja"] = party_role_ja
    env.filters["action_ja"] = action_ja
    return env


@dataclass
class AppContext:
    """Shared by every request of one app."""

    gateway: Gateway
    policy: AccessCodePolicy
    cookies: CookieSigner
    templates: jinja2.Environment
    pages: PageRenderer
    dispatcher: MailDispatcher | None
    signer: SigningWorker | None
    trusted_proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network]
    secure_cookies: bool
    session_seconds: int
    extra: dict[str, Any] = field(default_factory=dict)
    pushback: PushbackWorker | None = None

    def wake_mailer(self) -> None:
        """Have the mail worker look for new mail now (after a request queued some)."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    def wake_pushback(self) -> None:
        """Have the push-back dispatcher look for due deliveries now (an envelope was sealed)."""
        if self.pushback is not None:
            self.pushback.wake()

    def wake_signer(self) -> None:
        """Have the signing worker apply new approvals now (after a request committed one)."""
        if self.signer is not None:
            self.signer.wake()
