"""`rgt demo` end to end on this machine: every phase waits for its event, however busy the machine is."""

import re

from tests.conftest import scaled

PHASE_S = 300  # each phase's bound; the demo's own default is 600 s


def test_demo_shows_up_status_stop_pull_and_next_steps(env):
    p = env.rgt("demo", "--watch-s", "6", "--steps", "300", "--phase-timeout-s", str(scaled(PHASE_S)),
                timeout=3 * PHASE_S + 120)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    out = p.stdout
    phases = [out.index(x) for x in ("[1/5] up", "[2/5] status", "first verified checkpoint: step",
                                     "[3/5] stop", "[4/5] pull", "[5/5] next")]
    assert phases == sorted(phases), out  # the stop comes only after the first verified checkpoint
    assert "running (attempt 1" in out and ": stopped (attempt 1" in out
    assert "PULL_VERIFIED.json" in out + p.stderr

    # No library warns: not the demo's own output, nor the trainer's or the agent's logs.
    logs = "".join(f.read_text(errors="replace") for f in env.root.glob("runs/*/logs/*"))
    for text in (out, p.stderr, logs):
        assert not re.search(r"Warning|Failed to initialize NumPy|Traceback", text), text[-3000:]
