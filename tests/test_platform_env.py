"""The trainer's environment on the box: proxy files sourced safely, no_proxy, caches, cgroup thread caps."""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rgt.agent import platform_env as pe
from rgt.controller.envrecipe import apply_recipe, env_recipe
from rgt.controller.profiles import load_profile
from rgt.shared.spec import RunSpec
from tests.conftest import require_real, scaled

PROJECT = Path(__file__).resolve().parents[1]
PROXY_NAMES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "no_proxy", "NO_PROXY",
               "all_proxy", "ALL_PROXY")
# Shaped like AutoDL's /etc/network_turbo: exports, a helper variable it does not export, and chatter.
NETWORK_TURBO = """result=$(echo probing)
export http_proxy=http://10.0.0.7:12798 && export https_proxy=http://10.0.0.7:12798
export no_proxy=localhost,127.0.0.1,modelscope.com
echo "设置成功"
echo "注意:仅限于学术用途" >&2
"""


@pytest.fixture(autouse=True)
def no_inherited_proxy(monkeypatch, tmp_path):
    """The test process stands in for the agent: it starts with no proxy of its own."""
    for name in PROXY_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RGT_CONFIG_DIR", str(tmp_path / "config"))


def fake_box(tmp_path: Path, files: dict[str, str]) -> str:
    root = tmp_path / "box"
    for rel, text in files.items():
        path = root / rel.lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    root.mkdir(exist_ok=True)
    return str(root)


def autodl_spec() -> RunSpec:
    """The spec as the agent reads it: through spec.json, as the controller wrote it."""
    spec = apply_recipe(RunSpec(run_id="r1", command=["python", "train.py"]), env_recipe(load_profile("autodl")))
    return RunSpec.from_dict(json.loads(spec.to_json()))


def test_autodl_trainer_env_gets_proxy_and_mirrors_and_the_agent_env_does_not(tmp_path):
    root = fake_box(tmp_path, {"/etc/network_turbo": NETWORK_TURBO})
    spec = autodl_spec()
    before = dict(os.environ)
    notes: list[str] = []
    env = pe.trainer_env(spec.env, spec.extra["platform_env"], root=root, notes=notes)
    assert dict(os.environ) == before and "http_proxy" not in os.environ
    assert env["http_proxy"] == env["HTTP_PROXY"] == "http://10.0.0.7:12798"
    assert env["https_proxy"] == env["HTTPS_PROXY"] == "http://10.0.0.7:12798"
    assert env["no_proxy"] == env["NO_PROXY"]
    entries = env["no_proxy"].split(",")
    assert entries[:3] == ["localhost", "127.0.0.1", "modelscope.com"]  # the turbo's own list comes first
    assert ".modelscope.cn" in entries and ".hf-mirror.com" in entries
    assert env["HF_ENDPOINT"] == "https://hf-mirror.com" and env["HF_HUB_DISABLE_XET"] == "1"
    assert env["PIP_INDEX_URL"] == "https://pypi.tuna.tsinghua.edu.cn/simple"
    assert env["HF_HOME"] == "/root/autodl-tmp/huggingface_cache"
    assert "result" not in env  # not exported by the file, so not the trainer's
    assert notes == []


def test_launch_style_update_keeps_the_users_own_values(tmp_path):
    """agent/launch.py does env.update(trainer_env_from_recipe(recipe)) over the agent's env plus spec.env."""
    root = fake_box(tmp_path, {"/etc/network_turbo": NETWORK_TURBO, "/sys/fs/cgroup/cgroup.controllers": "",
                               "/sys/fs/cgroup/cpu.max": "200000 100000"})
    spec = apply_recipe(RunSpec(run_id="r1", command=["x"], env={"OMP_NUM_THREADS": "8"}),
                        env_recipe(load_profile("autodl")))
    env = dict(os.environ)
    env.update(spec.env)
    added = pe.trainer_env_from_recipe(spec.extra["platform_env"], root=root)
    env.update(added)
    assert env["http_proxy"] == "http://10.0.0.7:12798" and env["MKL_NUM_THREADS"] == "2"
    assert env["OMP_NUM_THREADS"] == "8" and "OMP_NUM_THREADS" not in added
    assert "http_proxy" not in os.environ


