"""The staff pages (``/admin/...``): login, envelope list and search, detail, downloads, cancel,
the monthly report, the address book and create-and-send; and the IP allow-list in front of them
and the API."""

from fastapi import APIRouter

from gateway.admin import address_book, compose, copies, guarantees, pages, recovery, signing
from gateway.admin.allow_list import install_allow_list

router = APIRouter()
# Create-and-send first: /admin/envelopes/new must not be taken for an envelope id.
router.include_router(compose.router)
router.include_router(address_book.router)
router.include_router(pages.router)
router.include_router(signing.router)
router.include_router(recovery.router)
router.include_router(guarantees.router)
router.include_router(copies.router)

__all__ = ["install_allow_list", "router"]
