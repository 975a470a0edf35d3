"""A real Slurm cluster on this one machine, for tests: munged + slurmctld + N slurmd "nodes" on loopback.

    cluster = SlurmCluster.start_or_skip()        # in a session fixture; pytest.skip with the reason if impossible
    cluster.run(["sbatch", "--wait", ...], env=cluster.env(...))   # any Slurm command against this cluster
    job_id = cluster.sbatch(["-N", "2", "slurm/pretrain.sh", ...])  # submit, get the id
    cluster.job(job_id)["JobState"]               # `scontrol show job`, parsed (Restarts, ExitCode, ...)
    cluster.wait_job(job_id, lambda j: j["JobState"] == "COMPLETED", timeout=300)
    cluster.stop()                                # cancels the jobs left, stops the daemons

or by hand (the same daemons, for poking at the scripts):

    python tests/slurm_cluster.py start           # prints `export SLURM_CONF=...`; eval it
    python tests/slurm_cluster.py stop

Everything the cluster needs lives in one state directory (default $TMPDIR/memformers-slurm-<uid>-<repo hash>, or
$MEMFORMERS_SLURM_DIR): slurm.conf, its own munged (own key and socket, so a machine's munged is neither needed nor
touched), StateSaveLocation, spool directories, pid files and daemon logs under log/. Ports are picked free at each
start. Starting again kills what a previous (crashed) start left running there — the daemons named by its pid
files (command line checked) and the processes of jobs still running under its slurmstepd (SLURM_CONF in their
environment) — and begins from empty state (slurmctld -c). A second session at the same time gets its own
directory (the first holds a lock).

Needs root (Slurm's daemons run as root here, and jobs run as the submitting user) and Debian/Ubuntu packages
`slurm-wlm` + `munge`; when they are missing and we are root, they are installed with apt (no recommends: ~9
packages). Where that is impossible, `start_or_skip()` skips with the reason.

Every node is this machine: the nodes share its CPUs, memory and disk (so a job sees a shared filesystem, as on a
real cluster). Each node declares all CPUs and memory/N; one partition, `debug`, with `OverSubscribe=YES`. A
requeued job may start again after CRED_EXPIRE_S (10 s here, Slurm's default 120 s).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["slurm-wlm", "munge"]
DAEMONS = ["munged", "slurmctld", "slurmd"]
# A requeued job may start again only after the credential lifetime (default 120 s); short here so tests are quick.
CRED_EXPIRE_S = 10


class SlurmUnavailable(RuntimeError):
    """Slurm cannot run here (not root, packages missing and not installable, ...): the reason is the message."""


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/usr/bin", "/sbin") if (p := Path(d) / name).is_file()), None
    )


def missing_binaries() -> list[str]:
    return [
        b for b in ["munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo"] if not _which(b)
    ]


def ensure_installed(timeout: float = 600) -> None:
    """Install slurm-wlm + munge with apt where they are missing (root only); raise SlurmUnavailable otherwise."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing_binaries())} missing) and we are not root "
            f"to install it: apt-get install {' '.join(PACKAGES)}"
        )
    if not shutil.which("apt-get"):
        raise SlurmUnavailable(
            f"Slurm is not installed ({', '.join(missing_binaries())} missing) and there is no "
            "apt-get to install it with"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "-qq", "-o", "DPkg::Lock::Timeout=120", "--no-install-recommends", *PACKAGES]
    errors = []
    for update_first in (False, True):  # the package lists may be missing or stale on a fresh machine
        try:
            if update_first:
                subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=timeout)
            proc = subprocess.run(install, env=env, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as error:
            errors.append(str(error))
            continue
        if proc.returncode == 0 and not missing_binaries():
            return
        errors.append(proc.stderr.strip()[-1500:])
    raise SlurmUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {errors[-1]}")


def free_ports(count: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def default_state_dir() -> Path:
    digest = hashlib.sha1(str(REPO).encode()).hexdigest()[:8]
    return Path(
        os.environ.get("MEMFORMERS_SLURM_DIR")
        or Path(tempfile.gettempdir()) / f"memformers-slurm-{os.getuid()}-{digest}"
    )


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o` / `show node -o` output (Key=Value pairs) as a dict."""
    out = {}
    for match in re.finditer(r"(\S+?)=(.*?)(?=\s+\S+?=|\s*$)", text.strip()):
        out[match.group(1)] = match.group(2)
    return out


class SlurmCluster:
    def __init__(self, state_dir: str | Path | None = None, nodes: int = 2, partition: str = "debug"):
        self.nodes = nodes
        self.partition = partition
        self.node_names = [f"node{i}" for i in range(1, nodes + 1)]
        self.dir = Path(state_dir) if state_dir else default_state_dir()
        self._lock = None
        self.procs: dict[str, subprocess.Popen] = {}

    # --- paths and environment --------------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.dir / "slurm.conf"

    @property
    def log_dir(self) -> Path:
        return self.dir / "log"

    @property
    def munge_socket(self) -> Path:
        return self.dir / "munge" / "munge.socket"

    def env(self, base: dict | None = None, **extra: str) -> dict[str, str]:
        """An environment for Slurm commands (and jobs: sbatch passes it through) talking to this cluster."""
        env = dict(os.environ if base is None else base)
        env["SLURM_CONF"] = str(self.conf)
        for var in [v for v in env if v.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_")) and v != "SLURM_CONF"]:
            del env[var]  # a test run inside a Slurm job must not leak that job's settings into ours
        env.update(extra)
        return env

    # --- lifecycle ----------------------------------------------------------------------------------------------------
    @classmethod
    def start_or_skip(cls, **kwargs) -> SlurmCluster:
        import pytest

        try:
            ensure_installed()
            if os.geteuid() != 0:
                raise SlurmUnavailable("not root: the test cluster runs munged, slurmctld and slurmd as root")
        except SlurmUnavailable as error:
            pytest.skip(f"no Slurm cluster possible here: {error}")
        cluster = cls(**kwargs)
        cluster.start()
        return cluster

    def _take_lock(self) -> None:
        """One session per state directory; a concurrent session moves to a directory of its own."""
        base = self.dir
        for attempt in range(2):
            self.dir.parent.mkdir(parents=True, exist_ok=True)
            lock = open(str(self.dir) + ".lock", "w")
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._lock = lock
                return
            except BlockingIOError:
                lock.close()
                self.dir = Path(f"{base}-{os.getpid()}")
        raise SlurmUnavailable(f"could not lock a state directory near {base}")

    def start(self, timeout: float = 90) -> SlurmCluster:
        if missing_binaries():
            raise SlurmUnavailable(f"missing: {', '.join(missing_binaries())} (call ensure_installed())")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the local Slurm cluster runs its daemons as root")
        self._take_lock()
        self.kill_stale()
        for sub in ("state", "spool", "log", "munge", "munge-key"):
            shutil.rmtree(self.dir / sub, ignore_errors=True)
        for sub in ("state", "spool", "log", "munge", "munge-key"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o755)
        os.chmod(self.dir / "munge", 0o755)  # munged insists that everyone may traverse to its socket
        os.chmod(self.dir / "munge-key", 0o700)
        key = self.dir / "munge-key" / "munge.key"
        key.write_bytes(os.urandom(128))
        os.chmod(key, 0o600)
        self._write_conf()

        self._spawn(
            "munged",
            [
                _which("munged"),
                "--foreground",
                "--force",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={self.dir / 'munged.pid'}",
                f"--seed-file={self.dir / 'munge-key' / 'munged.seed'}",
                f"--log-file={self.log_dir / 'munged.log'}",
            ],
        )
        self._wait(lambda: self.munge_socket.exists(), 20, "munged did not create its socket")
        self._spawn("slurmctld", [_which("slurmctld"), "-D", "-c", "-f", str(self.conf)])
        for name in self.node_names:
            self._spawn(f"slurmd-{name}", [_which("slurmd"), "-D", "-N", name, "-f", str(self.conf)])
        self._wait(self._all_idle, timeout, "the nodes did not become idle")
        return self

    def stop(self) -> None:
        """Cancel every job of this cluster (a failed test may leave one running), then stop the daemons."""
        if self.procs and all(p.poll() is None for p in self.procs.values()):
            self.cancel_all_jobs()
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.terminate()
        deadline = time.time() + 15
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        self.kill_stale()  # job processes slurmd left behind, daemons of an earlier start
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def cancel_all_jobs(self, timeout: float = 45) -> None:
        """scancel everything on this (private) cluster and wait until no job is left (KillWait is 30 s)."""
        try:
            subprocess.run(["scancel", f"--user={os.getuid()}"], env=self.env(), capture_output=True, timeout=20)
            deadline = time.time() + timeout
            while time.time() < deadline:
                proc = subprocess.run(
                    ["squeue", "-h", "-o", "%i"], env=self.env(), capture_output=True, text=True, timeout=20
                )
                if proc.returncode != 0 or not proc.stdout.strip():
                    return
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def stale_job_processes(self) -> list[int]:
        """Processes of jobs a previous start left running: slurmstepd processes started by this directory's slurmd
        (SLURM_CONF in their environment) and everything below them."""
        needle = f"SLURM_CONF={self.conf}\0".encode()
        parents: dict[int, int] = {}
        roots = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                if (entry / "cmdline").read_bytes().startswith(b"slurmstepd") and needle in (
                    entry / "environ"
                ).read_bytes():
                    roots.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
        children: dict[int, list[int]] = {}
        for pid, ppid in parents.items():
            children.setdefault(ppid, []).append(pid)
        found, todo = [], list(roots)
        while todo:
            pid = todo.pop()
            found.append(pid)
            todo.extend(children.get(pid, []))
        mine, pid = set(), os.getpid()
        while pid > 1:  # never this process or its ancestors
            mine.add(pid)
            pid = parents.get(pid, 1)
        return [p for p in found if p not in mine]

    def kill_stale(self) -> None:
        """Kill what a previous start in this directory left running: the daemons named by its pid files (command
        line checked) and the processes of jobs still running under its slurmstepd."""
        for pid in self.stale_job_processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        marker = str(self.dir)
        victims = []
        for pid_file in self.dir.glob("*.pid") if self.dir.is_dir() else []:
            try:
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except (OSError, ValueError):
                pid_file.unlink(missing_ok=True)
                continue
            if marker in cmdline and any(d in cmdline for d in DAEMONS):
                victims.append(pid)
            pid_file.unlink(missing_ok=True)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.time() + 10
        for pid in victims:
            while time.time() < deadline and Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists() and not _is_zombie(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def __enter__(self) -> SlurmCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- commands -----------------------------------------------------------------------------------------------------
    def run(
        self,
        cmd: list[str],
        *,
        env: dict | None = None,
        timeout: float = 60,
        check: bool = True,
        cwd: str | Path = REPO,
    ) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(cmd, env=self.env(env), cwd=cwd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            queue = subprocess.run(
                ["squeue", "-o", "%i %j %T %r %N"], env=self.env(), capture_output=True, text=True, timeout=20
            ).stdout
            raise AssertionError(
                f"{' '.join(map(str, cmd))} did not finish in {timeout}s\n{error.stdout or ''}\n"
                f"--- squeue\n{queue}\n{self.diagnostics()}"
            ) from None
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-3000:]}\n{self.diagnostics()}"
            )
        return proc

    def sbatch(self, args: list[str], *, env: dict | None = None, timeout: float = 60) -> int:
        """Submit (without --wait) and return the job id."""
        proc = self.run(["sbatch", "--parsable", *args], env=env, timeout=timeout)
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        proc = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        return parse_scontrol(proc.stdout) if proc.returncode == 0 else {}

    def wait_job(self, job_id: int, until, timeout: float, poll: float = 0.5) -> dict[str, str]:
        """Poll `scontrol show job` until `until(job_dict)` holds; return that dict (AssertionError on timeout)."""
        deadline = time.time() + timeout
        info = {}
        while time.time() < deadline:
            info = self.job(job_id)
            if info and until(info):
                return info
            time.sleep(poll)
        raise AssertionError(
            f"job {job_id}: condition not reached in {timeout}s; last state {info}\n{self.diagnostics()}"
        )

    def diagnostics(self, chars: int = 2500) -> str:
        """The tails of the daemons' logs (for assertion messages)."""
        parts = []
        for log in sorted(self.log_dir.glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    # --- internals ----------------------------------------------------------------------------------------------------
    def _write_conf(self) -> None:
        ctld_port, *node_ports = free_ports(1 + self.nodes)
        host = socket.gethostname().split(".")[0]
        cpus = os.cpu_count() or 1
        mem_mb = max(256, (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) // 2**20 // self.nodes - 256)
        lines = [
            "# Written by tests/slurm_cluster.py: a local test cluster, every node this machine.",
            "ClusterName=memformers-test",
            f"SlurmctldHost={host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE_S}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"StateSaveLocation={self.dir / 'state'}",
            f"SlurmdSpoolDir={self.dir / 'spool'}/%n",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}",
            f"SlurmdPidFile={self.dir / 'slurmd-%n.pid'}",
            f"SlurmctldLogFile={self.log_dir / 'slurmctld.log'}",
            f"SlurmdLogFile={self.log_dir / 'slurmd-%n.log'}",
            "SlurmdParameters=config_overrides",
            "ReturnToService=2",
            "MpiDefault=none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "SchedulerParameters=sched_interval=2",
            "KillWait=30",
            "MinJobAge=600",
        ]
        for name, port in zip(self.node_names, node_ports):
            lines.append(
                f"NodeName={name} NodeHostname={host} NodeAddr=127.0.0.1 Port={port} CPUs={cpus} "
                f"RealMemory={mem_mb} State=UNKNOWN"
            )
        lines.append(
            f"PartitionName={self.partition} Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE "
            "State=UP OverSubscribe=YES"
        )
        self.conf.write_text("\n".join(lines) + "\n")

    def _spawn(self, name: str, cmd: list[str]) -> None:
        out = open(self.log_dir / f"{name}.out", "w")
        self.procs[name] = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env(), start_new_session=True
        )
        out.close()

    def _all_idle(self) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise SlurmUnavailable(
                    f"{name} exited with {proc.returncode} while starting\n{self.diagnostics()}\n"
                    + (self.log_dir / f"{name}.out").read_text(errors="replace")[-2000:]
                )
        proc = subprocess.run(
            ["sinfo", "-h", "-N", "-o", "%N %t"], env=self.env(), capture_output=True, text=True, timeout=20
        )
        states = dict(line.split() for line in proc.stdout.splitlines() if line.strip())
        return all(states.get(n, "").rstrip("*~#") == "idle" for n in self.node_names)

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if ready():
                return
            time.sleep(0.3)
        self.stop()
        raise SlurmUnavailable(f"{what} in {timeout}s; state in {self.dir}\n{self.diagnostics()}")


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("start", "stop"):
        print(
            "usage: python tests/slurm_cluster.py start|stop   (state in $MEMFORMERS_SLURM_DIR or "
            f"{default_state_dir()})",
            file=sys.stderr,
        )
        return 2
    cluster = SlurmCluster()
    if argv[0] == "stop":
        cluster.kill_stale()
        return 0
    ensure_installed()
    cluster.start()
    cluster.procs.clear()  # leave the daemons running; `stop` finds them by their pid files
    print(f"export SLURM_CONF={cluster.conf}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
