"""The embedded Ray is closed to the network: every socket a plain `caviar sweep` (its
driver, Ray's GCS, raylet, agents and workers) listens on is a loopback one, and a
client without the cluster's token is refused.

Sockets are read from /proc (each process's socket inodes matched against the
kernel's TCP tables), so the test needs Linux, like the machines caviar runs on.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from tests.orchestrator.conftest import REPO

LISTEN = "0A"  # TCP state in /proc/net/tcp


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        kids.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return kids


def process_tree(pid: int) -> list[int]:
    kids, tree = _children(), [pid]
    for p in tree:
        tree.extend(kids.get(p, []))
    return tree


def _address(hex_addr: str) -> ipaddress._BaseAddress:
    """An address as /proc/net/tcp{,6} writes it: 32-bit words in host (little) order."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on."""
    try:
        inodes = {os.readlink(fd)[8:-1] for fd in Path(f"/proc/{pid}/fd").iterdir()
                  if os.readlink(fd).startswith("socket:[")}
    except OSError:
        return set()
    out = set()
    for table in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] == LISTEN and f[9] in inodes:
                addr, port = f[1].split(":")
                out.add((str(_address(addr)), int(port, 16)))
    return out


def is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    mapped = getattr(ip, "ipv4_mapped", None)
    return (mapped or ip).is_loopback


def test_the_listing_tells_loopback_from_every_interface():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.5")
    assert str(_address("0100007F")) == "127.0.0.1"
    assert _address("0000000000000000FFFF00000100007F") == ipaddress.ip_address("::ffff:127.0.0.1")


def test_a_sweep_on_the_embedded_ray_listens_on_loopback_only(tmp_path, write_sweep,
                                                              no_outside_services):
    sweep = write_sweep(epochs=40, data={"source": "synthetic", "size": 4000,
                                         "n_features": 12, "classes": 3})
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "sweep", str(sweep),
                             "--workdir", str(tmp_path / "runs")], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen: dict[tuple[str, int], int] = {}
    try:
        while proc.poll() is None:
            for pid in process_tree(proc.pid):
                for sock in listening(pid):
                    seen.setdefault(sock, pid)
            time.sleep(0.2)
        err = proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0, err
    # the driver, the GCS, the raylet and the trials' workers each listen on some
    assert len({pid for pid in seen.values()}) >= 4, seen
    outside = {f"{a}:{p} (pid {pid})" for (a, p), pid in seen.items() if not is_loopback(a)}
    assert not outside, f"reachable from the network: {sorted(outside)}"


SERVER = textwrap.dedent("""
    import sys, ray
    from orchestrator.cluster.connect import connect
    connect()
    print(ray.get_runtime_context().gcs_address, flush=True)
    sys.stdin.read()
    ray.shutdown()
""")
CLIENT = textwrap.dedent("""
    import sys, ray
    ray.init(address=sys.argv[1], logging_level="ERROR")
    print("connected", ray.cluster_resources().get("CPU"))
""")


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS")}
    return {**env, **extra}


def _client(address: str, home: Path, mode: str) -> subprocess.CompletedProcess:
    """A plain Ray client on this machine. It runs in Ray's loopback mode too: else it
    looks for 127.0.0.1's cluster on the machine's outside address, finds nothing there
    (the point of the other test) and never reaches the token check. A refused client
    gives up after 2 tries (else 20, one a second)."""
    env = _env(HOME=str(home), RAY_AUTH_MODE=mode, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_NUM_REDIS_GET_RETRIES="2")
    return subprocess.run([sys.executable, "-c", CLIENT, address], cwd=REPO, timeout=120,
                          env=env, capture_output=True, text=True)


def test_a_client_without_the_embedded_rays_token_is_refused(tmp_path):
    home, stranger = tmp_path / "home", tmp_path / "stranger"
    home.mkdir(), stranger.mkdir()
    server = subprocess.Popen([sys.executable, "-c", SERVER], cwd=REPO, text=True,
                              env=_env(HOME=str(home)), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        address = server.stdout.readline().strip()
        assert address.startswith("127.0.0.1:"), address
        assert (home / ".ray" / "auth_token").exists()  # Ray made the cluster's token
        refused = _client(address, stranger, "disabled")  # sends no token
        assert refused.returncode != 0 and "connected" not in refused.stdout
        assert "InvalidAuthToken" in refused.stderr, refused.stderr[-2000:]
        allowed = _client(address, home, "token")  # the same client with the token gets in
        assert allowed.returncode == 0 and "connected" in allowed.stdout, allowed.stderr[-2000:]
    finally:
        server.stdin.close()  # the server shuts its Ray down
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


IDLE_WORKERS = textwrap.dedent("""
    import json, os, time, ray
    from pathlib import Path
    from orchestrator.cluster.connect import connect
    connect()
    time.sleep(3)  # Ray's prestarted workers would be up by now
    parent, name = {}, {}
    for d in Path("/proc").iterdir():
        try:
            if d.name.isdigit():
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
                name[int(d.name)] = (d / "cmdline").read_bytes().split(b"\\0")[0].decode()
        except (OSError, ValueError):
            pass
    def mine(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == os.getpid():
                return True
        return False
    idle = [pid for pid in name if name[pid].startswith("ray::IDLE") and mine(pid)]
    task = ray.get(ray.remote(num_cpus=1)(lambda: os.getpid()).remote(), timeout=60)
    print(json.dumps({"idle": idle, "task": task}))
""")


def test_the_embedded_ray_starts_no_idle_workers_and_a_task_still_gets_one():
    """Ray's prestarted workers are never used by Tune's trial actors (their runtime_env
    differs): the embedded Ray starts none, and a task starts the worker it needs."""
    out = subprocess.run([sys.executable, "-c", IDLE_WORKERS], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["idle"] == [] and seen["task"] > 0, seen
