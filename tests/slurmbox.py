"""A real single-node Slurm cluster for tests (munged, slurmctld, slurmd as root; config in a temp dir).

The recipe is ../shared/test-recipes.md section 8, made private: munged listens on its own socket
(slurm.conf's AuthInfo names it), the daemons use free ports and a random FirstJobId, and GPU jobs get
fake gres devices made with mknod. The node is this machine's hostname, which resolves to 127.0.0.1.
`SlurmLogin` is an SSHBox whose login sees SLURM_CONF, so `sbatch` over ssh reaches this cluster.

What runs a torch trainer as the ssh test user: that user cannot execute the project venv's python
(it lives under /root), and the box python (Debian's /usr/bin/python3.11) has no torch. `torch_python`
makes a venv of the box python whose site-packages point (one .pth line) at the project venv's, so the
trainer and the agent's checkpoint verifier both import torch as the test user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from tests.conftest import scaled
from tests.sshbox import RGT, SSHBox, free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")

# A trainer for tests (torch, no rgt helper): saves ckpt/step_N.pt atomically, resumes from RGT_RESUME_FROM
# or the newest step file that loads, saves on SIGTERM (then exits 143) and on SIGUSR1 (then goes on).
TRAINER = '''\
import argparse, glob, json, os, re, signal, sys, time
flags = {"term": False, "usr1": False}  # handlers first: a save request may come while torch imports
signal.signal(signal.SIGTERM, lambda s, f: flags.__setitem__("term", True))
signal.signal(signal.SIGUSR1, lambda s, f: flags.__setitem__("usr1", True))
import torch
p = argparse.ArgumentParser()
p.add_argument("--steps", type=int, default=20)
p.add_argument("--sleep", type=float, default=0.1)
p.add_argument("--save-every", type=int, default=5)
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--bs", type=int, default=8)
a = p.parse_args()
ckpt = os.environ.get("RGT_CKPT_DIR") or "ckpt"
os.makedirs(ckpt, exist_ok=True)
print("CUDA_VISIBLE_DEVICES=" + os.environ.get("CUDA_VISIBLE_DEVICES", "-"), flush=True)

def save(step, w):
    path, tmp = os.path.join(ckpt, "step_%d.pt" % step), os.path.join(ckpt, ".step_%d.pt.tmp" % step)
    torch.save({"step": torch.tensor(step), "w": w}, tmp)
    os.replace(tmp, path)

def newest():
    found = glob.glob(os.path.join(ckpt, "step_*.pt"))
    found.sort(key=lambda q: int(re.findall(r"\\d+", os.path.basename(q))[0]), reverse=True)
    for path in [os.environ.get("RGT_RESUME_FROM")] + found:
        if path:
            try:
                return torch.load(path, weights_only=True), path
            except (OSError, RuntimeError, EOFError, ValueError):
                continue
    return None, None

state, path = newest()
start, w = (int(state["step"]), state["w"]) if state else (0, torch.zeros(4))
if state:
    print("resumed from step=%d (%s)" % (start, path), flush=True)
for step in range(start + 1, a.steps + 1):
    w = w + a.lr * torch.ones(4) / a.bs
    print("step=%d loss=%.4f" % (step, 1.0 / step), flush=True)
    if step % a.save_every == 0 or flags["usr1"] or flags["term"]:
        save(step, w)
        if flags["usr1"]:
            print("SIGUSR1: saved step=%d" % step, flush=True)
            flags["usr1"] = False
    if flags["term"]:
        print("SIGTERM: saved step=%d" % step, flush=True)
        sys.exit(143)
    time.sleep(a.sleep)
with open("result.json", "w") as f:
    json.dump({"lr": a.lr, "bs": a.bs, "steps": a.steps, "w": w.tolist()}, f)
print("done", flush=True)
'''


def _which(name: str) -> Optional[str]:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.path.exists(f"{d}/{name}")), None)


def slurm_installed() -> bool:
    """The Slurm daemons, munge and clients are installed, and we are root (the daemons run as root)."""
    return os.geteuid() == 0 and all(_which(n) for n in DAEMONS) and shutil.which("runuser") is not None


def _clean_env() -> Dict[str, str]:
    """No per-test marker: the reaper must not take the cluster's daemons."""
    return {k: v for k, v in os.environ.items() if k not in ("RGT_TEST_SESSION", "SLURM_CONF")}


