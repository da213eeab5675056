"""Platform profiles: packaged facts, validation errors, user overrides, staleness, briefing, env recipe."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from rgt.controller import briefing as br
from rgt.controller.commands.profile import cli
from rgt.controller.envrecipe import apply_recipe, env_recipe, thread_caps
from rgt.controller.profiles import (
    CLOCK_STARTS,
    irreversible_warnings,
    list_profiles,
    load_profile,
    months_old,
    now_s,
    stale_facts,
)
from rgt.shared.errors import BadInput, RgtError
from rgt.shared.spec import RunSpec

PROJECT = Path(__file__).resolve().parents[1]
NAMES = {"autodl", "vastai", "runpod", "lambda", "paperspace", "matpool", "gpushare", "featurize", "lanrui",
         "generic-ssh", "slurm", "kubernetes", "local"}
DAY = 86400


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """No profile or state from the person running the tests leaks in."""
    monkeypatch.setenv("RGT_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("RGT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("RGT_NOW", raising=False)
    return tmp_path


def user_profile(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / "config" / "profiles"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_every_packaged_profile_loads():
    profiles = list_profiles()
    assert {p.name for p in profiles} == NAMES
    assert all(p.origin == "packaged" for p in profiles)


# Literal values from the seeds (SKILL 004, autodl 001, china 000, vastai in 002, platform-facts section 4);
# deliberately not read back from the TOML. (durable dir, meter-stop verb, irreversible, spot grace s, inode cap)
SEED_FACTS = {
    "autodl": ("/root/autodl-fs", "关机", False, None, 200000),
    "vastai": (None, "destroy", True, 0.0, None),
    "runpod": ("/workspace", "terminate", True, 5.0, None),
    "lambda": ("/lambda/nfs/<name>", "terminate", True, None, None),
    "paperspace": ("/storage", "shut-down", False, None, None),
    "matpool": ("/mnt", "停止并释放", True, None, None),
    "gpushare": ("/hy-netdisk", "关机", False, None, None),
    "featurize": ("/home/featurize", "实例归还", True, None, None),
    "lanrui": ("/home/user/netdisk/data", "停止 + 销毁数据盘", True, None, None),
    "generic-ssh": (None, "manual", True, None, None),
    "slurm": ("/scratch/$USER", "none", False, 30.0, None),
    "kubernetes": ("/checkpoints", "delete the Job and scale the node pool down", True, 30.0, None),
    "local": (None, "none", False, None, None),
}
# (profile, clock) -> seconds: AutoDL releases a stopped box at 15 days, Gpushare at 10, /hy-tmp at 24 h.
SEED_CLOCKS = {("autodl", "auto_release"): 15 * DAY, ("gpushare", "auto_release"): 10 * DAY,
               ("gpushare", "hy_tmp_wipe"): 24 * 3600, ("runpod", "stale_pod_removal"): 30 * DAY}


@pytest.mark.parametrize("name", sorted(SEED_FACTS))
def test_facts_most_often_got_wrong_match_the_seeds(name):
    p = load_profile(name)
    durable, verb, irreversible, grace, inodes = SEED_FACTS[name]
    assert (p.durable_dir, p.billing.meter_stop_verb, p.billing.meter_stop_irreversible) == (
        durable, verb, irreversible)
    assert (p.spot_grace_s, p.storage.inode_cap) == (grace, inodes)
    for (profile, clock), seconds in SEED_CLOCKS.items():
        if profile == name:
            found = {c.name: c for c in p.danger_clocks}[clock]
            assert (found.duration_s, found.starts_when) == (seconds, "stopped")


def test_fast_dirs_and_stopped_billing_match_the_seeds():
    assert load_profile("autodl").fast_dir == "/root/autodl-tmp"
    assert load_profile("gpushare").fast_dir == "/hy-tmp"
    assert load_profile("vastai").fast_dir == "/workspace"
    assert load_profile("lambda").billing.stop_verb is None  # Lambda has no stop
    for name in ("vastai", "runpod", "lanrui"):  # stop keeps billing there
        assert load_profile(name).billing.keeps_billing_when_stopped
    assert load_profile("autodl").python[-1] == "/root/miniconda3/bin/python"


def test_durable_dir_survives_the_meter_stop_or_says_why_not():
    for p in list_profiles():
        if not p.durable_dir or p.billing.meter_stop_verb == "none":
            continue
        kept = p.storage.survives_destroy if p.billing.meter_stop_irreversible else (
            p.storage.survives_stop + p.storage.survives_destroy)
        assert p.durable_dir in kept or p.storage.durable_condition, p.name


def test_every_fact_group_is_stamped_with_a_month_and_a_source():
    for p in list_profiles():
        for group in (p.launch, p.storage, p.billing, p.spot, p.network, *p.danger_clocks):
            assert re.fullmatch(r"20\d\d-\d\d", group.verified) and group.source, p.name


def test_no_code_branches_on_a_platform_name():
    sources = ["controller/briefing.py", "controller/envrecipe.py", "controller/profiles.py",
               "controller/profile_schema.py", "controller/commands/profile.py", "agent/platform_env.py"]
    names = "|".join(re.escape(n) for n in NAMES)
    # a comparison with a platform's name, e.g. `if p.name == "autodl"` or `name in ("vastai", ...)`
    quoted = "[\"'](" + names + ")[\"']"
    pattern = re.compile(r"(==|!=|\bin)\s*[(\[{]?\s*" + quoted + "|" + quoted + r"\s*(==|!=)")
    for rel in sources:
        assert not pattern.search((PROJECT / rel).read_text(encoding="utf-8")), rel


# --- malformed profiles: one BadInput line naming the file, the line and the field ---

GOOD = (PROJECT / "profiles" / "generic-ssh.toml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def assert_one_line(err: BadInput, path: Path, line: int, field: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert msg.startswith(f"{path}:{line}: {field}: "), msg


def test_toml_syntax_error_names_file_line_and_key(tmp_path):
    text = GOOD.replace('kind = "ssh"', "kind = ssh")
    path = user_profile(tmp_path, "broken", text)
    with pytest.raises(BadInput) as e:
        load_profile("broken")
    assert_one_line(e.value, path, line_of(text, "kind = ssh"), "kind")
    assert "TOML syntax" in str(e.value)


def test_wrong_type_names_the_nested_field(tmp_path):
    text = GOOD.replace('fast_dir = ""', "fast_dir = 3")
    path = user_profile(tmp_path, "broken", text)
    with pytest.raises(BadInput) as e:
        load_profile("broken")
    assert_one_line(e.value, path, line_of(text, "fast_dir = 3"), "storage.fast_dir")
    assert "expected a string, got an integer" in str(e.value)


def test_wrong_type_inside_a_danger_clock(tmp_path):
    text = GOOD.replace('starts_when = "always"', 'starts_when = "always"\nduration_s = "15 days"')
    path = user_profile(tmp_path, "broken", text)
    with pytest.raises(BadInput) as e:
        load_profile("broken")
    assert_one_line(e.value, path, line_of(text, "duration_s ="), "danger_clocks[0].duration_s")


def test_unknown_field_suggests_the_known_one(tmp_path):
    text = GOOD.replace('durable_dir = ""', 'durable_dri = ""')
    path = user_profile(tmp_path, "broken", text)
    with pytest.raises(BadInput) as e:
        list_profiles()
    assert_one_line(e.value, path, line_of(text, "durable_dri"), "storage.durable_dri")
    assert "did you mean durable_dir" in str(e.value)


def test_missing_required_field_points_at_its_table(tmp_path):
    text = GOOD.replace('meter_stop_verb = "manual"\n', "")
    path = user_profile(tmp_path, "broken", text)
    with pytest.raises(BadInput) as e:
        load_profile("broken")
    assert_one_line(e.value, path, line_of(text, "[billing]"), "billing.meter_stop_verb")
    assert "missing required field" in str(e.value)


@pytest.mark.parametrize(("old", "new", "field", "problem"), [
    ('verified = "2026-06"', 'verified = "June 2026"', "launch.verified", "YYYY-MM"),
    ('kind = "ssh"', 'kind = "vm"', "kind", "expected one of"),
    ('starts_when = "always"', 'starts_when = "sometimes"', "danger_clocks[0].starts_when", "expected one of"),
    ('fast_dir = ""', 'fast_dir = "relative/dir"', "storage.fast_dir", "absolute path"),
])
def test_field_rules_name_the_field(tmp_path, old, new, field, problem):
    text = GOOD.replace(old, new, 1)
    path = user_profile(tmp_path, "broken", text)
    with pytest.raises(BadInput) as e:
        load_profile("broken")
    assert_one_line(e.value, path, line_of(text, new), field)
    assert problem in str(e.value)


def test_no_proxy_wildcards_are_refused(tmp_path):
    path = user_profile(tmp_path, "autodl", '[network]\nno_proxy = ["127.0.0.1", "*.modelscope.cn"]\n')
    with pytest.raises(BadInput) as e:
        load_profile("autodl")
    assert_one_line(e.value, path, 2, "network.no_proxy")


# --- user profiles override and extend ---


def test_user_profile_overrides_a_packaged_one_field_by_field(tmp_path):
    path = user_profile(tmp_path, "lambda", '[storage]\ndurable_dir = "/lambda/nfs/team-a"\n'
                                            'hf_home = "/lambda/nfs/team-a/hf"\n')
    p = load_profile("lambda")
    assert p.durable_dir == "/lambda/nfs/team-a"
    assert p.billing.meter_stop_verb == "terminate"  # the rest still comes from the packaged file
    assert p.origin == "user" and p.files[-1] == str(path)
    assert env_recipe(p).env["HF_HOME"] == "/lambda/nfs/team-a/hf"


def test_user_profile_can_turn_a_packaged_proxy_off(tmp_path):
    user_profile(tmp_path, "autodl", '[network.proxy]\nsource = ""\n')
    p = load_profile("autodl")
    assert p.network.proxy is None and "proxy" not in env_recipe(p).platform_env
    assert p.network.mirrors.hf_endpoint == "https://hf-mirror.com"


def test_new_user_profile_extends_the_list(tmp_path):
    user_profile(tmp_path, "mybox", 'extends = "generic-ssh"\ndisplay_name = "My box"\n'
                                    '[storage]\nfast_dir = "/data"\ndurable_dir = "/nfs/me"\n')
    user_profile(tmp_path, "standalone", GOOD)
    names = {p.name for p in list_profiles()}
    assert names == NAMES | {"mybox", "standalone"}
    mine = load_profile("mybox")
    assert (mine.display_name, mine.fast_dir, mine.durable_dir, mine.kind) == ("My box", "/data", "/nfs/me", "ssh")


def test_extends_must_name_a_packaged_profile(tmp_path):
    path = user_profile(tmp_path, "mybox", 'extends = "nosuch"\n')
    with pytest.raises(BadInput) as e:
        load_profile("mybox")
    assert_one_line(e.value, path, 1, "extends")


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(BadInput, match="known: autodl"):
        load_profile("nosuch")
    with pytest.raises(BadInput):
        load_profile("../etc/passwd")


# --- staleness ---


def test_months_old_counts_calendar_months():
    assert months_old("2026-06", now_s_at("2026-12-31")) == 6
    assert months_old("2026-06", now_s_at("2027-01-01")) == 7


def now_s_at(day: str) -> float:
    os.environ["RGT_NOW"] = day
    try:
        return now_s()
    finally:
        del os.environ["RGT_NOW"]


def test_bad_rgt_now_is_bad_input(monkeypatch):
    monkeypatch.setenv("RGT_NOW", "tomorrow")
    with pytest.raises(BadInput, match="RGT_NOW"):
        now_s()


def test_check_flags_facts_older_than_six_months():
    runner = CliRunner()
    fresh = runner.invoke(cli, ["check"], env={"RGT_NOW": "2026-12-15"})
    assert fresh.exit_code == 0, fresh.output
    stale = runner.invoke(cli, ["check"], env={"RGT_NOW": "2027-01-02"})
    assert stale.exit_code == 1 and isinstance(stale.exception, RgtError)
    assert "stale: autodl: verified 2026-06 (7 months old)" in stale.output
    assert "WARNING: vastai: destroy is irreversible" in stale.output  # an irreversible action on stale facts
    assert "WARNING: autodl" not in stale.output  # 关机 is reversible


def test_irreversible_warning_needs_both_stale_facts_and_an_irreversible_verb():
    later = now_s_at("2027-03-01")
    assert irreversible_warnings(load_profile("vastai"), later)
    assert not irreversible_warnings(load_profile("vastai"), now_s_at("2026-07-01"))
    assert not irreversible_warnings(load_profile("autodl"), later)
    assert {s.group for s in stale_facts(load_profile("autodl"), later)} >= {"billing", "storage"}


def test_check_reports_a_broken_user_profile_and_exits_2(tmp_path):
    user_profile(tmp_path, "broken", GOOD.replace('kind = "ssh"', "kind = 1"))
    result = CliRunner().invoke(cli, ["check"], env={"RGT_NOW": "2026-07"})
    assert isinstance(result.exception, BadInput)
    assert "broken.toml:" in result.output and "kind: expected a string" in result.output


def test_list_and_show_print_json_on_stdout():
    import json

    listed = json.loads(CliRunner().invoke(cli, ["list", "--json"]).stdout)
    assert {row["name"] for row in listed} == NAMES
    shown = json.loads(CliRunner().invoke(cli, ["show", "autodl", "--json"]).stdout)
    assert shown["storage"]["durable_dir"] == "/root/autodl-fs"
    assert shown["env_recipe"]["extra"]["platform_env"]["proxy"]["source"] == "/etc/network_turbo"


# --- first-contact briefing ---


def test_briefing_names_each_platforms_danger():
    assert "15 days after the box is stopped" in br.briefing(load_profile("autodl"))
    assert "auto-released" in br.briefing(load_profile("autodl"))
    assert "bills its disk forever" in br.briefing(load_profile("vastai"))
    lam = br.briefing(load_profile("lambda"))
    assert "No stop: terminate is the only way" in lam and "NFS filesystem keeps billing" in lam
    gs = br.briefing(load_profile("gpushare"))
    assert "24 hours after the box is stopped" in gs and "10 days after the box is stopped" in gs
    for p in list_profiles():
        assert p.display_name in br.briefing(p)


def test_every_clock_trigger_reads_as_text():
    assert set(br.STARTS_WHEN_TEXT) == set(CLOCK_STARTS)


def test_clock_countdown_alerts_before_expiry():
    p = load_profile("autodl")
    stopped_at = 1_000_000.0
    release = {c.name: c for c in p.danger_clocks}["auto_release"]
    assert br.clock_remaining(release, stopped_at, stopped_at + 14 * DAY) == DAY
    assert br.clock_remaining(release, stopped_at, stopped_at + 16 * DAY) == -DAY
    assert br.due_clocks(p, "stopped", stopped_at, stopped_at + 1 * DAY, lead_s=2 * DAY) == []
    assert br.due_clocks(p, "stopped", stopped_at, stopped_at + 13.5 * DAY, lead_s=2 * DAY) == [
        (release, 1.5 * DAY)]
    arrears = {c.name: c for c in p.danger_clocks}["arrears_force_stop"]
    assert br.clock_remaining(arrears, stopped_at, stopped_at) is None


def test_briefing_prints_once_per_host_unless_forced(isolated_dirs):
    p = load_profile("autodl")
    assert br.briefing_once(p, "autodl-1") is not None
    assert br.briefing_once(p, "autodl-1") is None
    assert br.briefing_once(p, "autodl-1", force=True) is not None
    assert br.briefing_once(p, "autodl-2") is not None
    assert br.briefing_once(load_profile("gpushare"), "autodl-1") is not None  # a new profile for the host
    seen = isolated_dirs / "state" / "seen-hosts.json"
    assert stat.S_IMODE(seen.stat().st_mode) == 0o600


def test_damaged_seen_hosts_file_briefs_again(isolated_dirs):
    (isolated_dirs / "state").mkdir()
    (isolated_dirs / "state" / "seen-hosts.json").write_text("{not json")
    assert br.briefing_once(load_profile("vastai"), "h") is not None
    assert br.briefing_once(load_profile("vastai"), "h") is None


# --- the env recipe ---


def test_autodl_env_recipe_has_mirrors_caches_and_the_turbo_proxy():
    r = env_recipe(load_profile("autodl"))
    assert r.env["HF_ENDPOINT"] == "https://hf-mirror.com" and r.env["HF_HUB_DISABLE_XET"] == "1"
    assert r.env["HF_HUB_ENABLE_HF_TRANSFER"] == "0"
    assert r.env["PIP_INDEX_URL"].startswith("https://")
    assert r.env["HF_HOME"].startswith("/root/autodl-tmp/") and r.env["TORCH_HOME"].startswith("/root/autodl-tmp/")
    box = r.extra["platform_env"]
    assert box["proxy"] == {"source": "/etc/network_turbo", "stages": None, "unset_after": []}
    assert ".modelscope.cn" in box["no_proxy"] and "localhost" in box["no_proxy"]
    assert box["thread_caps"]["names"] == ["OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"]


def test_recipe_leaves_out_placeholders_and_says_so():
    gs = env_recipe(load_profile("gpushare"))
    assert "proxy" not in gs.platform_env and any("<PORT>" in n for n in gs.notes)
    lam = env_recipe(load_profile("lambda"))
    assert "HF_HOME" not in lam.env and any("HF_HOME" in n for n in lam.notes)
    slurm = env_recipe(load_profile("slurm")).platform_env
    assert slurm["env_expand"]["HF_HOME"] == "/scratch/$USER/.cache/huggingface"
    assert env_recipe(load_profile("runpod")).env["HF_HUB_ENABLE_HF_TRANSFER"] == "1"


def test_thread_caps_from_a_given_quota():
    assert thread_caps(2.5)["OMP_NUM_THREADS"] == "2"
    assert thread_caps(0.5)["MKL_NUM_THREADS"] == "1"
    assert thread_caps(None) == {}
    r = env_recipe(load_profile("local"), cpu_quota=4)
    assert r.env["OMP_NUM_THREADS"] == "4" and "thread_caps" not in r.platform_env
    with pytest.raises(BadInput):
        thread_caps(0)


def test_apply_recipe_lets_the_users_own_env_win():
    spec = RunSpec(run_id="r1", command=["python", "train.py"], env={"HF_ENDPOINT": "https://mine.example"})
    out = apply_recipe(spec, env_recipe(load_profile("autodl")))
    assert out.env["HF_ENDPOINT"] == "https://mine.example" and out.env["HF_HUB_DISABLE_XET"] == "1"
    assert out.extra["platform_env"]["proxy"]["source"] == "/etc/network_turbo"
    assert out.extra["platform_env"]["user_env"] == ["HF_ENDPOINT"]
