"""Pre-flight audit on the box (``doctor``): python, GPUs, torch, Xid history, disk, memory, CPU, clock.

Each check is a dict {name, result: PASS|WARN|FAIL, detail, data}. PASS and WARN let a launch go on.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .nvml import BAD_THROTTLE, FATAL_XIDS, GpuLost, Nvml, NvmlUnavailable
from .sentinels.alert import human_bytes
from .sentinels.cgroup import cpu_quota
from .sentinels.disk import group_mounts, usage
from .sentinels.memory import read_memory

HOT_C = 83.0
SM_FLOOR_FRAC = 0.70  # of the max SM clock, the seed's gpu_health threshold
SANE_EPOCH = 1577836800  # 2020-01-01T00:00:00Z
XID_RE = re.compile(r"NVRM: Xid \(([^)]*)\): (\d+)")

# Runs under the trainer's python, which may be old: no f-strings, no walrus.
TORCH_PROBE = r"""
import json, sys
out = {"python": "%d.%d.%d" % sys.version_info[:3], "executable": sys.executable}
try:
    import torch
except BaseException as e:
    out["torch_error"] = "%s: %s" % (type(e).__name__, e)
else:
    out["torch"] = torch.__version__
    out["torch_cuda"] = getattr(torch.version, "cuda", None)
    try:
        out["cuda_available"] = bool(torch.cuda.is_available())
        if out["cuda_available"]:
            out["device_count"] = torch.cuda.device_count()
            out["capability"] = list(torch.cuda.get_device_capability(0))
            out["arch_list"] = list(torch.cuda.get_arch_list())
    except BaseException as e:
        out["cuda_error"] = "%s: %s" % (type(e).__name__, e)
print("RGT-PROBE " + json.dumps(out))
"""


def _check(name: str, result: str, detail: str, data: Optional[Dict[str, Any]] = None,
           **more: Any) -> Dict[str, Any]:
    return {"name": name, "result": result, "detail": detail, "data": dict(data or {}, **more)}


def read_dmesg() -> str:
    """The kernel ring buffer; OSError when it cannot be read (containers usually cannot)."""
    try:
        proc = subprocess.run(["dmesg"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise OSError(f"dmesg failed: {e}") from None
    if proc.returncode != 0:
        raise OSError(proc.stderr.decode("utf-8", "replace").strip() or f"dmesg exited {proc.returncode}")
    return proc.stdout.decode("utf-8", "replace")


def parse_xids(text: str) -> List[Dict[str, Any]]:
    """``NVRM: Xid (PCI:0000:3b:00): 79, pid=..., ...`` lines as [{pci, xid, line}]."""
    return [{"pci": m.group(1), "xid": int(m.group(2)), "line": line.strip()[:200]}
            for line in text.splitlines() for m in [XID_RE.search(line)] if m]


def check_clock(now: Optional[float] = None) -> Dict[str, Any]:
    """Report the box's time; before 2020 it is certainly wrong (TLS, ages, staleness all break)."""
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    if now < SANE_EPOCH:
        return _check("clock", "FAIL", f"{stamp} is before 2020: the clock is wrong; fix NTP first", unix=now)
    return _check("clock", "PASS", f"{stamp} (unix {now:.0f})", unix=now)


def probe_python(python: str, timeout_s: float) -> Dict[str, Any]:
    """Run the torch probe under the trainer's python; {"error": ...} when it could not run."""
    try:
        proc = subprocess.run([python, "-c", TORCH_PROBE], capture_output=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:g} s", "timeout": True}
    except OSError as e:
        return {"error": f"cannot run {python}: {e.strerror or e}"}
    for line in reversed(proc.stdout.decode("utf-8", "replace").splitlines()):
        if line.startswith("RGT-PROBE "):
            try:
                return json.loads(line[len("RGT-PROBE "):])
            except ValueError:
                break
    tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    return {"error": f"{python} failed: {tail[0]}"}


