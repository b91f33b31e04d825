"""Who may do what with an image of the internal repository (pure).

An image belongs to the user in its name (`<user>/<name>:<tag>`). Everyone may read (show,
clone) any image; a user changes only their own; `waltplatform` images (the default images
of node models) are changed only by root. The caller is the API's SO_PEERCRED identity.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from waltd.images.store import LocalRef

PLATFORM_USER = "waltplatform"


def may_change(caller_walt_user: str, is_root: bool, ref: LocalRef) -> str | None:
    """None when the caller may change (replace, rename, remove) `ref`, else the refusal."""
    # checked first: a Unix account named `waltplatform` does not own the default images
    if ref.user == PLATFORM_USER:
        if is_root:
            return None
        return (
            f"{ref.display} is a {PLATFORM_USER} image (a default image of node models): "
            "only root may change it"
        )
    if ref.user == caller_walt_user:
        return None
    return (
        f"{ref.display} belongs to user {ref.user}: you ({caller_walt_user}) may change only "
        "your own images; clone it to get a copy of your own"
    )


def may_read(caller_walt_user: str, ref: LocalRef) -> str | None:
    """None: every user may read (show, clone) every image of the repository."""
    return None
