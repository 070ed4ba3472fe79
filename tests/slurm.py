"""A real one-node Slurm in a temporary folder: munged, slurmctld and slurmd (Debian's slurm-wlm and munge).

Everything lives in the folder: the munge key and socket, slurm.conf (SlurmctldHost = this host, free ports,
proctrack/linuxproc, task/none, select/cons_tres, no accounting), the state and spool folders, the logs. The
node declares 4 CPUs (`SlurmdParameters=config_overrides`, whatever the hardware has) so two 2-CPU jobs run on
it at once. Client commands find it through SLURM_CONF. Every daemon is started here and stopped here by its
PID; jobs still queued or running are cancelled first (a job step outlives slurmd otherwise).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scancel", "scontrol", "squeue", "sinfo", "srun")


def slurm_unavailable() -> str | None:
    """None when a local Slurm can run here, else why not."""
    if os.geteuid() != 0:
        return "slurmd launches jobs as their user and must run as root; the tests are not root"
    missing = [c for c in DAEMONS + CLIENTS if not shutil.which(c)]
    if missing:
        return (f"{', '.join(missing)} not installed (Debian: apt-get install slurm-wlm munge; "
                f".ci/run does so as root)")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


SLURM_CONF = """ClusterName=semiovs
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=60
MinJobAge=600
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class LocalSlurm:
    root: Path                        # short: Ray's socket paths under it must stay below 108 characters
    cpus: int = 4
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def env(self, **extra: str) -> dict[str, str]:
        """A client's environment: this Slurm, and no Ray or MLflow address inherited from the caller."""
        base = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
        return {**base, "SLURM_CONF": str(self.conf), **extra}

    def start(self) -> None:
        for sub in ("state", "spool"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(SLURM_CONF.format(host=socket.gethostname().split(".")[0], root=self.root,
                                               ctld_port=free_port(), slurmd_port=free_port(), cpus=self.cpus))
        self._daemon("munged", ["munged", "-F", "--force", f"--socket={self.root}/munge.socket",
                                f"--key-file={key}", f"--pid-file={self.root}/munged.pid",
                                f"--seed-file={self.root}/munged.seed", f"--log-file={self.root}/munged.log"])
        self._wait(lambda: (self.root / "munge.socket").exists(), "munged's socket")
        self._daemon("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._daemon("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to be idle in sinfo")

    def _daemon(self, name: str, cmd: list[str]) -> None:
        log = (self.root / f"{name}.out").open("w")
        self.daemons[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(),
                                              start_new_session=True)

    def _node_idle(self) -> bool:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=self.env())
        return out.stdout.strip() == "idle"

    def _wait(self, ready, what: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, proc in self.daemons.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited ({proc.returncode}): {self.log_tail(name)}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"waited {timeout_s:.0f} s for {what}: {self.log_tail('slurmd')} {self.log_tail('slurmctld')}")

    def log_tail(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace")[-1500:] if path.exists() else ""

    def sbatch(self, args: list[str], cwd: Path, env: dict[str, str]) -> int:
        out = subprocess.run(["sbatch", "--parsable", *args], capture_output=True, text=True, cwd=cwd, env=env,
                             check=True)
        return int(out.stdout.strip().split(";")[0])

    def job_field(self, job: int, key: str) -> str:
        out = subprocess.run(["scontrol", "-o", "show", "job", str(job)], capture_output=True, text=True,
                             env=self.env())
        for item in out.stdout.split():
            if item.startswith(f"{key}="):
                return item.split("=", 1)[1]
        return ""

    def queued(self) -> list[str]:
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, env=self.env())
        return out.stdout.split()

    def stop(self) -> None:
        if "slurmctld" in self.daemons and self.daemons["slurmctld"].poll() is None:
            jobs = self.queued()
            if jobs:
                subprocess.run(["scancel", *jobs], env=self.env(), capture_output=True)
                deadline = time.monotonic() + 60
                while self.queued() and time.monotonic() < deadline:
                    time.sleep(1)
        for name in reversed(DAEMONS):        # slurmd, slurmctld, then munged
            proc = self.daemons.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def job_pids(job: int, conf: Path) -> list[int]:
    """Every process on this machine that belongs to this job of this Slurm: its environment has this job's
    SLURM_JOB_ID and this Slurm's SLURM_CONF (the launcher, the sweep driver, `ray start`, every Ray process
    and worker, whatever they forked)."""
    wanted = {f"SLURM_JOB_ID={job}".encode(), f"SLURM_CONF={conf}".encode()}
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = set((entry / "environ").read_bytes().split(b"\0"))
        except OSError:
            continue
        if wanted <= environ:
            found.append(int(entry.name))
    return found


def pids_referencing(text: str) -> list[int]:
    """Processes whose command line mentions `text` (e.g. a job's Ray temp folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(int(entry.name))
    return found


def make_slurm() -> LocalSlurm:
    return LocalSlurm(root=Path(tempfile.mkdtemp(prefix="sl", dir="/tmp")))