def check_python(python: str, probe: Dict[str, Any]) -> Dict[str, Any]:
    """The agent's python and the trainer's."""
    agent = ".".join(map(str, sys.version_info[:3]))
    if "error" in probe and "python" not in probe:
        return _check("python", "FAIL", f"trainer python {python}: {probe['error']} (agent {agent})")
    version = probe.get("python", "?")
    major_minor = tuple(int(x) for x in version.split(".")[:2]) if version != "?" else (0, 0)
    if major_minor < (3, 8):
        return _check("python", "WARN", f"trainer python {version} at {python} is older than 3.8")
    return _check("python", "PASS", f"trainer {version} ({python}); agent {agent}", trainer=version,
                  agent=agent)


def check_torch(probe: Dict[str, Any], gpu_count: int, timeout_s: float) -> Dict[str, Any]:
    """Torch importable, CUDA usable when GPUs exist, and built for this GPU's compute capability."""
    if probe.get("timeout"):
        return _check("torch", "WARN", f"torch probe timed out after {timeout_s:g} s (slow disk?)")
    if "error" in probe:
        return _check("torch", "WARN", f"not probed: {probe['error']}")
    if "torch_error" in probe:
        return _check("torch", "WARN", f"torch not importable: {probe['torch_error']}")
    base = f"torch {probe['torch']} (CUDA {probe.get('torch_cuda') or 'none'})"
    if not probe.get("cuda_available"):
        if gpu_count:
            why = probe.get("cuda_error") or "torch.cuda.is_available() is False"
            return _check("torch", "FAIL", f"{base}: {gpu_count} GPU(s) present but {why}; "
                          "training would silently run on CPU: install a CUDA build of torch", **probe)
        return _check("torch", "PASS", f"{base}: no GPU, CPU only", **probe)
    cap = probe.get("capability") or []
    arch = probe.get("arch_list") or []
    detail = f"{base}: cuda available, compute capability {'.'.join(map(str, cap))}"
    ptx = any(a.startswith("compute_") for a in arch)  # PTX can be JIT-compiled for a newer GPU
    if cap and arch and f"sm_{cap[0]}{cap[1]}" not in arch and not ptx:
        return _check("torch", "WARN", f"{detail}; this torch has no kernels for sm_{cap[0]}{cap[1]} "
                      f"({' '.join(arch)})", **probe)
    return _check("torch", "PASS", detail, **probe)


def check_gpus(nvml: Nvml, expect_gpu: Optional[bool]) -> List[Dict[str, Any]]:
    """Driver and CUDA version, then each GPU: lost, Xid 48/79, ECC or active throttle FAIL; hot WARN."""
    if not nvml.ensure(0.0) or nvml.count == 0:
        result = "FAIL" if expect_gpu else "WARN"
        return [_check("gpu", result, f"no NVIDIA GPU usable: {nvml.reason}; training runs on CPU")]
    out = []
    try:
        xids = {i: x for i, x in nvml.poll_xids()}
        names = []
        for i in range(nvml.count):
            try:
                row = nvml.read(i)
            except GpuLost as e:
                out.append(_check(f"gpu{i}", "FAIL", f"GPU lost ({e}): replace the box", lost=True))
                names.append("lost")
                continue
            names.append(row.get("name") or "?")
            out.append(_judge_gpu(i, row, xids.get(i)))
    except NvmlUnavailable as e:
        return [_check("gpu", "FAIL" if expect_gpu else "WARN", f"NVML went away during the audit: {e}")]
    head = _check("gpu", "PASS", f"{nvml.count} GPU(s): {', '.join(names)}; driver {nvml.driver_version}, "
                  f"CUDA {nvml.cuda_version}", driver=nvml.driver_version, cuda=nvml.cuda_version)
    return [head] + out


