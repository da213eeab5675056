"""Retention in the user's own folders under `rgt up local`: kept by default, --keep-last N, the disk act level."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import wait_until

# Five numbered checkpoints in the user's folder (code/checkpoints) and five in rgt's own $RGT_CKPT_DIR.
FIVE = """\
import os
import torch

os.makedirs("checkpoints", exist_ok=True)
for step in range(1, 6):
    print(f"step={step} loss={1.0 / step:.4f}", flush=True)
    torch.save({"w": torch.full((64,), float(step))}, f"checkpoints/ckpt_{step}.pt")
    torch.save({"w": torch.full((64,), float(step))}, os.path.join(os.environ["RGT_CKPT_DIR"], f"step_{step}.pt"))
"""

# Three checkpoints in an absolute dir on a small tmpfs; once all are verified the trainer fills the disk
# past the sentinel's act level (95 %) with a file that is no checkpoint, and waits for rgt to prune.
FILL = """\
import json, os, sys, time
import torch

d, run = sys.argv[1], os.path.dirname(os.getcwd())  # the trainer runs in the run's code/


def records():
    try:
        with open(os.path.join(run, "ckpt_index.json")) as f:
            return json.load(f)["records"]
    except (OSError, ValueError, KeyError):
        return []


def wait(cond, what):
    deadline = time.time() + 600
    while not cond():
        if time.time() > deadline:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.2)


for step in (1, 2, 3):
    print(f"step={step} loss={1.0 / step:.4f}", flush=True)
    torch.save({"w": torch.randn(128 * 1024)}, os.path.join(d, f"ckpt_{step}.pt"))
    wait(lambda: sum(r["state"] == "verified" for r in records()) >= step, f"checkpoint {step} verified")
st = os.statvfs(d)
fill = st.f_bavail * st.f_frsize - int(0.02 * st.f_blocks * st.f_frsize)
with open(os.path.join(d, "fill.bin"), "wb") as f:
    f.write(b"\\0" * max(0, fill))
print("filled", flush=True)
wait(lambda: sum(bool(r.get("pruned_by_rgt")) for r in records()) >= 2, "rgt to prune")
"""


def _index(run_dir: Path) -> dict:
    return {r["key"]: r for r in json.loads((run_dir / "ckpt_index.json").read_text())["records"]}


def _run(env, run: str, trainer_python: str, *args: str, flags=()) -> Path:
    env.rgt("up", "local", "--run", run, "--tick-s", "0.5", "--trainer-python", trainer_python, *flags, "--",
            trainer_python, *args, check=True, timeout=300)
    wait_until(lambda: env.marker(run), 900, interval_s=0.5, what=f"{run} to end")
    d = env.run_dir(run)
    assert env.marker(run) == "DONE", (d / "logs" / "trainer.log").read_text()[-3000:]
    return d


def _pruned_events(env, run: str) -> list:
    out = env.rgt("events", run, "--json", check=True).stdout
    return [json.loads(x) for x in out.splitlines() if '"ckpt_pruned"' in x]


def test_the_users_folder_keeps_every_checkpoint_by_default_while_rgts_own_dir_rotates(env, trainer_python):
    (env.project / "train.py").write_text(FIVE)
    run = _run(env, "keep-all", trainer_python, "train.py")
    recs = _index(run)
    assert sorted(p.name for p in (run / "code" / "checkpoints").iterdir()) == [f"ckpt_{s}.pt" for s in range(1, 6)]
    assert all(recs[f"code/checkpoints/ckpt_{s}.pt"]["state"] == "verified" for s in range(1, 6))
    assert not any(recs[f"code/checkpoints/ckpt_{s}.pt"]["pruned"] for s in range(1, 6))
    # rgt's own $RGT_CKPT_DIR keeps its default: the last 3
    assert sorted(p.name for p in (run / "ckpt").iterdir() if not p.name.startswith(".")) == [
        "step_3.pt", "step_4.pt", "step_5.pt"]
    assert {e["path"] for e in _pruned_events(env, "keep-all")} == {"ckpt/step_1.pt", "ckpt/step_2.pt"}


def test_keep_last_prunes_the_users_folder_to_the_newest_n_verified(env, trainer_python):
    (env.project / "train.py").write_text(FIVE)
    run = _run(env, "keep-2", trainer_python, "train.py", flags=("--keep-last", "2"))
    assert sorted(p.name for p in (run / "code" / "checkpoints").iterdir()) == ["ckpt_4.pt", "ckpt_5.pt"]
    assert sorted(p.name for p in (run / "ckpt").iterdir() if not p.name.startswith(".")) == [
        "step_4.pt", "step_5.pt"]
    pruned = {e["path"]: e["reason"] for e in _pruned_events(env, "keep-2")}  # one journal record per deletion
    assert {p for p in pruned if p.startswith("code/")} == {f"code/checkpoints/ckpt_{s}.pt" for s in (1, 2, 3)}
    cp = env.status("keep-2")["checkpoint"]
    assert cp["pruned_count"] == 6 and "retention" in cp["last_pruned"]
    assert "rgt pruned 6 checkpoint(s)" in env.rgt("status", "keep-2", check=True).stdout


def test_keep_last_in_rgt_toml_turns_pruning_of_the_users_folders_on(env):
    (env.project / "rgt.toml").write_text("[run]\nkeep_last = 4\n")
    spec = json.loads(env.rgt("up", "local", "--dry-run", "--json", "--", "python3", "train.py", check=True).stdout)
    assert spec["spec"]["keep_last"] == 4 and spec["spec"]["prune_user_dirs"] is True
    (env.project / "rgt.toml").unlink()
    spec = json.loads(env.rgt("up", "local", "--dry-run", "--json", "--", "python3", "train.py", check=True).stdout)
    assert spec["spec"]["prune_user_dirs"] is False


def test_past_the_disk_act_level_only_verified_checkpoints_older_than_the_newest_go(env, trainer_python, tmpfs):
    disk = Path(tmpfs("smalldisk", "size=8m"))
    out = disk / "ckpt"
    (env.project / "train.py").write_text(FILL)
    run = _run(env, "disk-act", trainer_python, "train.py", str(out),
               flags=("--ckpt-dir", str(out), "--min-free-gb", "0"))  # past the launch gate: the sentinel acts
    assert sorted(p.name for p in out.iterdir()) == ["ckpt_3.pt", "fill.bin"]  # the newest verified one stays
    recs = _index(run)
    assert recs["ckpt_3.pt"]["state"] == "verified" and not recs["ckpt_3.pt"]["pruned"]
    events = _pruned_events(env, "disk-act")
    assert sorted(e["path"] for e in events) == [f"abs{out}/ckpt_1.pt", f"abs{out}/ckpt_2.pt"]
    assert all("bytes used" in e["reason"] for e in events), events
    cp = env.status("disk-act")["checkpoint"]
    assert cp["pruned_count"] == 2 and cp["resume_from"] == f"abs{out}/ckpt_3.pt"
