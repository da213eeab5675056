"""`rgt status`'s health lines: GPUs, host and the sentinels that are not ok, coloured only when asked."""

from __future__ import annotations

import pytest

from rgt.controller.render_sentinels import render_health

YELLOW, RED = "\x1b[33m", "\x1b[31m"


@pytest.fixture
def status():
    """The sentinels, gpus and host of the design's example status.json."""
    return {
        "sentinels": [
            {"name": "disk:/root/autodl-tmp", "level": "ok", "value": 0.61, "limit": 0.9, "message": None},
            {"name": "inodes:/root/autodl-fs", "level": "warn", "value": 0.92, "limit": 0.9,
             "message": "184,021 of 200,000 inodes used on the shared FS"}],
        "gpus": [{"index": 0, "name": "NVIDIA GeForce RTX 4090", "util_pct": 97, "mem_used_bytes": 21474836480,
                  "mem_total_bytes": 25757220864, "temp_c": 71, "power_w": 402.5, "sm_clock_mhz": 2520,
                  "sm_clock_max_mhz": 2790, "throttle_reasons": [], "xid_last": None, "ecc_uncorrected": None,
                  "lost": False}],
        "host": {"disk_free_bytes": 20401094656, "inodes_free": 15979, "mem_used_bytes": 30064771072,
                 "mem_limit_bytes": 96636764160, "mem_peak_bytes": 41875931136, "oom_kills": 0},
    }


def test_plain_lines_show_gpu_host_and_the_warning(status):
    lines = render_health(status, color=False)
    assert lines[0] == "GPU0 NVIDIA GeForce RTX 4090  97%  20.0/24.0 GiB  71 C  402 W  SM 2520/2790 MHz"
    assert lines[1].startswith("host  mem 28.0/90.0 GiB (peak 39.0 GiB, 0 OOM kills)  |  disk 19.0 GiB free")
    assert "15,979 inodes free" in lines[1]
    assert lines[2].startswith("warn     inodes:/root/autodl-fs: 184,021 of 200,000 inodes used")
    assert lines[-1] == "sentinels: 1 ok, 1 not"
    assert "\x1b[" not in "".join(lines)


def test_warn_is_yellow_and_critical_red(status):
    status["sentinels"].append({"name": "gpu0", "level": "critical", "value": 71, "limit": 83,
                                "message": "Xid 79 (fell off the bus): replace the box"})
    status["gpus"].append({"index": 1, "name": "NVIDIA GeForce RTX 4090", "lost": True})
    lines = render_health(status, color=True)
    assert lines[0].startswith(RED)  # gpu0's sentinel is critical
    assert "LOST" in lines[1]
    assert lines[1].startswith(RED)
    critical = next(x for x in lines if "Xid 79" in x)
    warn = next(x for x in lines if "inodes:/root/autodl-fs" in x)
    assert critical.startswith(RED)
    assert warn.startswith(YELLOW)
    assert lines.index(critical) < lines.index(warn)  # the worst first


def test_no_gpu_says_why_and_missing_fields_are_question_marks():
    lines = render_health({"sentinels": [{"name": "gpu", "level": "ok",
                                          "message": "no GPU data: no NVIDIA driver"}],
                           "gpus": [], "host": {"mem_used_bytes": None, "disk_free_bytes": 1 << 30}}, color=True)
    assert lines[0] == "GPU   none: no GPU data: no NVIDIA driver"
    assert lines[1] == "host  mem ?/? GiB  |  disk 1.0 GiB free"
    assert render_health(None, color=False) == []
    assert render_health({}, color=True) == []


def test_thermal_throttle_is_shown_and_yellow():
    gpu = {"index": 0, "name": "H100", "util_pct": 50, "throttle_reasons": ["gpu_idle", "hw_thermal_slowdown"]}
    (line, _host) = render_health({"gpus": [gpu], "host": {}, "sentinels": []}, color=True)[:2] + [None]
    assert "throttled: hw_thermal_slowdown" in line
    assert "gpu_idle" not in line
    assert line.startswith(YELLOW)