def _judge_gpu(i: int, row: Dict[str, Any], xid: Optional[int]) -> Dict[str, Any]:
    temp, sm, sm_max = row.get("temp_c"), row.get("sm_clock_mhz"), row.get("sm_clock_max_mhz")
    facts = f"{row.get('name')}, {temp} C, SM {sm}/{sm_max} MHz"
    fails, warns = [], []
    bad = [r for r in row.get("throttle_reasons") or [] if r in BAD_THROTTLE]
    if bad:
        fails.append("active throttle: " + ", ".join(bad))
    if xid in FATAL_XIDS:
        fails.append(f"Xid {xid}")
    elif xid is not None:
        warns.append(f"Xid {xid}")
    if row.get("ecc_uncorrected"):
        fails.append(f"{row['ecc_uncorrected']} uncorrectable ECC error(s)")
    hot = temp is not None and temp >= HOT_C
    if hot and sm is not None and sm_max and sm < SM_FLOOR_FRAC * sm_max:
        fails.append(f"hot ({temp} C) with SM clock below {SM_FLOOR_FRAC:.0%} of max")
    elif hot:
        warns.append(f"hot ({temp} C >= {HOT_C:g} C)")
    data = {k: v for k, v in row.items() if k != "index"}
    if fails:
        return _check(f"gpu{i}", "FAIL", f"{facts}: {'; '.join(fails + warns)}: rent another box", data=data)
    if warns:
        return _check(f"gpu{i}", "WARN", f"{facts}: {'; '.join(warns)}", data=data)
    return _check(f"gpu{i}", "PASS", facts, data=data)


def check_xid_history(reader: Callable[[], str]) -> Dict[str, Any]:
    """Xid lines in the kernel log: 48/79 FAIL, others WARN, unreadable WARN (non-authoritative)."""
    try:
        text = reader()
    except OSError as e:
        return _check("xid", "WARN", f"dmesg unreadable ({e}): non-authoritative, have a human confirm "
                      "there was no Xid 48/79 on this box")
    found = parse_xids(text)
    if not found:
        return _check("xid", "PASS", "no Xid in the kernel log")
    codes = sorted({f["xid"] for f in found})
    fatal = [f for f in found if f["xid"] in FATAL_XIDS]
    if fatal:
        last = fatal[-1]
        return _check("xid", "FAIL", f"Xid {last['xid']} on {last['pci']}: a dead GPU; rent another box",
                      xids=found[-20:])
    return _check("xid", "WARN", f"Xid {', '.join(map(str, codes))} in the kernel log (application faults?)",
                  xids=found[-20:])


def check_disks(dirs: Mapping[str, str], ckpt_bytes: Optional[int], retention: int,
                files_per_ckpt: int) -> List[Dict[str, Any]]:
    """Bytes and inodes of each filesystem against the checkpoints retention will keep (plus one)."""
    out = []
    need_b = ckpt_bytes * (retention + 1) if ckpt_bytes else None
    need_i = files_per_ckpt * (retention + 1) + 100
    for mount in group_mounts(list(dirs.items())):
        try:
            u = usage(mount.dirs[0])
        except OSError as e:
            out.append(_check(f"disk:{mount.path}", "FAIL", f"statvfs failed: {e}"))
            continue
        free_b, free_i = u["free_bytes"], u["free_inodes"]
        fracs = [f for f in (u["bytes_frac"], u["inodes_frac"]) if f is not None]
        worst = max(fracs) if fracs else 0.0
        inodes = "no inode limit" if free_i is None else f"{free_i:,} inodes free"
        detail = f"{', '.join(mount.names)}: {human_bytes(free_b)} free, {inodes}"
        if need_b:
            detail += f"; {retention}+1 checkpoints need {human_bytes(need_b)}"
        data = dict(u, names=mount.names, need_bytes=need_b, need_inodes=need_i)
        if (need_b and free_b < need_b) or (free_i is not None and free_i < need_i) or worst >= 0.95:
            result = "FAIL"
        elif (need_b and free_b < 2 * need_b) or (free_i is not None and free_i < 2 * need_i) or worst >= 0.9:
            result = "WARN"
        else:
            result = "PASS"
        out.append(_check(f"disk:{mount.path}", result, detail, **data))
    return out


