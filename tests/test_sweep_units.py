"""Sweep pieces without hosts: the grid, the command template, the hosts file, the CLI's refusals."""

from __future__ import annotations

import pytest

from rgt.controller import sweep
from rgt.shared.errors import BadInput


def test_the_grid_is_every_combination_with_the_first_name_varying_slowest():
    grid = sweep.parse_grid(["lr=1e-3,3e-4", " bs = 32, 64 "])
    assert grid == [("lr", ["1e-3", "3e-4"]), ("bs", ["32", "64"])]
    assert sweep.expand(grid) == [{"lr": "1e-3", "bs": "32"}, {"lr": "1e-3", "bs": "64"},
                                  {"lr": "3e-4", "bs": "32"}, {"lr": "3e-4", "bs": "64"}]


@pytest.mark.parametrize("bad", ["lr", "lr=", "lr=1,,2", "1lr=1", "lr=1,1", "a-b=1"])
def test_a_malformed_grid_is_refused_with_the_rule(bad):
    with pytest.raises(BadInput, match="grid"):
        sweep.parse_grid([bad])


def test_a_name_given_twice_is_refused_and_an_empty_grid_too():
    with pytest.raises(BadInput, match="appears twice"):
        sweep.parse_grid(["lr=1", "lr=2"])
    with pytest.raises(BadInput, match="at least one"):
        sweep.parse_grid([])


def test_placeholders_are_filled_per_argument_and_other_braces_are_left_alone():
    cmd = ["python", "train.py", "--lr={lr}", "--bs", "{bs}", '--cfg={"a": 1}', "{unknown}"]
    assert sweep.fill(cmd, {"lr": "1e-3", "bs": "32"}) == [
        "python", "train.py", "--lr=1e-3", "--bs", "32", '--cfg={"a": 1}', "{unknown}"]


def test_a_command_that_ignores_a_grid_name_is_refused_since_cells_would_repeat():
    grid = sweep.parse_grid(["lr=1,2", "bs=3,4"])
    sweep.check_template(["python", "t.py", "{lr}", "{bs}"], grid)
    with pytest.raises(BadInput, match=r"never uses \{bs\}"):
        sweep.check_template(["python", "t.py", "{lr}"], grid)
    with pytest.raises(BadInput, match="no command"):
        sweep.check_template([], grid)


def test_the_hosts_file_takes_one_destination_per_line_and_skips_comments():
    text = "# rented boxes\ngpu-a\n\n  root@10.0.0.2   # the second\nssh://u@h:2222\n"
    assert sweep.parse_hosts(text, "hosts") == ["gpu-a", "root@10.0.0.2", "ssh://u@h:2222"]
    with pytest.raises(BadInput, match="hosts:2"):
        sweep.parse_hosts("ok\n-oProxyCommand=evil\n", "hosts")
    with pytest.raises(BadInput, match="hosts:1"):
        sweep.parse_hosts("two words\n", "hosts")
    with pytest.raises(BadInput, match="no hosts"):
        sweep.parse_hosts("# nothing\n", "hosts")


def test_a_sweep_name_that_exists_or_makes_bad_run_ids_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path))
    grid = sweep.parse_grid(["lr=1,2"])
    sw = sweep.new_sweep("s1", ["t", "{lr}"], grid, ["h"], "generic-ssh", None, {"code_dir": "."})
    assert [c["index"] for c in sw.cells] == [1, 2] and all(c["run_id"] is None for c in sw.cells)
    sw.save()
    assert sweep.Sweep.load("s1").cells == sw.cells
    with pytest.raises(BadInput, match="exists already"):
        sweep.new_sweep("s1", ["t", "{lr}"], grid, ["h"], "generic-ssh", None, {})
    with pytest.raises(BadInput, match="bad run id"):
        sweep.new_sweep("x" * 60, ["t", "{lr}"], grid, ["h"], "generic-ssh", None, {})
    with pytest.raises(BadInput, match="no sweep named 'nope'; known: s1"):
        sweep.Sweep.load("nope")


def test_the_cli_wants_exactly_one_place_for_the_cells(env):
    p = env.rgt("sweep", "--grid", "lr=1,2", "--", "python", "train.py", "{lr}")
    assert p.returncode == 2 and "--hosts FILE or --slurm LOGIN" in p.stderr
    hosts = env.tmp / "hosts"
    hosts.write_text("local\n")
    p = env.rgt("sweep", "--hosts", str(hosts), "--slurm", "login", "--grid", "lr=1,2", "--", "t", "{lr}")
    assert p.returncode == 2
    p = env.rgt("pull", "--sweep", "nope")
    assert p.returncode == 2 and "no sweep named 'nope'" in p.stderr
