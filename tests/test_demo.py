def test_demo_shows_up_status_stop_pull_and_next_steps(env):
    p = env.rgt("demo", "--watch-s", "6", "--steps", "300", timeout=180)
    assert p.returncode == 0, p.stderr[-2000:]
    out = p.stdout
    for phase in ("[1/5] up", "[2/5] status", "[3/5] stop", "[4/5] pull", "[5/5] next"):
        assert phase in out
    assert "running (attempt 1" in out and ": stopped (attempt 1" in out
    assert "PULL_VERIFIED.json" in out + p.stderr
