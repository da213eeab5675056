"""The one adapter over NVML (pynvml) on the box: one error policy, an injectable library, lost GPUs as data.

Error policy, for every call below:
- GPU lost (NVML_ERROR_GPU_IS_LOST, NVML_ERROR_RESET_REQUIRED): raise GpuLost; the caller makes that GPU
  ``lost: true`` and the others still report.
- no driver (library not found, uninitialized, driver not loaded, NVML/RM mismatch): raise
  NvmlUnavailable; all GPU fields become null and ``reason`` says why in one line. Init is retried at
  most every ``retry_s``.
- anything else (not supported, no permission, function not found, timeout, unknown): the value is None.
"""

from __future__ import annotations

import ctypes
from typing import Any, Dict, List, Optional, Tuple

# Bit -> name, after nvidia-smi's clocks_event_reasons.* / clocks_throttle_reasons.* query fields.
THROTTLE_BITS = (
    (0x001, "gpu_idle"),
    (0x002, "applications_clocks_setting"),
    (0x004, "sw_power_cap"),
    (0x008, "hw_slowdown"),
    (0x010, "sync_boost"),
    (0x020, "sw_thermal_slowdown"),
    (0x040, "hw_thermal_slowdown"),
    (0x080, "hw_power_brake_slowdown"),
    (0x100, "display_clock_setting"),
    (0x200, "board_limit"),
    (0x400, "reliability"),
)
# The ones that steal speed from a healthy job (the seed's "slowdown / power brake / thermal").
BAD_THROTTLE = frozenset(("hw_slowdown", "sw_thermal_slowdown", "hw_thermal_slowdown",
                          "hw_power_brake_slowdown"))
FATAL_XIDS = frozenset((48, 79))  # 48: double-bit ECC; 79: fallen off the bus
XID_EVENT = 0x0000000000000008  # nvmlEventTypeXidCriticalError
DBE_EVENT = 0x0000000000000002  # nvmlEventTypeDoubleBitEccError, reported as Xid 48

_LOST = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED")
_NO_DRIVER = ("NVML_ERROR_UNINITIALIZED", "NVML_ERROR_DRIVER_NOT_LOADED",
              "NVML_ERROR_LIBRARY_NOT_FOUND", "NVML_ERROR_LIB_RM_VERSION_MISMATCH")
_DEFAULT_CODES = {"NVML_ERROR_GPU_IS_LOST": 15, "NVML_ERROR_RESET_REQUIRED": 16,
                  "NVML_ERROR_UNINITIALIZED": 1, "NVML_ERROR_DRIVER_NOT_LOADED": 9,
                  "NVML_ERROR_LIBRARY_NOT_FOUND": 12, "NVML_ERROR_LIB_RM_VERSION_MISMATCH": 18}


class GpuLost(Exception):
    """A GPU stopped answering (fell off the bus, needs a reset)."""


class NvmlUnavailable(Exception):
    """No usable NVML: no driver, no library, or it went away."""


def throttle_names(mask: Optional[int]) -> List[str]:
    """Decode a clocks-event/throttle bitmask into nvidia-smi's names."""
    if mask is None:
        return []
    return [name for bit, name in THROTTLE_BITS if mask & bit]


def _text(value: Any) -> Optional[str]:
    if value is None:
        return None
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _handle_key(handle: Any) -> Any:
    # ctypes pointers compare by identity; their address identifies the device.
    if isinstance(handle, (ctypes._Pointer, ctypes.c_void_p)):  # noqa: SLF001
        return ctypes.cast(handle, ctypes.c_void_p).value
    return handle


