"""NVML adapter and GPU sentinel, with raw NVML values injected below the adapter (no GPU on this machine).

FakeNvml stands in for the pynvml module: it raises pynvml.NVMLError(code), returns throttle bitmasks,
milliwatts, bytes and c_nvmlEventData_t structs, exactly as the real binding does.
"""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any, Dict, List, Optional

import pynvml
import pytest

from rgt.agent.nvml import Nvml, throttle_names
from rgt.agent.sentinels.gpu import GpuSentinel
from rgt.agent.sentinels.runner import build_sentinels
from rgt.shared.status import Status

GIB = 1 << 30
HEALTHY: Dict[str, Any] = {
    "name": b"NVIDIA H100 80GB HBM3", "uuid": "GPU-5e1c0d2a", "util": 97, "used": 20 * GIB,
    "total": 80 * GIB, "temp": 71, "power_mw": 402500, "sm": 1980, "sm_max": 1980, "throttle": 0x0,
    "ecc": 0, "procs": [(4133, 20 * GIB)], "events": 0xFFFF,
}


def _err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


class FakeNvml:
    """pynvml's surface, driven by per-GPU dicts of raw values; a value of ("raise", code) raises."""

    NVMLError = pynvml.NVMLError

    def __init__(self, gpus: List[Dict[str, Any]], init_error: Optional[int] = None) -> None:
        self.gpus = [dict(HEALTHY, **g) for g in gpus]
        self.init_error = init_error
        self.init_calls = 0
        self.events: List[Any] = []
        self.handles = [ctypes.cast(ctypes.c_void_p(0x1000 + 0x100 * i), pynvml.c_nvmlDevice_t)
                        for i in range(len(self.gpus))]
        self.broken: Optional[int] = None  # every call raises this code (driver gone)

    def __getattr__(self, name: str) -> Any:
        value = getattr(pynvml, name)  # constants only: a call missing here must not reach the real lib
        if callable(value) and not isinstance(value, type):
            raise AttributeError(name)
        return value

    def _gpu(self, handle: Any) -> Dict[str, Any]:
        if self.broken is not None:
            raise _err(self.broken)
        addr = ctypes.cast(handle, ctypes.c_void_p).value
        return self.gpus[(addr - 0x1000) // 0x100]

    def _val(self, handle: Any, key: str) -> Any:
        value = self._gpu(handle).get("all", self._gpu(handle)[key])
        if isinstance(value, tuple) and value[0] == "raise":
            raise _err(value[1])
        return value

    def queue_event(self, index: int, event_type: int, data: int) -> None:
        self.events.append(pynvml.c_nvmlEventData_t(device=self.handles[index], eventType=event_type,
                                                    eventData=data))

    # the calls the adapter makes
    def nvmlInit(self):
        self.init_calls += 1
        if self.init_error is not None:
            raise _err(self.init_error)

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        if self.broken is not None:
            raise _err(self.broken)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        lookup = self.gpus[i].get("lookup")
        if lookup is not None:
            raise _err(lookup)
        return self.handles[i]

    def nvmlSystemGetDriverVersion(self):
        return b"550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040

    def nvmlDeviceGetName(self, h):
        return self._val(h, "name")

    def nvmlDeviceGetUUID(self, h):
        return self._val(h, "uuid")

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=self._val(h, "util"), memory=10)

    def nvmlDeviceGetMemoryInfo(self, h, version=None):
        used, total = self._val(h, "used"), self._val(h, "total")
        return SimpleNamespace(used=used, total=total, free=total - used, version=version)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return self._val(h, "temp")

    def nvmlDeviceGetPowerUsage(self, h):
        return self._val(h, "power_mw")

    def nvmlDeviceGetClockInfo(self, h, clock):
        assert clock == pynvml.NVML_CLOCK_SM
        return self._val(h, "sm")

    def nvmlDeviceGetMaxClockInfo(self, h, clock):
        return self._val(h, "sm_max")

    def nvmlDeviceGetCurrentClocksEventReasons(self, h):
        return self._val(h, "throttle")

    def nvmlDeviceGetTotalEccErrors(self, h, error_type, counter):
        assert (error_type, counter) == (pynvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, pynvml.NVML_VOLATILE_ECC)
        return self._val(h, "ecc")

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in self._val(h, "procs")]

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        self._gpu(h)
        return []

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return self._gpu(h).get("cc", (9, 0))

    def nvmlEventSetCreate(self):
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, h):
        return self._val(h, "events")

    def nvmlDeviceRegisterEvents(self, h, mask, event_set):
        assert mask & pynvml.nvmlEventTypeXidCriticalError
        self._gpu(h)["registered"] = mask

    def nvmlEventSetWait(self, event_set, timeout_ms):
        assert timeout_ms == 0  # never block the agent's tick
        if not self.events:
            raise _err(pynvml.NVML_ERROR_TIMEOUT)
        return self.events.pop(0)

    def nvmlEventSetFree(self, event_set):
        pass


