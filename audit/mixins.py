"""Admin and API views write their changes' audit rows in the change's own transaction."""

from __future__ import annotations

from typing import Any

from audit.capture import collecting


class AuditedAdminMixin:
    def changeform_view(self, *args: Any, **kwargs: Any) -> Any:
        with collecting():
            return super().changeform_view(*args, **kwargs)  # type: ignore[misc]

    def delete_view(self, *args: Any, **kwargs: Any) -> Any:
        with collecting():
            return super().delete_view(*args, **kwargs)  # type: ignore[misc]

    def changelist_view(self, *args: Any, **kwargs: Any) -> Any:
        with collecting():  # actions and list edits
            return super().changelist_view(*args, **kwargs)  # type: ignore[misc]


class AuditedViewSetMixin:
    def dispatch(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        with collecting():
            return super().dispatch(request, *args, **kwargs)  # type: ignore[misc]