class Nvml:
    """NVML for one process: initialised once, re-tried after a failure at most every ``retry_s``."""

    def __init__(self, lib: Any = None, retry_s: float = 60.0) -> None:
        self._lib = lib
        self.retry_s = retry_s
        self.ready = False
        self.reason: Optional[str] = None
        self.driver_version: Optional[str] = None
        self.cuda_version: Optional[str] = None
        self._next_try = float("-inf")
        self._now = 0.0
        self._handles: List[Any] = []
        self._static: Dict[int, Dict[str, Any]] = {}
        self._events: Any = None
        self._lost_codes: Tuple[int, ...] = ()
        self._nodriver_codes: Tuple[int, ...] = ()

    # -- the error policy -------------------------------------------------------------------------

    def _call(self, fn_name: str, *args: Any, **kwargs: Any) -> Any:
        lib = self._lib
        fn = getattr(lib, fn_name, None)
        if fn is None:  # an older binding without this call
            return None
        try:
            return fn(*args, **kwargs)
        except lib.NVMLError as e:
            code = getattr(e, "value", None)
            if code in self._lost_codes:
                raise GpuLost(f"{fn_name}: {e}") from None
            if code in self._nodriver_codes:
                self._drop(f"NVML went away ({e})")
                raise NvmlUnavailable(self.reason) from None
            return None
        except UnicodeDecodeError:  # a garbled name or version string: unknown, like nvitop does
            return None

    def _drop(self, reason: str) -> None:
        self._next_try = self._now + self.retry_s  # lost mid-run: the next try is a retry interval away
        self.ready = False
        self.reason = reason
        self._handles = []
        self._events = None

    # -- life cycle -------------------------------------------------------------------------------

    def _load(self) -> Any:
        if self._lib is None:
            try:
                # pynvml costs ~17 MB of RSS to import: on a box without the driver, do not pay for it.
                ctypes.CDLL("libnvidia-ml.so.1")
            except OSError as e:
                self.reason = f"no NVIDIA driver: NVML Shared Library Not Found (libnvidia-ml.so.1: {e})"
                return None
            try:
                import pynvml  # the real binding; vendored in the agent archive
            except ImportError as e:
                self.reason = f"pynvml is not importable ({e})"
                return None
            self._lib = pynvml
        lib = self._lib
        self._lost_codes = tuple(getattr(lib, n, _DEFAULT_CODES[n]) for n in _LOST)
        self._nodriver_codes = tuple(getattr(lib, n, _DEFAULT_CODES[n]) for n in _NO_DRIVER)
        return lib

    def ensure(self, now: float) -> bool:
        """Initialise NVML if it is not; False (with ``reason``) when it cannot be used now."""
        self._now = now
        if self.ready:
            return True
        if now < self._next_try:
            return False
        self._next_try = now + self.retry_s
        lib = self._load()
        if lib is None:
            return False
        try:
            lib.nvmlInit()
        except lib.NVMLError as e:
            self.reason = f"no NVIDIA driver: {e} ({type(e).__name__})"
            return False
        try:
            count = self._call("nvmlDeviceGetCount") or 0
            self._handles = []
            for i in range(count):
                try:
                    self._handles.append(self._call("nvmlDeviceGetHandleByIndex", i))
                except GpuLost:
                    self._handles.append(None)
            self.driver_version = _text(self._call("nvmlSystemGetDriverVersion"))
            cuda = self._call("nvmlSystemGetCudaDriverVersion")
            self.cuda_version = f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda else None
        except NvmlUnavailable:
            return False
        self.ready = True
        self.reason = None if count else "NVML found no GPU"
        self._events = self._register_events()
        return True

    def close(self) -> None:
        """Free the event set and shut NVML down (errors ignored: the process is leaving)."""
        if self.ready:
            try:
                if self._events is not None:
                    self._call("nvmlEventSetFree", self._events)
                self._call("nvmlShutdown")
            except (GpuLost, NvmlUnavailable):
                pass
        self._drop("closed")

    # -- readings ---------------------------------------------------------------------------------

    @property
    def count(self) -> int:
        """GPUs seen at init (a lost one still counts)."""
        return len(self._handles)

    def handle(self, index: int) -> Any:
        """The device handle, or GpuLost when it could not even be looked up."""
        h = self._handles[index]
        if h is None:
            raise GpuLost(f"GPU {index} could not be looked up")
        return h

    def static(self, index: int) -> Dict[str, Any]:
        """uuid, name and max SM clock, read once per GPU (they do not change)."""
        info = self._static.get(index)
        if info is None or info.get("name") is None:
            h = self.handle(index)
            sm_max = self._call("nvmlDeviceGetMaxClockInfo", h, getattr(self._lib, "NVML_CLOCK_SM", 1))
            info = {"uuid": _text(self._call("nvmlDeviceGetUUID", h)),
                    "name": _text(self._call("nvmlDeviceGetName", h)),
                    "sm_clock_max_mhz": sm_max}
            self._static[index] = info
        return info

    def known(self, index: int) -> Dict[str, Any]:
        """What ``static`` cached for a GPU, without asking NVML (for a GPU that is now lost)."""
        return dict(self._static.get(index) or {})

    def memory(self, index: int) -> Tuple[Optional[int], Optional[int]]:
        """(used, total) bytes; v2 (used without the driver's reservation) where the driver has it."""
        h = self.handle(index)
        mem = None
        v2 = getattr(self._lib, "nvmlMemory_v2", None)
        if v2 is not None:
            try:
                mem = self._call("nvmlDeviceGetMemoryInfo", h, version=v2)
            except TypeError:  # a binding whose call takes no version
                mem = None
        if mem is None:
            mem = self._call("nvmlDeviceGetMemoryInfo", h)
        if mem is None:
            return None, None
        return getattr(mem, "used", None), getattr(mem, "total", None)

    def read(self, index: int) -> Dict[str, Any]:
        """One GPU's fields for status.json's ``gpus`` (raises GpuLost)."""
        h = self.handle(index)
        row: Dict[str, Any] = {"index": index}
        row.update(self.static(index))
        util = self._call("nvmlDeviceGetUtilizationRates", h)
        row["util_pct"] = getattr(util, "gpu", None)
        row["mem_used_bytes"], row["mem_total_bytes"] = self.memory(index)
        row["temp_c"] = self._call("nvmlDeviceGetTemperature", h,
                                   getattr(self._lib, "NVML_TEMPERATURE_GPU", 0))
        power_mw = self._call("nvmlDeviceGetPowerUsage", h)
        row["power_w"] = None if power_mw is None else power_mw / 1000.0
        row["sm_clock_mhz"] = self._call("nvmlDeviceGetClockInfo", h, getattr(self._lib, "NVML_CLOCK_SM", 1))
        mask = self._call("nvmlDeviceGetCurrentClocksEventReasons", h)
        if mask is None:
            mask = self._call("nvmlDeviceGetCurrentClocksThrottleReasons", h)
        row["throttle_mask"] = mask
        row["throttle_reasons"] = throttle_names(mask)
        row["ecc_uncorrected"] = self._call(
            "nvmlDeviceGetTotalEccErrors", h, getattr(self._lib, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1),
            getattr(self._lib, "NVML_VOLATILE_ECC", 0))
        return row

    def processes(self, index: int) -> Optional[List[Tuple[int, Optional[int]]]]:
        """(pid, used bytes) of compute and graphics processes NVML attributes; None if it cannot say."""
        h = self.handle(index)
        compute = self._call("nvmlDeviceGetComputeRunningProcesses", h)
        graphics = self._call("nvmlDeviceGetGraphicsRunningProcesses", h)
        if compute is None:  # compute is where training lives; without it no claim can be made
            return None
        seen: Dict[int, Optional[int]] = {}
        for p in list(compute or []) + list(graphics or []):
            pid = int(getattr(p, "pid", 0))
            used = getattr(p, "usedGpuMemory", None)
            if used is None:  # WDDM or a hidden process: present, size unknown
                seen.setdefault(pid, None)
            else:  # a process doing compute and graphics is listed twice with the same memory
                seen[pid] = max(seen.get(pid) or 0, int(used))
        return sorted(seen.items())

    def compute_capability(self, index: int) -> Optional[Tuple[int, int]]:
        """(major, minor), or None."""
        cc = self._call("nvmlDeviceGetCudaComputeCapability", self.handle(index))
        return (int(cc[0]), int(cc[1])) if cc else None

    # -- Xid events -------------------------------------------------------------------------------

    def _register_events(self) -> Any:
        try:
            events = self._call("nvmlEventSetCreate")
            if events is None:
                return None
            wanted = getattr(self._lib, "nvmlEventTypeXidCriticalError", XID_EVENT) | getattr(
                self._lib, "nvmlEventTypeDoubleBitEccError", DBE_EVENT)
            for h in self._handles:
                if h is None:
                    continue
                try:
                    supported = self._call("nvmlDeviceGetSupportedEventTypes", h)
                    mask = wanted if supported is None else wanted & supported
                    if mask:
                        self._call("nvmlDeviceRegisterEvents", h, mask, events)
                except GpuLost:
                    continue
            return events
        except (GpuLost, NvmlUnavailable):
            return None

    def poll_xids(self, max_events: int = 64) -> List[Tuple[Optional[int], int]]:
        """Drain pending Xid events without blocking (0 ms wait): [(gpu index or None, xid)]."""
        if self._events is None:
            return []
        keys = [_handle_key(h) for h in self._handles]
        out: List[Tuple[Optional[int], int]] = []
        for _ in range(max_events):
            try:
                data = self._call("nvmlEventSetWait", self._events, 0)
            except GpuLost:
                break
            if data is None:  # NVML_ERROR_TIMEOUT: nothing pending
                break
            key = _handle_key(getattr(data, "device", None))
            index = keys.index(key) if key in keys else None
            dbe = getattr(self._lib, "nvmlEventTypeDoubleBitEccError", DBE_EVENT)
            xid = 48 if int(data.eventType) & dbe else int(data.eventData)
            out.append((index, xid))
        return out
