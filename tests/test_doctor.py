"""Pre-flight audit: run_doctor on the box (raw NVML, dmesg text, real pythons) and `rgt doctor`."""

from __future__ import annotations

import json
import os
import stat
import sys

import pynvml
import pytest
from click.testing import CliRunner

from rgt.agent import doctor
from rgt.agent.nvml import Nvml
from rgt.controller.commands.doctor import cli, parse_report, render_doctor
from rgt.shared.errors import RgtError
from tests.conftest import scaled
from tests.test_nvml import FakeNvml

DMESG_79 = """[    5.1] nvidia: loading out-of-tree module taints kernel.
[ 8812.4] NVRM: Xid (PCI:0000:3b:00): 13, pid=4133, Graphics Exception: ESR 0x50
[ 9001.2] NVRM: Xid (PCI:0000:3b:00): 79, pid=4133, GPU has fallen off the bus.
"""


def _script(tmp_path, name, body):
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture(scope="module")
def cpu_torch_probe():
    """One real probe of this venv's python (torch CPU build): imported once for the module."""
    return doctor.probe_python(sys.executable, scaled(120.0))


def _by_name(results):
    return {r["name"]: r for r in results}


# -- clock, python, torch --------------------------------------------------------------------------

def test_clock_before_2020_fails_and_now_passes():
    assert doctor.check_clock(1_000_000_000.0)["result"] == "FAIL"
    ok = doctor.check_clock()
    assert ok["result"] == "PASS"
    assert ok["detail"].endswith(")")


def test_real_cpu_torch_with_gpus_present_fails_as_silent_cpu_training(cpu_torch_probe):
    assert cpu_torch_probe["python"] == ".".join(map(str, sys.version_info[:3]))
    assert cpu_torch_probe["cuda_available"] is False
    assert doctor.check_python(sys.executable, cpu_torch_probe)["result"] == "PASS"
    with_gpu = doctor.check_torch(cpu_torch_probe, gpu_count=2, timeout_s=60)
    assert with_gpu["result"] == "FAIL"
    assert "silently run on CPU" in with_gpu["detail"]
    assert doctor.check_torch(cpu_torch_probe, gpu_count=0, timeout_s=60)["result"] == "PASS"


def test_torch_absent_is_a_warning(tmp_path):
    fake = tmp_path / "site" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named torch')\n")
    python = _script(tmp_path, "python", f'PYTHONPATH={tmp_path / "site"} exec {sys.executable} "$@"')
    probe = doctor.probe_python(python, scaled(60.0))
    assert doctor.check_python(python, probe)["result"] == "PASS"
    result = doctor.check_torch(probe, gpu_count=1, timeout_s=60)
    assert result["result"] == "WARN"
    assert "not importable" in result["detail"]


def test_hung_torch_import_times_out_as_a_warning(tmp_path):
    python = _script(tmp_path, "python", "exec sleep 30")
    probe = doctor.probe_python(python, 0.3)
    assert doctor.check_torch(probe, 0, 0.3)["result"] == "WARN"
    assert "timed out" in doctor.check_torch(probe, 0, 0.3)["detail"]


def test_missing_trainer_python_fails():
    probe = doctor.probe_python("/nonexistent/python3", 5.0)
    result = doctor.check_python("/nonexistent/python3", probe)
    assert result["result"] == "FAIL"
    assert "/nonexistent/python3" in result["detail"]


def test_torch_without_kernels_for_this_gpu_warns():
    probe = {"python": "3.10.0", "torch": "2.0.0", "torch_cuda": "11.8", "cuda_available": True,
             "capability": [12, 0], "arch_list": ["sm_80", "sm_86", "sm_90"]}
    assert doctor.check_torch(probe, 1, 60)["result"] == "WARN"
    probe["arch_list"].append("sm_120")
    assert doctor.check_torch(probe, 1, 60)["result"] == "PASS"


# -- GPUs and Xid ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("gpu", "result", "words"), [
    ({}, "PASS", "H100"),
    ({"throttle": 0x40}, "FAIL", "active throttle: hw_thermal_slowdown"),
    ({"temp": 85}, "WARN", "hot"),
    ({"temp": 86, "sm": 900, "sm_max": 1980}, "FAIL", "SM clock below 70%"),
    ({"ecc": 1}, "FAIL", "uncorrectable ECC"),
    ({"all": ("raise", pynvml.NVML_ERROR_GPU_IS_LOST)}, "FAIL", "GPU lost"),
])
def test_gpu_health_maps_raw_nvml_values(gpu, result, words):
    results = doctor.check_gpus(Nvml(FakeNvml([gpu])), expect_gpu=None)
    head, gpu0 = results
    assert head["result"] == "PASS"
    assert "driver 550.54.15, CUDA 12.4" in head["detail"]
    assert gpu0["result"] == result
    assert words in gpu0["detail"]


def test_no_driver_warns_unless_a_gpu_is_expected():
    lib = FakeNvml([{}], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)
    (warn,) = doctor.check_gpus(Nvml(lib), expect_gpu=None)
    assert warn["result"] == "WARN"
    assert "NVML Shared Library Not Found" in warn["detail"]
    (fail,) = doctor.check_gpus(Nvml(lib), expect_gpu=True)
    assert fail["result"] == "FAIL"


