"""`rgt reap`: only processes proven by an open fd to hold the GPU, shown first, never the run's own."""

import json
import subprocess
import sys

from rgt.agent import procs
from tests.conftest import scaled, wait_until

# Holds the device until the test kills it (reap, stop or the fixture), however slow the machine.
HOLDER = "import sys, time\nf = open(sys.argv[1])\nprint('step=1 loss=1', flush=True)\ntime.sleep(1200)\n"


def test_reap_lists_only_strangers_holding_the_device_and_kills_only_with_the_run_id(env):
    dev = env.tmp / "dev"
    dev.mkdir()
    (dev / "nvidia0").write_text("")
    (env.project / "hold.py").write_text(HOLDER)
    env.rgt("up", "local", "--run", "reap1", "--tick-s", "0.3", "--", "python3", "hold.py", str(dev / "nvidia0"),
            check=True)
    wait_until(lambda: env.status("reap1").get("progress", {}).get("step") == 1, 120, what="trainer holds the device")
    trainer = env.status("reap1")["trainer"]
    stray = subprocess.Popen([sys.executable, "-c", HOLDER, str(dev / "nvidia0")], stdout=subprocess.PIPE)
    stray.stdout.readline()
    args = ("reap1", "--min-age-s", "0", "--device-prefix", str(dev / "nvidia"))

    p = env.rgt("reap", *args, "--json")
    assert p.returncode == 0, p.stderr
    listed = [c["pid"] for c in json.loads(p.stdout)]
    assert listed == [stray.pid], "the run's own trainer is never a candidate"
    assert "nothing killed" in p.stderr and stray.poll() is None

    p = env.rgt("reap", *args, "--confirm", "someone-else")
    assert p.returncode == 4 and stray.poll() is None

    p = env.rgt("reap", *args, "--confirm", "reap1")
    assert p.returncode == 0, p.stderr
    assert f"killed pid {stray.pid}" in p.stderr
    assert stray.wait(timeout=scaled(10)) == -9
    assert procs.is_same_process(trainer["pid"], trainer["start_time"]), "the trainer is untouched"
    assert env.status("reap1")["state"] == "running"
    env.rgt("stop", "reap1", check=True)
