"""The RunPod REST API (laptop): pods and network volumes at rest.runpod.io/v1 (platform-facts 8.2)."""

from __future__ import annotations

from typing import Optional

from .base import Provider


class RunPodProvider(Provider):
    """https://rest.runpod.io/v1 (RGT_RUNPOD_API_URL overrides), key RUNPOD_API_KEY as a bearer token."""

    name = "runpod"
    display = "RunPod"
    key_env = "RUNPOD_API_KEY"
    url_env = "RGT_RUNPOD_API_URL"
    default_url = "https://rest.runpod.io/v1"
    verb = "terminate"
    console = "https://www.runpod.io/console/pods (or `runpodctl get pod`)"

    def show(self, instance_id: str) -> Optional[dict]:
        """GET /pods/{id}; None on 404."""
        status, body = self.request("GET", f"/pods/{self.check_id(instance_id)}", missing_ok=True)
        return body if status != 404 and isinstance(body, dict) else None

    def destroy(self, instance_id: str) -> None:
        """DELETE /pods/{id} (terminate: container and volume disks go; network volumes stay)."""
        self.request("DELETE", f"/pods/{self.check_id(instance_id)}", missing_ok=True)

    def is_gone(self, inst: Optional[dict], after_destroy: bool) -> bool:
        """404, or desiredStatus TERMINATED."""
        return inst is None or inst.get("desiredStatus") == "TERMINATED"

    def state_of(self, inst: Optional[dict]) -> str:
        """desiredStatus, or 'unknown to RunPod' (404)."""
        return "unknown to RunPod (404)" if inst is None else f"desiredStatus={inst.get('desiredStatus')}"

    def billables(self) -> list[str]:
        """GET /networkvolumes: network volumes bill until deleted."""
        _status, body = self.request("GET", "/networkvolumes")
        vols = body if isinstance(body, list) else (body or {}).get("networkVolumes") if isinstance(body, dict) else []
        return [f"network volume {v.get('id')} {v.get('name') or ''} ({v.get('size')} GB in {v.get('dataCenterId')}): "
                "bills until you delete it".replace("  ", " ") for v in vols or [] if isinstance(v, dict)]