def check_memory(proc_root: str, cgroup_root: str) -> Dict[str, Any]:
    """The cgroup memory limit (or the host's memory), what is in use, and earlier OOM kills."""
    r = read_memory(proc_root, cgroup_root)
    used, limit = r["used_bytes"], r["limit_bytes"]
    if limit is None:
        return _check("memory", "WARN", "no cgroup and no /proc/meminfo: memory unknown", **r)
    where = f"cgroup v{r['version']} limit" if r["limit_source"] == "cgroup" else "no cgroup limit; host"
    detail = f"{where} {human_bytes(limit)}, {human_bytes(used)} in use"
    if r["oom_kills"]:
        return _check("memory", "WARN", f"{detail}; {r['oom_kills']} earlier OOM kill(s) in this cgroup", **r)
    if used is not None and used >= 0.9 * limit:
        return _check("memory", "WARN", f"{detail}: little left for the trainer", **r)
    return _check("memory", "PASS", detail, **r)


def check_cpu(proc_root: str, cgroup_root: str) -> Dict[str, Any]:
    """The CPU quota against the visible CPUs, with thread caps that avoid a thread storm."""
    try:
        visible = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        visible = os.cpu_count() or 1
    quota, _cg = cpu_quota(proc_root, cgroup_root)
    cores = visible if quota is None else min(visible, quota)
    cap = max(1, int(math.floor(cores)))
    caps = {k: str(cap) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    workers = max(0, cap - 1)
    quota_text = "no CPU quota" if quota is None else f"CPU quota {quota:g} cores"
    detail = (f"{quota_text}, {visible} CPUs visible: propose "
              f"{' '.join(f'{k}={v}' for k, v in caps.items())}, DataLoader num_workers <= {workers}")
    return _check("cpu", "PASS", detail, quota_cores=quota, visible_cpus=visible, thread_cap=cap,
                  env=caps, max_workers=workers)


def run_doctor(dirs: Union[str, Mapping[str, str], Sequence[str]] = (), proc_root: str = "/proc",
               cgroup_root: str = "/sys/fs/cgroup", nvml_lib: Any = None, python: str = sys.executable,
               ckpt_bytes: Optional[int] = None, retention: int = 3, files_per_ckpt: int = 1,
               dmesg_reader: Optional[Callable[[], str]] = None, expect_gpu: Optional[bool] = None,
               torch_timeout_s: float = 60.0, now: Optional[float] = None) -> List[Dict[str, Any]]:
    """Every pre-flight check, in a fixed order.

    ``dirs`` maps names to dirs (run, ckpt, durable, hf_cache), or is a list of dirs, or one dir.
    """
    if isinstance(dirs, str):
        watched = {"run": dirs}
    else:
        watched = dict(dirs) if isinstance(dirs, Mapping) else {d: d for d in dirs}
    nvml = Nvml(nvml_lib)
    results = [check_clock(now)]
    probe = probe_python(python, torch_timeout_s)
    results.append(check_python(python, probe))
    results.extend(check_gpus(nvml, expect_gpu))
    results.append(check_xid_history(dmesg_reader or read_dmesg))
    results.append(check_torch(probe, nvml.count if nvml.ready else 0, torch_timeout_s))
    results.extend(check_disks(watched, ckpt_bytes, retention, files_per_ckpt))
    results.append(check_memory(proc_root, cgroup_root))
    results.append(check_cpu(proc_root, cgroup_root))
    nvml.close()
    return results


def worst_result(results: Sequence[Mapping[str, Any]]) -> str:
    """FAIL if any failed, else WARN if any warned, else PASS."""
    seen = {r.get("result") for r in results}
    return "FAIL" if "FAIL" in seen else ("WARN" if "WARN" in seen else "PASS")
