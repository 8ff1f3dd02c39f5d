"""What a new paramiko connection costs: ssh config and known_hosts parsed once per
version of the file, the host's settings kept, AES-GCM preferred (no HMAC in Python)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List

import paramiko
import pytest

from vmm_exec.transports.paramiko import connect as connect_module
from vmm_exec.transports.paramiko.config import HostSettings
from vmm_exec.transports.paramiko.filecache import FileCache


def counting_cache() -> tuple:
    loads: List[str] = []

    def load(path: str) -> str:
        loads.append(path)
        return Path(path).read_text()

    return FileCache(load, limit=2), loads


def test_a_file_is_parsed_again_only_when_it_changes(tmp_path: Path) -> None:
    cache, loads = counting_cache()
    path = tmp_path / "known_hosts"
    path.write_text("one\n")
    assert cache.get(str(path)) == "one\n"
    assert cache.get(str(path)) == "one\n"
    assert loads == [str(path)]
    path.write_text("two, longer\n")  # another size
    assert cache.get(str(path)) == "two, longer\n"
    st = path.stat()
    path.write_text("six, longer\n")  # the same size: the modification time tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert cache.get(str(path)) == "six, longer\n"
    replaced = tmp_path / "new"
    replaced.write_text("rep, longer\n")
    os.utime(replaced, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    os.replace(replaced, path)  # a new inode (as ssh-keygen -R writes), same size and time
    assert cache.get(str(path)) == "rep, longer\n"
    assert len(loads) == 4


def test_missing_files_and_directories_are_none_and_the_cache_is_bounded(
        tmp_path: Path) -> None:
    cache, loads = counting_cache()
    assert cache.get(str(tmp_path / "absent")) is None
    assert cache.get(str(tmp_path)) is None
    files = []
    for name in "abc":
        f = tmp_path / name
        f.write_text(name)
        files.append(str(f))
        assert cache.get(str(f)) == name
    assert len(cache._entries) == 2  # the oldest went
    assert cache.get(files[0]) == "a" and loads.count(files[0]) == 2
    assert loads.count(files[2]) == 1 and cache.get(files[2]) == "c"


def _host_keys_of(settings: HostSettings) -> dict:
    client = paramiko.SSHClient()
    connect_module._load_host_keys(client, settings)
    found = client.get_host_keys().lookup(settings.host_key_name)
    return {t: found[t].get_base64() for t in found.keys()} if found else {}


def test_known_hosts_lookup_first_file_wins_alias_and_edits(tmp_path: Path) -> None:
    rsa = [paramiko.RSAKey.generate(1024) for _ in range(2)]
    ecdsa = paramiko.ECDSAKey.generate()
    user, other = tmp_path / "known_hosts", tmp_path / "global"
    user.write_text(f"[h1]:2222 {rsa[0].get_name()} {rsa[0].get_base64()}\n"
                    f"alias1 {ecdsa.get_name()} {ecdsa.get_base64()}\n")
    other.write_text(f"[h1]:2222 {rsa[1].get_name()} {rsa[1].get_base64()}\n"
                     f"[h1]:2222 {ecdsa.get_name()} {ecdsa.get_base64()}\n")
    settings = HostSettings(alias="h1", hostname="h1", port=2222, user="u",
                            known_hosts=[str(user), str(other)])
    assert _host_keys_of(settings) == {"ssh-rsa": rsa[0].get_base64(),
                                       ecdsa.get_name(): ecdsa.get_base64()}
    aliased = HostSettings(alias="h1", hostname="h1", port=2222, user="u",
                           known_hosts=[str(user), str(other)], host_key_alias="alias1")
    assert _host_keys_of(aliased) == {ecdsa.get_name(): ecdsa.get_base64()}
    user.write_text("")  # the operator removed the entry: the next connection sees it
    assert _host_keys_of(settings) == {"ssh-rsa": rsa[1].get_base64(),
                                       ecdsa.get_name(): ecdsa.get_base64()}
    missing = HostSettings(alias="h2", hostname="h2", port=22, user="u",
                           known_hosts=[str(user), str(tmp_path / "absent")])
    assert _host_keys_of(missing) == {}


@pytest.mark.parametrize("hashed", [False, True])
def test_hashed_known_hosts_entries_are_found(tmp_path: Path, hashed: bool) -> None:
    key = paramiko.ECDSAKey.generate()
    name = "[127.0.0.5]:2200"
    host = paramiko.HostKeys.hash_host(name) if hashed else name
    path = tmp_path / "known_hosts"
    path.write_text(f"{host} {key.get_name()} {key.get_base64()}\n")
    settings = HostSettings(alias="x", hostname="127.0.0.5", port=2200, user="u",
                            known_hosts=[str(path)])
    assert _host_keys_of(settings) == {key.get_name(): key.get_base64()}


def test_host_settings_follow_edits_of_the_config(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from vmm_exec.transports.paramiko import config as config_module

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".ssh").mkdir()
    path = tmp_path / ".ssh" / "config"
    assert config_module.host_settings("h1").port == 22  # no file: defaults
    path.write_text("Host h1\n  Port 2201\n  User alice\n")
    first = config_module.host_settings("h1")
    assert (first.port, first.user) == (2201, "alice")
    assert config_module.host_settings("h1") is first  # kept for this version of the file
    st = path.stat()
    path.write_text("Host h1\n  Port 2202\n  User alice\n")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert config_module.host_settings("h1").port == 2202


def test_a_config_with_match_blocks_is_looked_up_every_time(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from vmm_exec.transports.paramiko import config as config_module

    monkeypatch.setenv("HOME", str(tmp_path))
    devnull = open(os.devnull, encoding="ascii")  # invoke (Match exec) reads stdin
    monkeypatch.setattr("sys.stdin", devnull)
    (tmp_path / ".ssh").mkdir()
    counter = tmp_path / "runs"
    (tmp_path / ".ssh" / "config").write_text(
        f'Match host h1 exec "echo x >> {counter}"\n  Port 2203\n')
    try:
        for _ in range(3):
            assert config_module.host_settings("h1").port == 2203
    finally:
        devnull.close()
    assert counter.read_text().count("x") >= 3  # Match exec ran on every lookup


def test_connections_prefer_aes_gcm(testbed: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real sshd negotiates AES-GCM with us (no per-packet HMAC in Python)."""
    from vmm_exec.transports.paramiko.config import host_settings
    from vmm_exec.transports.paramiko.connect import Attempt, Deadline, connect

    monkeypatch.setenv("HOME", testbed.client_home)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    client = connect(host_settings("host01"), Deadline(30), Attempt())
    try:
        transport = client.get_transport()
        assert transport is not None
        assert (transport.local_cipher, transport.remote_cipher) == (
            "aes128-gcm@openssh.com", "aes128-gcm@openssh.com")
        _stdin, stdout, _stderr = client.exec_command("echo ok")
        assert stdout.read() == b"ok\n"
    finally:
        client.close()
