"""GPU sentinel on the box: health of every GPU through the NVML adapter; a dead GPU is a ``gpu_fault``."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from rgt.shared.status import Gpu

from ..nvml import BAD_THROTTLE, FATAL_XIDS, GpuLost, Nvml, NvmlUnavailable
from .alert import Alert

_GPU_FIELDS = ("uuid", "name", "util_pct", "mem_used_bytes", "mem_total_bytes", "temp_c", "power_w",
               "sm_clock_mhz", "sm_clock_max_mhz", "throttle_reasons", "ecc_uncorrected")


class GpuSentinel:
    """Per GPU: critical ``gpu_fault`` for Xid 48/79, a lost GPU or uncorrectable ECC; warn for the rest.

    A fatal finding stays critical: a GPU that fell off the bus does not heal while the box runs.
    A non-fatal Xid (13, 31, 43, ... usually the application's own fault) warns for ``xid_hold_s``.
    """

    name = "gpu"

    def __init__(self, nvml: Nvml, hot_c: float = 83.0, interval_s: float = 5.0,
                 xid_hold_s: float = 300.0) -> None:
        self.nvml = nvml
        self.hot_c = hot_c
        self.interval_s = interval_s
        self.xid_hold_s = xid_hold_s
        self._xid_last: Dict[Optional[int], int] = {}
        self._xid_at: Dict[Optional[int], float] = {}
        self._fatal_xid: Dict[Optional[int], int] = {}
        self._gpus: List[Gpu] = []

    def _unavailable(self, reason: Optional[str]) -> List[Alert]:
        self._gpus = []
        return [Alert(self.name, "ok", message=f"no GPU data: {reason}", code="gpu_unavailable",
                      data={"reason": reason})]

    def check(self, now: float) -> List[Alert]:
        """About ten NVML calls per GPU, plus a non-blocking drain of the Xid event set."""
        if not self.nvml.ensure(now):
            return self._unavailable(self.nvml.reason)
        try:
            for index, xid in self.nvml.poll_xids():
                if index is None and self.nvml.count == 1:
                    index = 0
                self._xid_last[index] = xid
                self._xid_at[index] = now
                if xid in FATAL_XIDS:
                    self._fatal_xid[index] = xid
            rows = []
            for i in range(self.nvml.count):
                try:
                    row = self.nvml.read(i)
                except GpuLost as e:
                    row = {"index": i, "lost": True, "lost_reason": str(e)}
                    known = self.nvml.known(i)
                    row.update(uuid=known.get("uuid"), name=known.get("name"))
                rows.append(row)
        except NvmlUnavailable as e:
            return self._unavailable(str(e))
        if not rows:
            return self._unavailable(self.nvml.reason)
        alerts = [self._judge(row, now) for row in rows]
        if None in self._xid_last:  # an Xid NVML could not tie to a device
            xid = self._xid_last[None]
            fatal = xid in FATAL_XIDS
            alerts.append(Alert("gpu:unknown", "critical" if fatal else "warn", float(xid), None,
                                f"Xid {xid} on an unidentified GPU", "gpu_fault" if fatal else "gpu_xid",
                                {"xid": xid}))
        self._gpus = [self._gpu(row) for row in rows]
        return alerts

    def _judge(self, row: Dict[str, Any], now: float) -> Alert:
        i = row["index"]
        name = f"gpu{i}"
        issues: List[str] = []
        fatal: List[str] = []
        if row.get("lost"):
            fatal.append(f"GPU lost ({row.get('lost_reason')})")
        if i in self._fatal_xid:
            xid = self._fatal_xid[i]
            fatal.append(f"Xid {xid} ({'double-bit ECC' if xid == 48 else 'fell off the bus'})")
        ecc = row.get("ecc_uncorrected")
        if ecc:
            fatal.append(f"{ecc} uncorrectable ECC error(s)")
        code: Optional[str] = None
        if fatal:
            code = "gpu_fault"
        xid = self._xid_last.get(i)
        if xid is not None and xid not in FATAL_XIDS and now - self._xid_at.get(i, now) <= self.xid_hold_s:
            issues.append(f"Xid {xid}")
            code = code or "gpu_xid"
        bad = [r for r in row.get("throttle_reasons") or [] if r in BAD_THROTTLE]
        if bad:
            issues.append("throttled: " + ", ".join(bad))
            code = code or "gpu_throttle"
        temp = row.get("temp_c")
        if temp is not None and temp >= self.hot_c:
            issues.append(f"hot: {temp:g} C (limit {self.hot_c:g} C)")
            code = code or "gpu_hot"
        level = "critical" if fatal else ("warn" if issues else "ok")
        message = "; ".join(fatal + issues) or None
        if fatal:
            message = f"{message}: replace the box"
        data = dict(row, xid_last=xid, issues=fatal + issues)
        return Alert(name, level, temp, self.hot_c, message, code, data)

    def _gpu(self, row: Dict[str, Any]) -> Gpu:
        i = row["index"]
        fields = {k: row.get(k) for k in _GPU_FIELDS}
        fields["throttle_reasons"] = list(fields["throttle_reasons"] or [])
        return Gpu(index=i, xid_last=self._xid_last.get(i), lost=bool(row.get("lost")), **fields)

    def gpu_rows(self) -> List[Gpu]:
        """status.json's ``gpus`` from the latest check ([] without NVML)."""
        return list(self._gpus)