def test_dmesg_xid_79_fails_other_xids_warn_unreadable_warns():
    assert doctor.parse_xids(DMESG_79) == [
        {"pci": "PCI:0000:3b:00", "xid": 13, "line": DMESG_79.splitlines()[1].strip()},
        {"pci": "PCI:0000:3b:00", "xid": 79, "line": DMESG_79.splitlines()[2].strip()},
    ]
    assert doctor.check_xid_history(lambda: DMESG_79)["result"] == "FAIL"
    only_13 = "\n".join(DMESG_79.splitlines()[:2])
    assert doctor.check_xid_history(lambda: only_13)["result"] == "WARN"
    assert doctor.check_xid_history(lambda: "clean boot\n")["result"] == "PASS"

    def denied():
        raise OSError("dmesg: read kernel buffer failed: Operation not permitted")

    unreadable = doctor.check_xid_history(denied)
    assert unreadable["result"] == "WARN"
    assert "non-authoritative" in unreadable["detail"]


# -- disk, memory, cpu -----------------------------------------------------------------------------

def test_disk_headroom_against_checkpoints_times_retention(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert doctor.check_disks({"ckpt": str(tmp_path)}, 1 << 20, 3, 1)[0]["result"] == "PASS"
    (short,) = doctor.check_disks({"ckpt": str(tmp_path)}, free, 3, 1)
    assert short["result"] == "FAIL"
    assert "3+1 checkpoints need" in short["detail"]
    assert doctor.check_disks({"ckpt": str(tmp_path)}, free // 6, 3, 1)[0]["result"] == "WARN"


def _write(root, rel, text):
    path = os.path.join(str(root), rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_memory_and_cpu_from_fixture_cgroups(tmp_path):
    _write(tmp_path, "proc/self/cgroup", "0::/job\n")
    _write(tmp_path, "cg/job/memory.current", f"{1 << 30}\n")
    _write(tmp_path, "cg/job/memory.max", f"{16 << 30}\n")
    _write(tmp_path, "cg/job/memory.events", "oom_kill 2\n")
    _write(tmp_path, "cg/job/cpu.max", "150000 100000\n")
    proc, cg = str(tmp_path / "proc"), str(tmp_path / "cg")
    mem = doctor.check_memory(proc, cg)
    assert mem["result"] == "WARN"
    assert "2 earlier OOM kill(s)" in mem["detail"]
    assert "16.0 GiB" in mem["detail"]
    cpu = doctor.check_cpu(proc, cg)
    assert cpu["result"] == "PASS"
    assert cpu["data"]["thread_cap"] == 1
    assert cpu["data"]["env"]["OMP_NUM_THREADS"] == "1"
    assert "OMP_NUM_THREADS=1" in cpu["detail"]


# -- the whole audit and `rgt doctor` --------------------------------------------------------------

def test_run_doctor_is_json_with_every_check(tmp_path, cpu_torch_probe, monkeypatch):
    monkeypatch.setattr(doctor, "probe_python", lambda python, timeout_s: cpu_torch_probe)
    results = doctor.run_doctor(str(tmp_path), nvml_lib=FakeNvml([{}, {"temp": 84}]),
                                dmesg_reader=lambda: "", ckpt_bytes=1 << 20)
    names = [r["name"] for r in results]
    assert names[:7] == ["clock", "python", "gpu", "gpu0", "gpu1", "xid", "torch"]
    assert names[-2:] == ["memory", "cpu"]
    assert any(n.startswith("disk:") for n in names)
    by = _by_name(results)
    assert by["gpu1"]["result"] == "WARN"
    assert by["torch"]["result"] == "FAIL"  # GPUs present, CPU-only torch
    assert doctor.worst_result(results) == "FAIL"
    assert json.loads(json.dumps(results)) == results


class _Transport:
    def __init__(self, reply):
        self.reply = reply
        self.calls = []

    def run_agent(self, argv):
        self.calls.append(argv)
        return self.reply


class _App:
    def __init__(self, reply):
        self.transport = _Transport(reply)
        self.targets = []

    def transport_for(self, target, port=None, ssh_config=None):
        self.targets.append(target)
        return self.transport


REPORT = [{"name": "clock", "result": "PASS", "detail": "fine", "data": {}},
          {"name": "gpu", "result": "WARN", "detail": "no NVIDIA GPU usable", "data": {}}]


def test_rgt_doctor_exits_0_on_pass_and_warn_and_renders_a_table():
    app = _App((0, json.dumps(REPORT).encode(), b""))
    res = CliRunner().invoke(cli, ["local"], obj=app)
    assert res.exit_code == 0, res.output
    assert app.targets == ["local"]
    assert app.transport.calls == [["doctor"]]
    assert "PASS  clock  fine" in res.output
    assert "WARN  gpu    no NVIDIA GPU usable" in res.output
    assert "1 PASS, 1 WARN, 0 FAIL: launch OK" in res.output
    assert "\x1b[" not in res.output  # not a TTY: no colours


def test_rgt_doctor_exits_1_on_any_fail_and_json_is_data():
    failing = REPORT + [{"name": "xid", "result": "FAIL", "detail": "Xid 79", "data": {}}]
    app = _App((0, json.dumps(failing).encode(), b""))
    res = CliRunner().invoke(cli, ["gpu-box", "--json"], obj=app)
    assert res.exit_code == 1
    assert json.loads(res.output) == failing


def test_render_doctor_colours_only_when_asked():
    plain = render_doctor(REPORT, color=False)
    colored = render_doctor(REPORT, color=True)
    assert "\x1b[" not in "".join(plain)
    assert "\x1b[33m" in colored[1]  # WARN in yellow


def test_a_box_without_a_report_is_one_line_not_a_traceback():
    with pytest.raises(RgtError, match="exit 127.*python3: not found"):
        parse_report(127, b"", b"sh: 1: python3: not found\n")
    res = CliRunner().invoke(cli, ["box"], obj=_App((1, b"Traceback...", b"boom\n")))
    assert res.exit_code != 0
    assert isinstance(res.exception, RgtError)
