"""The vast.ai REST API (laptop): show, destroy and volumes, as vast-cli calls them (platform-facts 8.1)."""

from __future__ import annotations

from typing import Optional

from .base import Provider, ProviderError

# After a destroy the instance is gone once it is unknown (404 or "instances": null), unloaded, or its
# actual_status is destroyed, exited or null (platform-facts section 7).
GONE_AFTER_DESTROY = (None, "destroyed", "exited")


class VastProvider(Provider):
    """https://console.vast.ai/api/v0 (RGT_VAST_API_URL overrides), key VAST_API_KEY as a bearer token."""

    name = "vastai"
    display = "vast.ai"
    key_env = "VAST_API_KEY"
    url_env = "RGT_VAST_API_URL"
    default_url = "https://console.vast.ai/api/v0"
    verb = "destroy"
    console = "https://cloud.vast.ai/instances/ (or `vastai show instances`)"

    def show(self, instance_id: str) -> Optional[dict]:
        """GET /instances/{id}/?owner=me; None when vast no longer knows it."""
        status, body = self.request("GET", f"/instances/{self.check_id(instance_id)}/", params={"owner": "me"},
                                    missing_ok=True)
        if status == 404 or not isinstance(body, dict):
            return None
        inst = body.get("instances")
        return inst if isinstance(inst, dict) else None

    def destroy(self, instance_id: str) -> None:
        """DELETE /instances/{id}/."""
        status, body = self.request("DELETE", f"/instances/{self.check_id(instance_id)}/", body={},
                                    missing_ok=True)
        if status != 404 and isinstance(body, dict) and body.get("success") is False:
            raise ProviderError(f"vast.ai refused to destroy instance {instance_id}: {body.get('msg') or body}")

    def is_gone(self, inst: Optional[dict], after_destroy: bool) -> bool:
        """Unknown or unloaded always; destroyed, exited or null status only once we asked for the destroy."""
        if inst is None or inst.get("cur_state") in ("unloaded", "destroyed"):
            return True
        return after_destroy and inst.get("actual_status") in GONE_AFTER_DESTROY

    def state_of(self, inst: Optional[dict]) -> str:
        """actual_status / cur_state, or 'unknown to vast.ai'."""
        if inst is None:
            return "unknown to vast.ai"
        return f"actual_status={inst.get('actual_status')}, cur_state={inst.get('cur_state')}"

    def billables(self) -> list[str]:
        """GET /volumes?owner=me&type=all_volume: volumes bill per GB until deleted."""
        _status, body = self.request("GET", "/volumes", params={"owner": "me", "type": "all_volume"})
        vols = body.get("volumes") if isinstance(body, dict) else None
        return [f"volume {v.get('id')} {v.get('label') or ''} ({v.get('disk_space')} GB, {v.get('status')}): "
                "bills per GB until you delete it (`vastai delete volume ID`)".replace("  ", " ")
                for v in vols or [] if isinstance(v, dict)]