def _check(lib: FakeNvml, now: float = 0.0, sentinel: Optional[GpuSentinel] = None):
    sentinel = sentinel or GpuSentinel(Nvml(lib))
    alerts = sentinel.check(now)
    return sentinel, {a.name: a for a in alerts}


def test_healthy_gpu_reports_fields_in_status_units():
    sentinel, alerts = _check(FakeNvml([{}]))
    assert alerts["gpu0"].level == "ok"
    assert alerts["gpu0"].code is None
    (gpu,) = sentinel.gpu_rows()
    assert gpu.name == "NVIDIA H100 80GB HBM3"
    assert (gpu.util_pct, gpu.temp_c, gpu.power_w) == (97, 71, 402.5)
    assert (gpu.mem_used_bytes, gpu.mem_total_bytes) == (20 * GIB, 80 * GIB)
    assert (gpu.sm_clock_mhz, gpu.sm_clock_max_mhz) == (1980, 1980)
    assert (gpu.throttle_reasons, gpu.xid_last, gpu.ecc_uncorrected, gpu.lost) == ([], None, 0, False)
    assert sentinel.nvml.driver_version == "550.54.15"
    assert sentinel.nvml.cuda_version == "12.4"


def test_throttle_bitmask_decodes_to_nvidia_smi_names():
    assert throttle_names(0x1 | 0x4 | 0x40) == ["gpu_idle", "sw_power_cap", "hw_thermal_slowdown"]
    assert throttle_names(None) == []


def test_thermal_throttle_warns_but_power_cap_alone_does_not():
    _, alerts = _check(FakeNvml([{"throttle": 0x20 | 0x40}, {"throttle": 0x4}]))
    assert (alerts["gpu0"].level, alerts["gpu0"].code) == ("warn", "gpu_throttle")
    assert "sw_thermal_slowdown, hw_thermal_slowdown" in alerts["gpu0"].message
    assert alerts["gpu1"].level == "ok"
    assert alerts["gpu1"].data["throttle_reasons"] == ["sw_power_cap"]


def test_hot_gpu_warns():
    _, alerts = _check(FakeNvml([{"temp": 85}]))
    assert (alerts["gpu0"].level, alerts["gpu0"].code) == ("warn", "gpu_hot")


def test_xid_79_event_is_a_sticky_gpu_fault():
    lib = FakeNvml([{}, {}])
    sentinel, _ = _check(lib)
    lib.queue_event(1, pynvml.nvmlEventTypeXidCriticalError, 79)
    _, alerts = _check(lib, 5.0, sentinel)
    assert (alerts["gpu1"].level, alerts["gpu1"].code) == ("critical", "gpu_fault")
    assert "Xid 79" in alerts["gpu1"].message
    assert alerts["gpu0"].level == "ok"
    _, later = _check(lib, 3600.0, sentinel)
    assert later["gpu1"].code == "gpu_fault"
    assert sentinel.gpu_rows()[1].xid_last == 79


def test_double_bit_ecc_event_counts_as_xid_48():
    lib = FakeNvml([{}])
    sentinel, _ = _check(lib)
    lib.queue_event(0, pynvml.nvmlEventTypeDoubleBitEccError, 0)
    _, alerts = _check(lib, 5.0, sentinel)
    assert alerts["gpu0"].code == "gpu_fault"
    assert sentinel.gpu_rows()[0].xid_last == 48


