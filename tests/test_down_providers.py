"""`rgt down --instance-id` against local HTTP servers speaking vast.ai's and RunPod's JSON."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rgt.controller.registry import Registry
from tests.fake_providers import FakeApi, make_run, register, run_cli, runpod_pod, vast_instance


@pytest.fixture
def api():
    with FakeApi() as fake:
        yield fake


def _verified_run(tmp_path, monkeypatch, capsys, api, run_id, profile):
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.chdir(tmp_path)
    for name, value in {"RGT_VAST_API_URL": api.url + "/api/v0", "RGT_RUNPOD_API_URL": api.url + "/v1",
                        "VAST_API_KEY": api.key, "RUNPOD_API_KEY": api.key, "RGT_API_BACKOFF_S": "0.01",
                        "RGT_DESTROY_POLL_S": "0.01", "RGT_API_TIMEOUT_S": "2"}.items():
        monkeypatch.setenv(name, value)
    make_run(tmp_path / "box", run_id, {"out/model.bin": b"m" * 64})
    register(tmp_path / "state", tmp_path / "box", run_id, profile=profile)
    code, _out, err = run_cli(capsys, "pull", run_id)
    assert code == 0, err


def _deletes(api):
    return [r for r in api.requests if r[0] == "DELETE"]


def test_down_destroys_the_vast_instance_and_confirms_it_is_gone(tmp_path, monkeypatch, capsys, api):
    api.vast["4242"] = vast_instance("4242")
    api.volumes = [{"id": 7, "label": "data", "disk_space": 50, "status": "unattached", "start_date": 0}]
    _verified_run(tmp_path, monkeypatch, capsys, api, "v1", "vastai")
    code, out, err = run_cli(capsys, "down", "v1", "--confirm", "v1", "--instance-id", "4242")
    assert code == 0, err
    assert "vast.ai instance 4242 is gone" in err
    assert "still billing on the account: volume 7 data (50 GB, unattached)" in err
    assert [r[1] for r in _deletes(api)] == ["/api/v0/instances/4242/"]
    assert api.key not in out + err
    teardown = Registry(Path(os.environ["RGT_STATE_DIR"])).get("v1").extra["teardown"]
    assert teardown["state"] == "destroyed" and teardown["instance_id"] == "4242"


def test_rate_limited_destroy_is_retried(tmp_path, monkeypatch, capsys, api):
    api.vast["11"] = vast_instance("11")
    api.fail[("DELETE", "/api/v0/instances/")] = [429, 429]
    _verified_run(tmp_path, monkeypatch, capsys, api, "v2", "vastai")
    code, _out, err = run_cli(capsys, "down", "v2", "--confirm", "v2", "--instance-id", "11")
    assert code == 0, err
    assert len(_deletes(api)) == 3


def test_server_errors_end_with_the_box_may_still_bill(tmp_path, monkeypatch, capsys, api):
    api.vast["12"] = vast_instance("12")
    api.fail[("DELETE", "/api/v0/instances/")] = [500] * 20
    _verified_run(tmp_path, monkeypatch, capsys, api, "v3", "vastai")
    code, _out, err = run_cli(capsys, "down", "v3", "--confirm", "v3", "--instance-id", "12")
    assert code == 1
    assert "HTTP 500" in err and "instance 12 may still be billing" in err


def test_a_rejected_key_is_not_retried_and_never_printed(tmp_path, monkeypatch, capsys, api):
    api.vast["13"] = vast_instance("13")
    _verified_run(tmp_path, monkeypatch, capsys, api, "v4", "vastai")
    monkeypatch.setenv("VAST_API_KEY", "wrong-secret-987")
    code, out, err = run_cli(capsys, "down", "v4", "--confirm", "v4", "--instance-id", "13")
    assert code == 1
    assert "refused the key (HTTP 401)" in err and "may still be billing" in err
    assert "wrong-secret-987" not in out + err
    assert len(api.requests) == 1


def test_a_hanging_api_times_out_cleanly_and_says_the_box_may_still_bill(tmp_path, monkeypatch, capsys, api):
    api.vast["14"] = vast_instance("14")
    api.hang.add(("DELETE", "/api/v0/instances/"))
    _verified_run(tmp_path, monkeypatch, capsys, api, "v5", "vastai")
    monkeypatch.setenv("RGT_API_TIMEOUT_S", "0.3")
    monkeypatch.setenv("RGT_API_ATTEMPTS", "2")
    code, _out, err = run_cli(capsys, "down", "v5", "--confirm", "v5", "--instance-id", "14")
    assert code == 3
    assert "no answer within" in err and "instance 14 may still be billing" in err
    assert "Traceback" not in err


def test_an_instance_that_never_goes_away_is_reported(tmp_path, monkeypatch, capsys, api):
    api.vast["15"] = vast_instance("15")
    api.never_gone = True
    _verified_run(tmp_path, monkeypatch, capsys, api, "v6", "vastai")
    monkeypatch.setenv("RGT_DESTROY_TIMEOUT_S", "0.2")
    code, _out, err = run_cli(capsys, "down", "v6", "--confirm", "v6", "--instance-id", "15")
    assert code == 3
    assert "still shows actual_status=running" in err and "may still be billing" in err


def test_down_terminates_the_runpod_pod_and_lists_network_volumes(tmp_path, monkeypatch, capsys, api):
    api.pods["abc123xyz"] = runpod_pod("abc123xyz")
    api.network_volumes = [{"id": "nv1", "name": "ckpts", "size": 100, "dataCenterId": "EU-RO-1"}]
    _verified_run(tmp_path, monkeypatch, capsys, api, "p1", "runpod")
    code, _out, err = run_cli(capsys, "down", "p1", "--confirm", "p1", "--instance-id", "abc123xyz")
    assert code == 0, err
    assert "RunPod instance abc123xyz is gone (unknown to RunPod (404))" in err
    assert "network volume nv1 ckpts (100 GB in EU-RO-1)" in err


def test_gate_refusal_sends_nothing_to_the_api(tmp_path, monkeypatch, capsys, api):
    api.vast["16"] = vast_instance("16")
    _verified_run(tmp_path, monkeypatch, capsys, api, "v7", "vastai")
    (tmp_path / "rgt-pulls/v7/PULL_VERIFIED.json").unlink()
    code, _out, _err = run_cli(capsys, "down", "v7", "--confirm", "v7", "--instance-id", "16")
    assert code == 4
    assert api.requests == []


def test_instance_id_without_a_key_is_refused_before_the_prompt(tmp_path, monkeypatch, capsys, api):
    _verified_run(tmp_path, monkeypatch, capsys, api, "v8", "vastai")
    monkeypatch.delenv("VAST_API_KEY")
    code, _out, err = run_cli(capsys, "down", "v8", "--instance-id", "17")
    assert code == 2
    assert "VAST_API_KEY is not set" in err
    assert api.requests == []


@pytest.mark.parametrize("bad", ["../instances", "1;rm", "a b"])
def test_instance_ids_that_could_change_the_path_are_refused(tmp_path, monkeypatch, capsys, api, bad):
    _verified_run(tmp_path, monkeypatch, capsys, api, "v9", "vastai")
    code, _out, err = run_cli(capsys, "down", "v9", "--confirm", "v9", "--instance-id", bad)
    assert code == 2 and "bad instance id" in err
