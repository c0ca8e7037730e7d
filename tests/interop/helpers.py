"""What the interop tests share: running the medlake binary, and test servers on loopback."""

import contextlib
import os
import re
import socket
import subprocess
import time

import pytest

MEDLAKE = os.environ.get("MEDLAKE_BIN")


def run_medlake(warehouse, *sql, env=None, check=True):
    """`medlake sql --warehouse W --format csv -c SQL...`; fails the test on error if `check`."""
    if not MEDLAKE or not os.path.exists(MEDLAKE):
        pytest.fail(f"MEDLAKE_BIN must point at the medlake binary (got {MEDLAKE!r})")
    args = [MEDLAKE, "sql", "--warehouse", str(warehouse), "--format", "csv"]
    for statement in sql:
        args += ["-c", statement]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))
    if check:
        assert done.returncode == 0, f"medlake failed: {done.stderr}"
    return done


def lines(done):
    return done.stdout.strip().splitlines()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def loopback_server(args, port, name):
    """Starts `args` (a server told to listen on 127.0.0.1:`port`), waits until it accepts
    connections, and stops it when the block ends."""
    server = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"{name} did not start")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()


def write_tls_files(root):
    """A test certificate authority and a server certificate for localhost and 127.0.0.1:
    writes server.crt, server.key and ca.crt into `root`, returns the CA as PEM text."""
    import trustme
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert.private_key_pem.write_to_path(str(root / "server.key"))
    cert.cert_chain_pems[0].write_to_path(str(root / "server.crt"))
    ca.cert_pem.write_to_path(str(root / "ca.crt"))
    return ca.cert_pem.bytes().decode()


class MedlakeServe:
    """`medlake serve ARGS` with its output in root/serve.log; started when `ready` (a line
    fragment such as "postgres on") appears; `stop()` ends it."""

    def __init__(self, root, args, env, ready):
        if not MEDLAKE or not os.path.exists(MEDLAKE):
            pytest.fail(f"MEDLAKE_BIN must point at the medlake binary (got {MEDLAKE!r})")
        self.log_path = root / "serve.log"
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen([MEDLAKE, "serve", *args], stdout=self.log,
                                        stderr=subprocess.STDOUT,
                                        env=dict(os.environ, **env))
        deadline = time.time() + 120
        while ready not in self.log_path.read_text():
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail("medlake serve did not start:\n" + self.log_path.read_text())
            time.sleep(0.2)

    def port(self, door):
        """The port `door` ("postgres", "flight sql", "http") listens on, as the server printed
        it: doors opened on port 0 get a free one with no race for it."""
        found = re.search(rf"medlake serve: {door} on 127\.0\.0\.1:(\d+)", self.log_path.read_text())
        if not found:
            pytest.fail(f"medlake serve did not say where {door} listens:\n" + self.log_path.read_text())
        return int(found.group(1))

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@contextlib.contextmanager
def postgres15():
    """A throwaway PostgreSQL 15 cluster on a free loopback port (trust authentication), as
    the `postgres` user when run as root; yields its port and stops it when the block ends.
    tests/run.sh installs postgresql-15; a missing server fails the test."""
    import pwd
    import shutil
    import tempfile

    bin_dir = "/usr/lib/postgresql/15/bin"
    if not os.path.exists(f"{bin_dir}/postgres"):
        pytest.fail("PostgreSQL 15 is not installed (Debian package postgresql-15)")
    root = tempfile.mkdtemp(prefix="medlake-pg15-")
    prefix = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = f"{root}/data", free_port()

    def run(*args):
        done = subprocess.run(prefix + list(args), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{args[0]} failed: {done.stdout}\n{done.stderr}"

    run(f"{bin_dir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root} -c TimeZone=UTC"
    run(f"{bin_dir}/pg_ctl", "-D", data, "-l", f"{root}/postgres.log", "-w", "-t", "120", "-o", options, "start")
    try:
        yield port
    finally:
        subprocess.run(prefix + [f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)
