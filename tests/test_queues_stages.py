"""Queues, stage chains, the disk gate, the sync gate, GPU leases and webhooks, with real processes and filesystems."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from rgt.controller.cells import parse_queue
from rgt.shared.errors import BadInput
from tests.conftest import wait_until


def _marker(env, run_id):
    name = wait_until(lambda: env.marker(run_id), 120, what="marker")
    return name, json.loads((env.run_dir(run_id) / name).read_text())


def test_queue_file_skips_comments_and_blanks_without_counting_them():
    cells = parse_queue("# header\n\nfirst: python a.py\n  # x\npython b.py --lr 3e-4:x\n")
    assert [(c["name"], c["command"][2]) for c in cells] == [("first", "python a.py"),
                                                           ("cell-02", "python b.py --lr 3e-4:x")]
    with pytest.raises(BadInput, match="used twice"):
        parse_queue("a: x\na: y\n")


def test_queue_where_cell_2_fails_ends_failed_naming_it_and_still_runs_cell_3(env):
    (env.project / "q.txt").write_text("a: echo step=1 loss=1\n# skip me\n\nb: exit 3\nc: echo done > c.out\n")
    env.rgt("up", "local", "--run", "q3", "--tick-s", "0.3", "--max-restarts", "0", "--queue", "q.txt", check=True)
    assert env.rgt("wait", "q3").returncode == 5
    name, marker = _marker(env, "q3")
    assert name == "FAILED" and marker["failed_cells"] == ["b"]
    assert [c["state"] for c in marker["cells"]] == ["succeeded", "failed", "succeeded"]
    assert (env.run_dir("q3") / "code" / "c.out").exists()
    assert "done" not in marker["reason"].lower() or "failed cells" in marker["reason"]


def test_from_n_starts_at_the_nth_real_cell(env):
    (env.project / "q.txt").write_text("# c\na: touch a.out\n\nb: touch b.out\nc: touch c.out\n")
    env.rgt("up", "local", "--run", "qf", "--tick-s", "0.3", "--queue", "q.txt", "--from", "2", check=True)
    assert env.rgt("wait", "qf").returncode == 0
    code = env.run_dir("qf") / "code"
    assert not (code / "a.out").exists() and (code / "b.out").exists() and (code / "c.out").exists()
    assert [c["state"] for c in env.status("qf")["cells"]] == ["skipped", "succeeded", "succeeded"]


def test_disk_below_the_floor_before_cell_2_aborts_it_and_cell_3_never_starts(env, tmpfs):
    box = Path(tmpfs("smallbox", "size=48m"))
    env.env["RGT_ROOT"], env.root = str(box), box
    (env.project / "q.txt").write_text(
        "fill: head -c 24000000 /dev/zero > $RGT_CELL_DIR/big.bin\nsecond: touch b.out\nthird: touch c.out\n")
    p = env.rgt("up", "local", "--run", "gate", "--tick-s", "0.3", "--queue", "q.txt", "--min-free-gb", "0.03")
    assert p.returncode == 0, p.stderr
    assert env.rgt("wait", "gate").returncode == 5
    name, marker = _marker(env, "gate")
    states = {c["name"]: (c["state"], c["failure_class"]) for c in marker["cells"]}
    assert states == {"fill": ("succeeded", None), "second": ("failed", "disk_gate_abort"),
                      "third": ("skipped", None)}
    assert not (env.run_dir("gate") / "code" / "b.out").exists()
    assert marker["failure"]["class"] == "disk_gate_abort" and "below the floor" in marker["failure"]["evidence"]


def test_stage_chain_where_eval_fails_never_runs_export(env):
    (env.project / "rgt.toml").write_text(
        '[run]\nmax_restarts = 0\ntick_s = 0.3\n\n[stages]\ntrain = "echo step=5 loss=0.1"\n'
        'eval = "echo evaluating; exit 1"\nexport = "touch exported"\n')
    env.rgt("up", "local", "--run", "chain", check=True)
    assert env.rgt("wait", "chain").returncode == 5
    _, marker = _marker(env, "chain")
    assert [(c["name"], c["state"]) for c in marker["cells"]] == [
        ("train", "succeeded"), ("eval", "failed"), ("export", "skipped")]
    assert not (env.run_dir("chain") / "code" / "exported").exists()


def test_setup_stage_keeps_the_images_torch(env):
    (env.project / "requirements.txt").write_text("click>=8\ntorch==2.1.0\ntorchvision>=0.16\nnumpy\n")
    (env.project / "rgt.toml").write_text(
        '[run]\ntick_s = 0.3\n\n[stages]\nsetup = "cat -- -r requirements.txt 2>/dev/null; cp $(echo'
        ' requirements.txt) /dev/null; true -r requirements.txt && echo ok"\ntrain = "echo trained"\n')
    env.rgt("up", "local", "--run", "setup1", check=True)
    assert env.rgt("wait", "setup1").returncode == 0
    log = (env.run_dir("setup1") / "logs" / "trainer.log").read_text()
    assert "dropped from requirements: torch==2.1.0; torchvision>=0.16" in log
    filtered = list((env.run_dir("setup1") / "cells" / "01-setup").glob("requirements-*.txt"))
    text = filtered[0].read_text()
    assert "click>=8" in text and "numpy" in text and "\ntorch==" not in text


def test_cell_whose_durable_dir_is_read_only_ends_sync_failed_despite_exit_0(env, tmpfs):
    ro = tmpfs("durable", "ro,size=1m")
    (env.project / "q.txt").write_text("train: echo weights > $RGT_CELL_DIR/best.pt\n")
    env.rgt("up", "local", "--run", "sync1", "--tick-s", "0.3", "--queue", "q.txt", "--durable-dir", str(ro),
            check=True)
    assert env.rgt("wait", "sync1").returncode == 5
    _, marker = _marker(env, "sync1")
    cell = marker["cells"][0]
    assert cell["exit_code"] == 0 and cell["failure_class"] == "sync_failed"
    assert "Read-only file system" in marker["failure"]["evidence"]


def test_cell_with_a_writable_durable_dir_copies_its_outputs(env, tmpfs):
    durable = Path(tmpfs("durable2", "size=8m"))
    (env.project / "q.txt").write_text("train: echo weights > $RGT_CELL_DIR/best.pt\n")
    env.rgt("up", "local", "--run", "sync2", "--tick-s", "0.3", "--queue", "q.txt", "--durable-dir",
            str(durable), check=True)
    assert env.rgt("wait", "sync2").returncode == 0
    assert (durable / "rgt" / "sync2" / "cells" / "01-train" / "best.pt").read_text() == "weights\n"


def test_two_runs_asking_for_the_same_gpu_the_second_is_refused(env):
    env.rgt("up", "local", "--run", "gpu-a", "--tick-s", "0.3", "--gpus", "0", "--", "python3", "train.py",
            check=True, extra_env={"STEPS": "200"})
    p = env.rgt("up", "local", "--run", "gpu-b", "--tick-s", "0.3", "--gpus", "0,1", "--", "python3", "train.py")
    assert p.returncode == 4, p.stderr
    assert "GPU 0 is in use by run gpu-a" in p.stderr and "--share-gpu" in p.stderr
    p = env.rgt("up", "local", "--run", "gpu-c", "--tick-s", "0.3", "--gpus", "1", "--", "python3", "train.py",
                extra_env={"STEPS": "1"})
    assert p.returncode == 0, p.stderr
    env.rgt("stop", "gpu-a", check=True)
    assert env.rgt("wait", "gpu-c").returncode == 0


class _Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers["Content-Length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(port):
    server = HTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _notify_project(env, port):
    (env.project / "rgt.toml").write_text(
        '[run]\nmax_restarts = 0\ntick_s = 0.3\n\n[notify]\nwebhook_secret = "HOOK_URL"\nformat = "json"\n'
        "retry_max_s = 1\n")
    return {"HOOK_URL": f"http://127.0.0.1:{port}/hook", "EXIT_CODE": "3", "STEPS": "1"}


def test_failure_webhook_is_delivered_with_class_and_remediation(env):
    _Hook.received = []
    port = _free_port()
    server = _serve(port)
    try:
        env.rgt("up", "local", "--run", "hook1", "--", "python3", "train.py", check=True,
                extra_env=_notify_project(env, port))
        assert env.rgt("wait", "hook1").returncode == 5
        wait_until(lambda: any(p["event"] == "failed" for p in _Hook.received), 120, what="the failed webhook")
    finally:
        server.shutdown()
    failed = next(p for p in _Hook.received if p["event"] == "failed")
    assert failed["class"] == "crashed" and failed["remediation"] and failed["run_id"] == "hook1"


def test_webhook_down_leaves_the_run_unaffected_and_delivers_once_back(env):
    _Hook.received = []
    port = _free_port()
    env.rgt("up", "local", "--run", "hook2", "--", "python3", "train.py", check=True,
            extra_env=_notify_project(env, port))
    assert env.rgt("wait", "hook2").returncode == 5, "the run ends on time with the webhook down"
    server = _serve(port)
    try:
        wait_until(lambda: any(p["event"] == "failed" for p in _Hook.received), 120, what="delayed delivery")
    finally:
        server.shutdown()
    assert sum(p["event"] == "failed" for p in _Hook.received) == 1


@pytest.mark.parametrize(("fmt", "key"), [("slack", "text"), ("discord", "content")])
def test_chat_webhook_formats_carry_the_text(fmt, key):
    from rgt.agent.notify import render

    body, headers = render(fmt, {"text": "[rgt] r1: failed: oom", "run_id": "r1", "event": "failed"})
    assert json.loads(body) == {key: "[rgt] r1: failed: oom"} and headers["Content-Type"] == "application/json"


def test_ntfy_format_is_plain_text_with_a_title():
    from rgt.agent.notify import render

    body, headers = render("ntfy", {"text": "[rgt] r1: succeeded", "run_id": "r1", "event": "succeeded"})
    assert body == b"[rgt] r1: succeeded" and headers["Title"] == "rgt r1: succeeded"


def test_a_malformed_webhook_url_never_reaches_logs_and_the_run_still_ends(env):
    token = "SECRET-TOPIC-4f9a1c"
    (env.project / "rgt.toml").write_text(
        '[run]\nmax_restarts = 0\ntick_s = 0.3\n\n[notify]\nwebhook_secret = "HOOK_URL"\nformat = "ntfy"\n'
        "retry_max_s = 1\n")
    env.rgt("up", "local", "--run", "hook3", "--", "python3", "train.py", check=True,
            extra_env={"HOOK_URL": f"ntfy.sh:{token}/x", "STEPS": "1"})
    assert env.rgt("wait", "hook3").returncode == 0
    wait_until(lambda: "not delivered" in (env.run_dir("hook3") / "logs" / "agent.log").read_text(), 120,
               what="a failed delivery logged")
    for path in env.run_dir("hook3").rglob("*"):
        if path.is_file() and path.name != "secrets.env":
            assert token.encode() not in path.read_bytes(), path
