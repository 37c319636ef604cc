"""The staff pages (``/admin/...``): login, envelope list and search, detail, downloads, cancel,
the monthly report; and the IP allow-list in front of them and the API."""

from gateway.admin.allow_list import install_allow_list
from gateway.admin.pages import router

__all__ = ["install_allow_list", "router"]