def test_application_xid_warns_for_a_while_only():
    lib = FakeNvml([{}])
    sentinel, _ = _check(lib)
    lib.queue_event(0, pynvml.nvmlEventTypeXidCriticalError, 13)
    _, alerts = _check(lib, 5.0, sentinel)
    assert (alerts["gpu0"].level, alerts["gpu0"].code) == ("warn", "gpu_xid")
    _, later = _check(lib, 5.0 + 301, sentinel)
    assert later["gpu0"].level == "ok"
    assert sentinel.gpu_rows()[0].xid_last == 13


def test_uncorrectable_ecc_is_a_gpu_fault():
    _, alerts = _check(FakeNvml([{"ecc": 2}]))
    assert (alerts["gpu0"].level, alerts["gpu0"].code) == ("critical", "gpu_fault")


def test_lost_gpu_becomes_data_while_the_others_still_report():
    lib = FakeNvml([{}, {}])
    sentinel, _ = _check(lib)
    lib.gpus[1]["all"] = ("raise", pynvml.NVML_ERROR_GPU_IS_LOST)
    _, alerts = _check(lib, 5.0, sentinel)
    assert (alerts["gpu1"].level, alerts["gpu1"].code) == ("critical", "gpu_fault")
    assert "lost" in alerts["gpu1"].message
    gpu0, gpu1 = sentinel.gpu_rows()
    assert gpu1.lost is True
    assert gpu1.name == "NVIDIA H100 80GB HBM3"  # known from before it was lost
    assert gpu1.util_pct is None
    assert gpu0.lost is False
    assert gpu0.util_pct == 97


def test_gpu_lost_at_lookup_and_reset_required_are_lost_too():
    lib = FakeNvml([{"lookup": pynvml.NVML_ERROR_GPU_IS_LOST},
                    {"temp": ("raise", pynvml.NVML_ERROR_RESET_REQUIRED)}])
    sentinel, alerts = _check(lib)
    assert [g.lost for g in sentinel.gpu_rows()] == [True, True]
    assert {a.code for a in alerts.values()} == {"gpu_fault"}


def test_unsupported_fields_are_unknown_not_zero():
    lib = FakeNvml([{"ecc": ("raise", pynvml.NVML_ERROR_NOT_SUPPORTED),
                     "power_mw": ("raise", pynvml.NVML_ERROR_NO_PERMISSION),
                     "events": ("raise", pynvml.NVML_ERROR_NOT_SUPPORTED)}])
    sentinel, alerts = _check(lib)
    gpu = sentinel.gpu_rows()[0]
    assert (gpu.ecc_uncorrected, gpu.power_w) == (None, None)
    assert alerts["gpu0"].level == "ok"


@pytest.mark.parametrize("code", [pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, pynvml.NVML_ERROR_DRIVER_NOT_LOADED,
                                  pynvml.NVML_ERROR_UNINITIALIZED])
def test_no_driver_gives_null_gpus_one_reason_and_rare_retries(code):
    lib = FakeNvml([{}], init_error=code)
    sentinel = GpuSentinel(Nvml(lib))
    for now in range(0, 60, 5):
        (alert,) = sentinel.check(float(now))
        assert alert.level == "ok"
        assert alert.code == "gpu_unavailable"
        assert str(pynvml.NVMLError(code)) in alert.message
    assert lib.init_calls == 1
    assert sentinel.gpu_rows() == []
    lib.init_error = None
    _, alerts = _check(lib, 60.0, sentinel)
    assert lib.init_calls == 2
    assert alerts["gpu0"].level == "ok"
    assert len(sentinel.gpu_rows()) == 1


def test_driver_going_away_mid_run_is_unavailable_then_reinitialised():
    lib = FakeNvml([{}])
    sentinel, _ = _check(lib)
    lib.broken = pynvml.NVML_ERROR_DRIVER_NOT_LOADED
    (alert,) = sentinel.check(5.0)
    assert alert.code == "gpu_unavailable"
    assert sentinel.gpu_rows() == []
    lib.broken = None
    assert sentinel.check(10.0)[0].code == "gpu_unavailable"  # waits for the retry interval
    _, alerts = _check(lib, 66.0, sentinel)
    assert alerts["gpu0"].level == "ok"