def test_missing_proxy_file_means_no_proxy_and_a_note(tmp_path):
    spec = autodl_spec()
    notes: list[str] = []
    env = pe.trainer_env(spec.env, spec.extra["platform_env"], root=fake_box(tmp_path, {}), notes=notes)
    assert "http_proxy" not in env and "no_proxy" not in env  # no_proxy only alongside a proxy
    assert any("/etc/network_turbo is absent" in n for n in notes)


def test_proxy_path_is_an_argument_never_pasted_into_the_shell(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"/etc/turbo $(touch {marker.name}); x/network_turbo"
    root = fake_box(tmp_path, {evil: NETWORK_TURBO})
    env = pe.trainer_env({}, {"proxy": {"source": evil}}, root=root, base_env={"PATH": os.environ["PATH"]})
    assert env["http_proxy"] == "http://10.0.0.7:12798"
    assert not marker.exists() and not os.path.exists("/pwned")


def test_failing_proxy_file_runs_the_trainer_without_it(tmp_path):
    root = fake_box(tmp_path, {"/etc/network_turbo": "export http_proxy=http://x:1\nreturn 3\n"})
    notes: list[str] = []
    env = pe.trainer_env({}, {"proxy": {"source": "/etc/network_turbo"}}, root=root, notes=notes)
    assert "http_proxy" not in env
    assert any("failed (exit 97)" in n for n in notes)


def test_hanging_proxy_file_times_out(tmp_path):
    root = fake_box(tmp_path, {"/etc/network_turbo": "sleep 30\n"})
    with pytest.raises(pe.ProxySourceError, match="could not source"):
        pe.source_proxy(pe.box_path(root, "/etc/network_turbo"), dict(os.environ), timeout_s=0.5)


def test_whitelist_proxy_is_on_for_its_stage_and_unset_for_the_others():
    proxy = {"env": {"http_proxy": "http://turbo.example:1"}, "stages": ["setup"],
             "unset_after": ["http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"]}
    recipe = {"proxy": proxy, "no_proxy": ["127.0.0.1", ".tuna.tsinghua.edu.cn"]}
    base = {"PATH": os.environ["PATH"], "http_proxy": "http://left-over:9", "HTTP_PROXY": "http://left-over:9"}
    setup = pe.trainer_env({}, recipe, stage="setup", base_env=base)
    assert setup["http_proxy"] == setup["HTTP_PROXY"] == "http://turbo.example:1"
    assert setup["NO_PROXY"] == "127.0.0.1,.tuna.tsinghua.edu.cn"
    for stage in ("train", None):
        env = pe.trainer_env({}, recipe, stage=stage, base_env=base)
        assert not {"http_proxy", "HTTP_PROXY", "no_proxy"} & set(env)


def test_users_own_spec_env_beats_the_platform_proxy(tmp_path):
    root = fake_box(tmp_path, {"/etc/network_turbo": NETWORK_TURBO})
    env = pe.trainer_env({"https_proxy": "http://mine:3128"}, {"proxy": {"source": "/etc/network_turbo"}},
                         root=root)
    assert env["https_proxy"] == "http://mine:3128" and env["http_proxy"] == "http://10.0.0.7:12798"


def test_paths_with_variables_expand_on_the_box():
    recipe = env_recipe(load_profile("slurm")).platform_env
    env = pe.trainer_env({}, recipe, base_env={"USER": "alice"})
    assert env["HF_HOME"] == "/scratch/alice/.cache/huggingface"
    notes: list[str] = []
    env = pe.trainer_env({}, recipe, base_env={}, notes=notes)
    assert "HF_HOME" not in env and any("HF_HOME left unset" in n for n in notes)


def test_hf_transfer_is_turned_off_when_the_trainer_cannot_import_it():
    if importlib.util.find_spec("hf_transfer") is not None:
        pytest.skip("hf_transfer is installed here")
    spec = apply_recipe(RunSpec(run_id="r1", command=["x"]), env_recipe(load_profile("runpod")))
    notes: list[str] = []
    env = pe.trainer_env(spec.env, spec.extra["platform_env"], base_env={}, python=sys.executable, notes=notes)
    assert env["HF_HUB_ENABLE_HF_TRANSFER"] == "0" and any("hf_transfer" in n for n in notes)


# --- thread caps from the cgroup CPU quota ---


def test_thread_caps_from_a_cgroup_v2_tree(tmp_path):
    root = fake_box(tmp_path, {
        "/sys/fs/cgroup/cgroup.controllers": "cpu memory",
        "/sys/fs/cgroup/cpu.max": "250000 100000",
        "/sys/fs/cgroup/user.slice/job/cpu.max": "150000 100000",
        "/proc/self/cgroup": "0::/user.slice/job\n",
    })
    assert pe.read_cpu_quota(root) == 1.5  # the tightest level wins
    env = pe.trainer_env({}, {"thread_caps": {"names": list(pe.THREAD_VARS)}}, root=root, base_env={})
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"


def test_unlimited_cgroup_v2_sets_no_caps(tmp_path):
    root = fake_box(tmp_path, {"/sys/fs/cgroup/cgroup.controllers": "cpu",
                               "/sys/fs/cgroup/cpu.max": "max 100000"})
    assert pe.read_cpu_quota(root) is None
    env = pe.trainer_env({}, {"thread_caps": {"names": ["OMP_NUM_THREADS"]}}, root=root, base_env={})
    assert "OMP_NUM_THREADS" not in env


def test_thread_caps_from_a_cgroup_v1_tree(tmp_path):
    # A container without a cgroup namespace: /proc/self/cgroup names the host's path, which is absent here.
    root = fake_box(tmp_path, {
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "300000",
        "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000",
        "/proc/self/cgroup": "4:cpu,cpuacct:/docker/abc123\n1:name=systemd:/docker/abc123\n",
    })
    assert pe.read_cpu_quota(root) == 3.0
    assert pe.trainer_env({}, {"thread_caps": {}}, root=root, base_env={})["OPENBLAS_NUM_THREADS"] == "3"


def test_unlimited_cgroup_v1_and_no_cgroup_at_all(tmp_path):
    root = fake_box(tmp_path, {"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
                               "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert pe.read_cpu_quota(root) is None
    assert pe.read_cpu_quota(str(tmp_path / "empty")) is None


def test_users_own_thread_setting_wins(tmp_path):
    root = fake_box(tmp_path, {"/sys/fs/cgroup/cgroup.controllers": "", "/sys/fs/cgroup/cpu.max": "400000 100000"})
    env = pe.trainer_env({"OMP_NUM_THREADS": "8"}, {"thread_caps": {}}, root=root, base_env={})
    assert env["OMP_NUM_THREADS"] == "8" and env["MKL_NUM_THREADS"] == "4"


def test_thread_caps_from_a_real_cgroup_v1_cpu_quota():
    base = "/sys/fs/cgroup/cpu"
    require_real(os.path.isfile(os.path.join(base, "cpu.cfs_quota_us")) and os.access(base, os.W_OK),
                 "a writable cgroup v1 cpu controller")
    cg = os.path.join(base, f"rgt-test-{os.getpid()}")
    os.mkdir(cg)
    try:
        with open(os.path.join(cg, "cpu.cfs_quota_us"), "w") as f:
            f.write("150000")
        code = "from rgt.agent.platform_env import read_cpu_quota; print(read_cpu_quota())"
        out = subprocess.run(["bash", "-c", 'echo $$ > "$1/cgroup.procs" && exec "$2" -c "$3"', "join", cg,
                              sys.executable, code], capture_output=True, text=True, timeout=scaled(60), check=True)
        assert out.stdout.strip() == "1.5"
    finally:
        os.rmdir(cg)  # the child has exited, so the group is empty


def test_platform_env_runs_under_python_3_8_without_the_package(tmp_path):
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8*/bin/python3")))
    require_real(bool(found), "CPython 3.8 under ~/.pyenv")
    root = fake_box(tmp_path, {"/etc/network_turbo": NETWORK_TURBO, "/sys/fs/cgroup/cgroup.controllers": "",
                               "/sys/fs/cgroup/cpu.max": "200000 100000"})
    code = ("import importlib.util, json, sys; s = importlib.util.spec_from_file_location('pe', sys.argv[1]);"
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
            "print(json.dumps(m.trainer_env({}, {'proxy': {'source': '/etc/network_turbo'}, 'thread_caps': {}},"
            " root=sys.argv[2], base_env={'PATH': '/usr/bin:/bin'})))")
    out = subprocess.run([found[-1], "-I", "-c", code, str(PROJECT / "agent" / "platform_env.py"), root],
                         capture_output=True, text=True, timeout=scaled(60), check=True)
    env = json.loads(out.stdout)
    assert env["https_proxy"] == "http://10.0.0.7:12798" and env["OMP_NUM_THREADS"] == "2"
