"""The SSH transport's command lines, socket paths and error messages, without a network."""

import io
import os
import shlex
import shutil
import tempfile
from pathlib import Path

import pytest

from rgt.controller.boundary import watch_records
from rgt.controller.transport.ssh import SUN_PATH_MAX, SSHTransport, _private_dir, control_dir
from rgt.shared.errors import BadInput, RgtError, TransportError

CHANGED_STDERR = b"""@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Offending ED25519 key in /home/u/.ssh/known_hosts:7
  remove with:
  ssh-keygen -f "/home/u/.ssh/known_hosts" -R "[10.0.0.5]:40022"
Host key for [10.0.0.5]:40022 has changed and you have requested strict checking.
Host key verification failed.
"""


def _transport(tmp_path, host="box", **kw) -> SSHTransport:
    return SSHTransport(host, state=tmp_path, **kw)


def test_remote_command_is_one_shlex_joined_word_list(tmp_path):
    t = _transport(tmp_path)
    argv = t.ssh_argv(["echo", "a b; rm -rf /", "$(id)"])
    assert argv[-2:] == ["box", shlex.join(["echo", "a b; rm -rf /", "$(id)"])]
    assert argv[-3] == "--"


def test_host_keys_always_checked_and_rgt_known_hosts_first(tmp_path):
    opts = " ".join(_transport(tmp_path).ssh_base())
    assert "StrictHostKeyChecking=accept-new" in opts
    assert "StrictHostKeyChecking=no" not in opts
    known = opts.split("UserKnownHostsFile=")[1].split()
    assert known[0] == str(tmp_path / "known_hosts")
    assert known[1] == "~/.ssh/known_hosts"
    for want in ("BatchMode=yes", "ControlMaster=auto", "ControlPersist=", "ConnectTimeout=",
                 "ServerAliveInterval=", "ServerAliveCountMax="):
        assert want in opts
    assert oct(os.stat(tmp_path / "known_hosts").st_mode & 0o777) == "0o600"


def test_ssh_config_and_port_are_passed(tmp_path, monkeypatch):
    monkeypatch.delenv("RGT_SSH_CONFIG", raising=False)
    base = _transport(tmp_path, ssh_config="/x/cfg", port=2202).ssh_base()
    assert base[1:5] == ["-F", "/x/cfg", "-p", "2202"]
    monkeypatch.setenv("RGT_SSH_CONFIG", "/env/cfg")
    assert _transport(tmp_path).ssh_base()[1:3] == ["-F", "/env/cfg"]


def test_host_starting_with_dash_is_refused(tmp_path):
    with pytest.raises(BadInput):
        _transport(tmp_path, host="-oProxyCommand=touch /tmp/pwned")


def test_rsync_uses_the_same_ssh_options(tmp_path):
    t = _transport(tmp_path, port=2202)
    e, cmd = t.rsync_args()
    assert e == "-e" and shlex.split(cmd) == t.ssh_base()
    assert t.rsync_target("/r/x") == "box:/r/x"


def test_control_socket_stays_under_sun_path_limit_with_a_long_state_dir(tmp_path):
    long_state = tmp_path / ("d" * 90)
    long_state.mkdir()
    path = control_dir(long_state)
    assert path == f"/tmp/rgt-{os.getuid()}"
    assert len(path) + 1 + 40 + 17 < SUN_PATH_MAX
    assert os.stat(path).st_mode & 0o077 == 0


def test_control_dir_lives_in_a_short_state_dir():
    state = Path(tempfile.mkdtemp(prefix="rgt-st-", dir="/tmp"))
    try:
        path = control_dir(state)
        assert path == str(state / "cm")
        assert os.stat(path).st_mode & 0o777 == 0o700
    finally:
        shutil.rmtree(state)


def test_shared_control_dir_must_be_private(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    with pytest.raises(RgtError, match="private"):
        _private_dir(loose)


def test_percent_and_blanks_in_state_dir_are_escaped_for_ssh(tmp_path):
    odd = tmp_path / "a %h b"
    odd.mkdir()
    opts = _transport(odd).ssh_base()
    known = next(o for o in opts if o.startswith("UserKnownHostsFile="))
    assert '"' in known and "%%h" in known


def test_changed_host_key_names_the_key_and_the_file(tmp_path, monkeypatch):
    t = _transport(tmp_path)
    monkeypatch.setattr(t, "_key_name", lambda: "[10.0.0.5]:40022")
    err = t.error(CHANGED_STDERR)
    assert isinstance(err, TransportError) and err.exit_code == 3
    msg = str(err)
    assert "CHANGED" in msg and "re-created" in msg
    assert "ssh-keygen -R '[10.0.0.5]:40022' -f /home/u/.ssh/known_hosts" in msg


def test_ssh_exit_255_is_transport_unavailable(tmp_path):
    err = _transport(tmp_path).error(b"ssh: connect to host 10.0.0.5 port 22: Connection refused\r\n")
    assert str(err) == "transport unavailable: box: ssh: connect to host 10.0.0.5 port 22: Connection refused"


WATCH_MARK = b"\n@@rgt-watch-0123abcd "


def test_watch_records_survive_arbitrary_chunking():
    stream_bytes = b"".join(
        b'{"seq": %d}\n' % i + WATCH_MARK + b"1700000000.%d 0\n" % i for i in range(3)
    ) + WATCH_MARK + b"1700000009.5 1\n"

    class Chunked(io.RawIOBase):
        def __init__(self, data):
            self.data = data

        def read1(self, n):
            out, self.data = self.data[:3], self.data[3:]
            return out

    got = list(watch_records(Chunked(stream_bytes), WATCH_MARK))
    assert [g[0] for g in got] == [b'{"seq": 0}\n', b'{"seq": 1}\n', b'{"seq": 2}\n', b""]
    assert got[-1][1:] == (1700000009.5, 1)


@pytest.mark.parametrize(("conf", "name"), [
    ("HostName 10.0.0.5\n  Port 40022\n", "[10.0.0.5]:40022"),
    ("HostName 10.0.0.5\n", "10.0.0.5"),
    ("HostName 10.0.0.5\n  Port 40022\n  HostKeyAlias rental-7\n", "rental-7"),
])
def test_forget_advice_names_the_key_as_known_hosts_does(tmp_path, conf, name):
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host rental\n  {conf}")
    t = _transport(tmp_path, host="rental", ssh_config=str(cfg))
    assert t._key_name() == name
    assert t.control_path().startswith(t.control_dir + "/")