def _pid_from(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


class SlurmBox:
    """munged + slurmctld + slurmd on this machine, private to one test session."""

    def __init__(self, gpus: int = 2) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="rgt-slurm-", dir="/tmp"))
        os.chmod(self.dir, 0o755)  # the login user reads slurm.conf and reaches the munge socket
        self.node = socket.gethostname()
        self.gpus = gpus
        self.conf = self.dir / "slurm.conf"
        self.munge_dir = self.dir / "munge"
        self.socket = self.munge_dir / "munge.socket"
        self.log = self.dir / "log"
        self.proctrack = "cgroup" if os.access("/sys/fs/cgroup/freezer", os.W_OK) else "linuxproc"
        self.started = False

    @property
    def env(self) -> Dict[str, str]:
        """Environment for Slurm client commands run here."""
        return dict(_clean_env(), SLURM_CONF=str(self.conf))

    # -- set-up ---------------------------------------------------------------------------------------
    def _start_munge(self) -> None:
        self.munge_dir.mkdir(mode=0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        os.chmod(key, 0o400)
        for p in (self.munge_dir, key):
            shutil.chown(p, "munge", "munge")
        m = self.munge_dir
        subprocess.run(["runuser", "-u", "munge", "--", _which("munged"), f"--socket={self.socket}",
                        f"--key-file={key}", f"--pid-file={m / 'munged.pid'}", f"--log-file={m / 'munged.log'}",
                        f"--seed-file={m / 'munged.seed'}"], check=True, capture_output=True, env=_clean_env(),
                       timeout=scaled(60))

    def _write_conf(self) -> None:
        d = self.dir
        for sub in ("state", "spool", "log", "dev"):
            (d / sub).mkdir(exist_ok=True)
        for i in range(self.gpus):  # fake GPUs: gres needs device files to count (major 195 is nvidia's)
            os.mknod(d / "dev" / f"nvidia{i}", 0o644 | 0o020000, os.makedev(195, i))
        gres = f"Gres=gpu:{self.gpus} " if self.gpus else ""
        lines = [
            "ClusterName=rgttest", f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={free_port()}", f"SlurmdPort={free_port()}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            # cred_expire: a requeued job waits this long before it may start again (default 120 s)
            f"AuthInfo=socket={self.socket},cred_expire=5", "GresTypes=gpu",
            f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
            f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.log / 'slurmctld.log'}", f"SlurmdLogFile={self.log / 'slurmd.log'}",
            f"ProctrackType=proctrack/{self.proctrack}", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill",
            "SchedulerParameters=sched_interval=2,bf_interval=1", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none", "MpiDefault=none",
            "ReturnToService=2", "KillWait=10", "MinJobAge=600", f"FirstJobId={secrets.randbelow(800000) + 1000}",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={os.cpu_count() or 2} RealMemory=2000 {gres}State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP", "",
        ]
        self.conf.write_text("\n".join(lines))
        (d / "gres.conf").write_text(
            f"NodeName={self.node} Name=gpu File={d / 'dev'}/nvidia[0-{self.gpus - 1}]\n" if self.gpus else "")
        (d / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\nCgroupAutomount=no\nConstrainCores=no\n"
                                       "ConstrainRAMSpace=no\nConstrainDevices=no\n")
        for name in ("slurm.conf", "gres.conf", "cgroup.conf"):
            os.chmod(d / name, 0o644)

    def start(self, timeout_s: float = 120.0) -> None:
        """munged, slurmctld and slurmd; returns once the node is idle. RuntimeError with the logs if not."""
        if socket.gethostbyname(self.node) not in ("127.0.0.1", "127.0.1.1"):
            raise RuntimeError(f"hostname {self.node} does not resolve to this machine")
        self._start_munge()
        self._write_conf()
        self.started = True
        for argv in ([_which("slurmctld"), "-f", str(self.conf)], [_which("slurmd"), "-f", str(self.conf), "-N",
                                                                    self.node]):
            subprocess.run(argv, check=True, capture_output=True, env=self.env, timeout=scaled(120))
        deadline = time.monotonic() + scaled(timeout_s)
        while time.monotonic() < deadline:
            state = self.run("sinfo", "-h", "-n", self.node, "-o", "%t").stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Slurm node did not become idle ({state!r}): {self.logs()}")

    def logs(self) -> str:
        """The ends of the daemons' logs, for failure messages."""
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            try:
                out.append(f"{name}: " + " | ".join((self.log / name).read_text().splitlines()[-5:]))
            except OSError:
                pass
        return "; ".join(out)

    # -- use ------------------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = False) -> subprocess.CompletedProcess:
        """A Slurm client command as root against this cluster."""
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=scaled(120),
                              check=check)

    def job_state(self, job_id: str) -> Optional[str]:
        """JobState from scontrol, None when unknown."""
        out = self.run("scontrol", "-o", "show", "job", job_id).stdout
        for word in out.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return None

    def jobs(self) -> List[str]:
        """Ids of every job the controller still holds."""
        return self.run("squeue", "-h", "-t", "all", "-o", "%i").stdout.split()

    def cancel_all(self) -> None:
        """Cancel whatever is queued or running (all jobs on this private cluster are the tests')."""
        ids = self.jobs()
        if ids:
            self.run("scancel", *ids)

    # -- tear-down ------------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop the daemons (scontrol shutdown), munged by its pid file, our cgroups, the files."""
        if self.started:
            self.cancel_all()
            pids = [_pid_from(self.dir / n) for n in ("slurmctld.pid", "slurmd.pid")]
            self.run("scontrol", "shutdown")
            deadline = time.monotonic() + 30
            while any(_alive(p) for p in pids) and time.monotonic() < deadline:
                time.sleep(0.1)
            munged = _pid_from(self.munge_dir / "munged.pid")
            if _alive(munged):
                os.kill(munged, signal.SIGTERM)
            self._remove_cgroups()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _remove_cgroups(self) -> None:
        """Empty cgroup dirs slurmd left under the v1 controllers (a busy one, another session's, stays)."""
        for top in Path("/sys/fs/cgroup").glob(f"*/slurm_{self.node}"):
            for d in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
                try:
                    d.rmdir()
                except OSError:
                    pass
            try:
                top.rmdir()
            except OSError:
                pass


