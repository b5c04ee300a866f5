"""A real Ray cluster on this machine for the fault tests: ``ray start`` nodes of one CPU each, and the faults
a cluster brings (a worker process killed, a whole node gone).

Every node runs from one short temporary folder (Unix socket paths are limited to 107 bytes) on ports
found free, so that the cluster neither meets another Ray on the machine nor writes outside that
folder (token authentication is off, as for a cluster on a private network). :meth:`stop` kills
exactly the processes of this cluster.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

LOCALHOST = "127.0.0.1"
WORKER_PORTS = 40  # worker processes a node may have at once, each on its own port
# Node death noticed in about a second instead of about half a minute.
ENV = {"RAY_AUTH_MODE": "disabled", "RAY_health_check_period_ms": "500",
       "RAY_health_check_failure_threshold": "3", "RAY_health_check_initial_delay_ms": "0"}


def free_ports(count: int) -> list[int]:
    """``count`` ports no one listens on now (each bound once, then released)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((LOCALHOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(count: int) -> int:
    """The first of ``count`` consecutive free ports."""
    for base in range(20000, 60000 - count, 997):
        try:
            sockets = []
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind((LOCALHOST, port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@dataclass
class RayNode:
    node_id: str
    raylet: psutil.Process
    hidden: Path | None = None  # a folder this node sees empty

    def processes(self) -> list[psutil.Process]:
        """The raylet and everything it started (its workers and agents)."""
        try:
            return [self.raylet, *self.raylet.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []


class LocalRayCluster:
    """``start_head``, then ``add_node`` for each further node; ``address`` is what drivers join; ``env`` the
    environment its nodes run with (drivers need its token-authentication setting too)."""

    def __init__(self) -> None:
        self.temp_dir = Path(tempfile.mkdtemp(prefix="brr-ray-", dir="/tmp"))
        self.env = {**os.environ, **ENV}
        self.ray = str(Path(sys.executable).with_name("ray"))
        self.address = ""
        self.nodes: list[RayNode] = []

    def _start(self, args: list[str], prefix: list[str], hidden: Path | None = None) -> RayNode:
        ports = free_ports(7)
        worker_ports = free_port_range(WORKER_PORTS)
        command = [*prefix, self.ray, "start", *args, "--num-cpus", "1", "--node-ip-address", LOCALHOST,
                   "--temp-dir", str(self.temp_dir), "--disable-usage-stats", "--object-store-memory", str(80 << 20),
                   "--node-manager-port", str(ports[0]), "--object-manager-port", str(ports[1]),
                   "--dashboard-agent-listen-port", str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
                   "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
                   "--min-worker-port", str(worker_ports), "--max-worker-port", str(worker_ports + WORKER_PORTS - 1)]
        if not self.address:
            command += ["--dashboard-port", str(ports[6])]
        done = subprocess.run(command, check=False, env=self.env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"ray start failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        raylet = self._raylet(f"--node_manager_port={ports[0]}")
        node_id = next(arg.split("=", 1)[1] for arg in raylet.cmdline() if arg.startswith("--node_id="))
        node = RayNode(node_id, raylet, hidden)
        self.nodes.append(node)
        return node

    def _raylet(self, flag: str) -> psutil.Process:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for process in psutil.process_iter(["cmdline"]):
                cmdline = process.info["cmdline"] or []
                if cmdline and cmdline[0].endswith("raylet") and flag in cmdline:
                    return process
            time.sleep(0.1)
        raise RuntimeError(f"no raylet with {flag}")

    def start_head(self) -> RayNode:
        (port,) = free_ports(1)
        node = self._start(["--head", "--port", str(port), "--include-dashboard", "false"], [])
        self.address = f"{LOCALHOST}:{port}"
        return node

    def add_node(self, hidden: Path | None = None) -> RayNode:
        """A node of one CPU joining the head; with ``hidden``, the node sees an empty folder there (a mount
        namespace of its own, as a machine that lacks a mount): needs ``unshare -m``."""
        prefix = []
        if hidden is not None:
            prefix = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                      'mount -t tmpfs brr-hidden "$0" && exec "$@"', str(hidden)]
        return self._start(["--address", self.address], prefix, hidden)

    def kill_node(self, node: RayNode) -> None:
        """SIGKILL the node's raylet and everything it started, as a machine that vanishes."""
        _kill(node.processes())

    def stop(self) -> None:
        """Kill this cluster's processes (whatever names Ray gave them) and remove its folder."""
        own = []
        for process in psutil.process_iter(["cmdline"]):
            if str(self.temp_dir) in " ".join(process.info["cmdline"] or []):
                try:
                    own += [process, *process.children(recursive=True)]
                except psutil.NoSuchProcess:
                    pass
        for node in self.nodes:
            own += node.processes()
        _kill(own)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _kill(processes: list[psutil.Process], timeout_s: float = 10.0) -> None:
    """SIGKILL ``processes`` and wait until each is gone (a zombie is: its parent may not be this process)."""
    for process in processes:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass
    deadline = time.monotonic() + timeout_s
    for process in processes:
        while time.monotonic() < deadline:
            try:
                if process.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)


def can_hide_folders() -> bool:
    """Whether this machine lets a process mount over a folder in a mount namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = tempfile.mkdtemp(prefix="brr-unshare-")
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "mount", "-t", "tmpfs", "probe",
                               probe], check=False, capture_output=True, timeout=30)
        return done.returncode == 0
    finally:
        os.rmdir(probe)
