"""A Ray cluster of separate processes on this machine, as a user starts one: a head
(``ray start --head``) and worker nodes (``ray start --address=HEAD``), each node its own process
tree with its own temp dir. Used by the slow Ray tests; stopped by killing each node's session
(never ``ray stop``, which would stop every Ray on the machine, another test's too)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
#: Token authentication off: a loopback test cluster, and the test's driver must not need the
#: token a local ``ray.init`` may have written to ``~/.ray``.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the head node ended: {proc.stderr.read().decode()[-2000:]}"
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        assert time.monotonic() < deadline, f"the head node did not listen on {port} within {timeout:g} s"
        time.sleep(0.1)


def _session(sid: int) -> list[int]:
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getsid(int(d)) == sid:
                    pids.append(int(d))
            except OSError:
                pass
    return pids


def _with_arg(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a node's temp dir)."""
    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit() and int(d) != os.getpid():
            try:
                if text.encode() in Path(f"/proc/{d}/cmdline").read_bytes():
                    pids.append(int(d))
            except OSError:
                pass
    return pids


class RayNodes:
    """``with RayNodes(2) as address:`` a head and a worker node, one CPU each, on this machine.

    The head listens on a free port; every node is ``ray start --block`` in a new session with
    its own ``--temp-dir``; on exit each session (and anything still naming its temp dir) gets
    SIGKILL and the temp dirs are removed.
    """

    def __init__(self, nodes: int = 2, cpus: int = 1):
        self.nodes, self.cpus, self.procs, self.dirs, self.auth = nodes, cpus, [], [], None

    def _start(self, *args):
        tmp = tempfile.mkdtemp(prefix="cnray")  # short: Ray's socket paths must stay < 108 bytes
        self.dirs.append(tmp)
        argv = [RAY, "start", *args, f"--temp-dir={tmp}", f"--num-cpus={self.cpus}", "--block",
                "--object-store-memory", str(80 * 2**20), "--disable-usage-stats"]
        proc = subprocess.Popen(argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def __enter__(self) -> str:
        import ray

        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        try:
            _wait_port(port, self._start("--head", f"--port={port}", "--include-dashboard=false"), 60)
            for _ in range(self.nodes - 1):
                self._start(f"--address={self.address}")
            self.auth = os.environ.get("RAY_AUTH_MODE")
            os.environ["RAY_AUTH_MODE"] = "disabled"  # this process joins it too (the sweeps' driver)
            ray.init(address=self.address, log_to_driver=False)
            try:
                deadline = time.monotonic() + 60
                while sum(n["Alive"] for n in ray.nodes()) < self.nodes:
                    assert time.monotonic() < deadline, f"{self.nodes} nodes did not join within 60 s"
                    time.sleep(0.2)
            finally:
                ray.shutdown()
        except BaseException:
            self.__exit__()
            raise
        return self.address

    def __exit__(self, *exc):
        for proc, tmp in zip(reversed(self.procs), reversed(self.dirs)):
            for pid in set(_session(proc.pid)) | set(_with_arg(tmp)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            proc.wait(30)
        for tmp in self.dirs:
            shutil.rmtree(tmp, ignore_errors=True)
        if self.auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = self.auth