class SlurmLogin(SSHBox):
    """An SSHBox whose login has SLURM_CONF set: the cluster's login node."""

    def __init__(self, slurm_conf: str) -> None:
        super().__init__()
        ak = self.dir / "authorized_keys"
        ak.write_text(f'environment="SLURM_CONF={slurm_conf}",' + ak.read_text())


def torch_python(base: Path, user: Optional[str], box_python: str) -> Optional[str]:
    """A python for ``user`` that imports the project venv's torch (see the module docstring), or None."""
    try:
        import torch
    except ImportError:
        return None
    site = os.path.dirname(os.path.dirname(torch.__file__))
    want = f"{sys.version_info[0]}.{sys.version_info[1]}"
    ver = subprocess.run([box_python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                         capture_output=True, text=True, check=False).stdout.strip()
    if ver != want:
        return None  # torch's compiled parts are for this minor version only
    venv = base / "torch-venv"
    made = subprocess.run([box_python, "-m", "venv", "--without-pip", str(venv)], capture_output=True, check=False)
    if made.returncode != 0:
        return None
    (venv / "lib" / f"python{want}" / "site-packages" / "rgt-test-torch.pth").write_text(site + "\n")
    subprocess.run(["chmod", "-R", "a+rX", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    argv = [python, "-c", "import torch"]
    if user is not None:
        argv = ["runuser", "-u", user, "--", *argv]
    ok = subprocess.run(argv, capture_output=True, check=False, timeout=scaled(120)).returncode == 0
    return python if ok else None


def rgt_runner(login: SSHBox, state: str) -> Callable[..., subprocess.CompletedProcess]:
    """A runner for the `rgt` console script aimed at ``login``, with its own state dir."""

    def run(*args: str, timeout_s: float = 180.0, cwd: Optional[str] = None,
            env: Optional[dict] = None) -> subprocess.CompletedProcess:
        return subprocess.run([RGT, *args], capture_output=True, text=True, timeout=scaled(timeout_s),
                              env=dict(login.env(state), **(env or {})), cwd=cwd or os.getcwd(), check=False)

    run.state = state
    return run
