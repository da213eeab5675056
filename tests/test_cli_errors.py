import json

import pytest

from rgt.shared.status import SCHEMA_VERSION


def _one_line_no_traceback(p):
    err = p.stderr.strip()
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout
    assert err and len(err.splitlines()) == 1, p.stderr
    return err


@pytest.mark.parametrize("run_id", ["Bad_ID", "-x", "a/b"])
def test_bad_run_id_is_one_line_exit_2(env, run_id):
    p = env.rgt("up", "local", "--run", run_id, "--", "python3", "train.py")
    assert p.returncode == 2
    assert "bad run id" in _one_line_no_traceback(p)


def test_no_command_after_dashes_is_exit_2(env):
    p = env.rgt("up", "local", "--run", "nocmd")
    assert p.returncode == 2
    assert "no command" in _one_line_no_traceback(p)


def test_unknown_run_is_exit_2(env):
    p = env.rgt("status", "never-started")
    assert p.returncode == 2
    assert "unknown run" in _one_line_no_traceback(p)


def test_no_runs_at_all_is_a_clear_message(env):
    p = env.rgt("status")
    assert p.returncode == 2
    assert "no runs yet" in _one_line_no_traceback(p)


def _started(env, run_id):
    env.rgt("up", "local", "--run", run_id, "--tick-s", "0.5", "--", "python3", "train.py", check=True,
            extra_env={"STEPS": "1"})
    env.rgt("wait", run_id, check=True)
    return env.run_dir(run_id) / "status.json"


def test_truncated_status_json_is_one_line(env):
    path = _started(env, "trunc")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 3])
    p = env.rgt("status", "trunc")
    assert p.returncode == 1
    assert "truncated" in _one_line_no_traceback(p)


def test_status_with_newer_schema_version_is_refused_in_plain_words(env):
    path = _started(env, "newer")
    d = json.loads(path.read_text())
    d["schema_version"] = SCHEMA_VERSION + 1
    path.write_text(json.dumps(d))
    p = env.rgt("status", "newer")
    assert p.returncode == 1
    assert "upgrade rgt" in _one_line_no_traceback(p)


def test_stale_heartbeat_shows_agent_not_responding(env):
    path = _started(env, "stale")
    d = json.loads(path.read_text())
    d["state"], d["updated_at"] = "running", d["updated_at"] - 3600
    path.write_text(json.dumps(d))
    p = env.rgt("status", "stale")
    assert p.returncode == 0
    assert "agent not responding" in p.stdout
    data = json.loads(env.rgt("status", "stale", "--json").stdout)
    assert data["controller"]["view"] == "stale"


def test_malformed_rgt_toml_names_file_and_line(env):
    (env.project / "rgt.toml").write_text('[run]\nprofile = "local"\nmax_restarts = "three"\n')
    p = env.rgt("up", "local", "--", "python3", "train.py")
    assert p.returncode == 2
    line = _one_line_no_traceback(p)
    assert "rgt.toml:3" in line and "max_restarts" in line
    (env.project / "rgt.toml").write_text('[run\nprofile = "local"\n')
    p = env.rgt("up", "local", "--", "python3", "train.py")
    assert p.returncode == 2
    assert "rgt.toml" in _one_line_no_traceback(p) and "line 1" in p.stderr


def test_run_id_already_on_the_box_is_refused(env):
    _started(env, "twice")
    p = env.rgt("up", "local", "--run", "twice", "--", "python3", "train.py")
    assert p.returncode == 2
    assert "already exists" in _one_line_no_traceback(p)


def test_a_bad_key_in_a_later_table_names_its_own_line(tmp_path):
    from rgt.controller import rgttoml, slurm
    from rgt.shared.errors import BadInput

    (tmp_path / "rgt.toml").write_text('[run]\ngpus = [0]\n\n[slurm]\ntime = "1:00:00"\ngpus = "two"\n')
    with pytest.raises(BadInput, match=r"rgt\.toml:6: slurm\.gpus: wrong type str"):
        slurm.options_from(rgttoml.load(str(tmp_path)))