def test_pynvml_missing_is_a_reason_not_a_crash(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pynvml(name, *args, **kwargs):
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    monkeypatch.setattr("ctypes.CDLL", lambda name: object())  # a driver library is there
    nvml = Nvml()
    assert nvml.ensure(0.0) is False
    assert "pynvml" in nvml.reason


def test_no_driver_library_means_pynvml_is_never_imported(monkeypatch):
    import sys

    def no_library(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr("ctypes.CDLL", no_library)
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    nvml = Nvml()
    assert nvml.ensure(0.0) is False
    assert "no NVIDIA driver" in nvml.reason and "libnvidia-ml.so.1" in nvml.reason
    assert "pynvml" not in sys.modules, "17 MB of RSS saved on a box without the driver"


def test_real_pynvml_on_this_machine_reports_why_there_is_no_gpu():
    nvml = Nvml()
    if nvml.ensure(0.0):
        pytest.skip("this machine has a working NVIDIA driver")
    assert nvml.reason.startswith("no NVIDIA driver")


def test_gpu_rows_fit_status_json():
    runner = build_sentinels({}, extra_dirs=(), nvml_lib=FakeNvml([{}, {"throttle": 0x40}]))
    alerts = runner.tick(0.0)
    assert [a.code for a in alerts] == ["gpu_throttle"]
    sentinels, gpus, host = runner.snapshot()
    status = Status(run_id="r", state="running", sentinels=sentinels, gpus=gpus, host=host)
    again = Status.from_dict(__import__("json").loads(status.to_json()))
    assert again.gpus[1].throttle_reasons == ["hw_thermal_slowdown"]
    assert again.gpus[0].power_w == 402.5
    assert {s.name for s in again.sentinels} >= {"gpu0", "gpu1", "memory", "zombie_vram"}


def _stranger_proc(root) -> str:
    """A fixture /proc with one old process (pid 300) holding /dev/nvidia0 open."""
    (root / "300" / "fd").mkdir(parents=True)
    (root / "stat").write_text("btime 1700000000\n")
    (root / "300" / "stat").write_text("300 (python) S 1 300 300" + " 0" * 15 + " 100" + " 0" * 30 + "\n")
    (root / "300" / "cmdline").write_bytes(b"python\0old_run.py")
    (root / "300" / "fd" / "3").symlink_to("/dev/nvidia0")
    return str(root)


@pytest.mark.parametrize(("gpus", "event", "init_error", "expected"), [
    pytest.param([{}], None, None, {}, id="healthy"),
    pytest.param([{"throttle": 0x8 | 0x1}], None, None, {"gpu0": ("warn", "gpu_throttle")}, id="throttled"),
    pytest.param([{}, {}], (1, 79), None, {"gpu1": ("critical", "gpu_fault")}, id="xid79"),
    pytest.param([{}, {"all": ("raise", pynvml.NVML_ERROR_GPU_IS_LOST)}], None, None,
                 {"gpu1": ("critical", "gpu_fault")}, id="lost"),
    pytest.param([{"used": 10 * GIB, "procs": []}], None, None, {"zombie_vram": ("warn", "zombie_vram")},
                 id="zombie"),
    pytest.param([{}], None, pynvml.NVML_ERROR_DRIVER_NOT_LOADED, {}, id="no-driver"),
])
def test_scenarios_map_to_the_expected_alerts(tmp_path, gpus, event, init_error, expected):
    lib = FakeNvml(gpus, init_error=init_error)
    runner = build_sentinels({}, extra_dirs=(), proc_root=_stranger_proc(tmp_path / "proc"),
                             cgroup_root=str(tmp_path / "no-cgroup"), nvml_lib=lib, own_pids=[], own_pid=4242)
    runner.tick(0.0)
    if event is not None:
        lib.queue_event(event[0], pynvml.nvmlEventTypeXidCriticalError, event[1])
    alerts = runner.tick(130.0)
    assert {a.name: (a.level, a.code) for a in alerts} == expected
    _, gpu_rows, _ = runner.snapshot()
    assert len(gpu_rows) == (0 if init_error else len(gpus))
