"""A server whose queries run on a Ballista cluster (`medlake serve --cluster`, issue 28): a
`medlake scheduler` and two `medlake executor`s on loopback with mutual TLS, started here.
Queries reading Delta tables run there and answer as the server alone does; masks and row
filters hold there (the plan that leaves the server already carries them); what must stay on
the server (the clinical clock's functions) does; the cluster's ports refuse anyone without its
certificate; and an executor killed during queries costs no wrong answer."""

import contextlib
import re
import socket
import ssl
import subprocess
import time

import pytest

from attack import Server, http_request, pg_connect, note
from helpers import MEDLAKE, run_medlake

PASSWORDS = {"admin": "Zqadmin-cluster-1f3b9", "ann": "Zqann-cluster-77ac1"}
USERS = {name: (name, password) for name, password in PASSWORDS.items()}

CONFIG = """
[[users]]
name = "admin"
password_env = "P_C_ADMIN"
role = "admin"

[[users]]
name = "ann"
password_env = "P_C_ANN"
role = "none"
roles = ["analyst"]
"""

SEED = [
    "CREATE TABLE silver.patients (patient_id BIGINT, mrn VARCHAR, ward VARCHAR)",
    "INSERT INTO silver.patients VALUES (1, 'MRN-0001', 'icu'), (2, 'MRN-0002', 'cardio'), "
    "(3, 'MRN-0003', 'icu')",
    "CREATE TABLE silver.readings AS SELECT v % 3 + 1 AS patient_id, v AS seq, "
    "CAST(v % 97 AS DOUBLE) AS hr FROM generate_series(1, 200000) AS s(v)",
    "INSERT INTO silver.readings SELECT v % 3 + 1, v, CAST(v % 89 AS DOUBLE) "
    "FROM generate_series(200001, 300000) AS s(v)",
    "CREATE ROLE analyst",
    "GRANT USAGE ON SCHEMA silver TO analyst",
    "GRANT SELECT ON TABLE silver.patients TO analyst",
    "GRANT SELECT ON TABLE silver.readings TO analyst",
    "ALTER TABLE silver.patients ALTER COLUMN mrn SET MASK "
    "CASE WHEN is_member('admin') THEN mrn ELSE 'MRN-****' END",
    "ALTER TABLE silver.patients SET ROW FILTER is_member('admin') OR ward = 'icu' ON (ward)",
]

QUERIES = [
    "SELECT patient_id, count(*) AS n, round(avg(hr), 6) AS hr FROM silver.readings "
    "GROUP BY patient_id ORDER BY patient_id",
    "SELECT p.ward, count(*) AS n, max(r.hr) AS top FROM silver.readings r "
    "JOIN silver.patients p ON p.patient_id = r.patient_id GROUP BY p.ward ORDER BY p.ward",
    "SELECT seq, hr FROM silver.readings WHERE seq BETWEEN 199995 AND 200004 ORDER BY seq",
    "SELECT patient_id, mrn, ward FROM silver.patients ORDER BY patient_id",
]


class Member:
    """`medlake scheduler|executor ARGS`, started when it prints `ready`."""

    def __init__(self, root, name, args, env, ready):
        if not MEDLAKE:
            pytest.fail("MEDLAKE_BIN must point at the medlake binary")
        self.log_path = root / f"{name}.log"
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen([MEDLAKE, *args], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)
        deadline = time.time() + 60
        while ready not in self.log_path.read_text():
            if self.process.poll() is not None or time.time() > deadline:
                self.stop()
                pytest.fail(f"{name} did not start:\n" + self.log_path.read_text())
            time.sleep(0.1)

    def text(self):
        return self.log_path.read_text()

    def kill(self):
        self.process.kill()
        self.process.wait(timeout=20)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    import os

    import trustme
    root = tmp_path_factory.mktemp("cluster")
    ca = trustme.CA()
    member = ca.issue_cert("localhost", "127.0.0.1")
    member.private_key_pem.write_to_path(str(root / "member.key"))
    member.cert_chain_pems[0].write_to_path(str(root / "member.crt"))
    ca.cert_pem.write_to_path(str(root / "ca.crt"))
    tls = {"MEDLAKE_CLUSTER_CA": str(root / "ca.crt"),
           "MEDLAKE_CLUSTER_CERT": str(root / "member.crt"),
           "MEDLAKE_CLUSTER_KEY": str(root / "member.key")}
    env = dict(os.environ, **tls)
    members = []
    try:
        scheduler = Member(root, "scheduler", ["scheduler", "--bind", "127.0.0.1:0"], env,
                           "scheduler listening on")
        members.append(scheduler)
        address = re.search(r"ballista://127\.0\.0\.1:\d+", scheduler.text()).group(0)
        for i in range(3):
            members.append(Member(root, f"executor{i}",
                                  ["executor", "--scheduler", address, "--bind", "127.0.0.1:0",
                                   "--vcores", "2"], env, "executor serving on"))
        (root / "server").mkdir()
        srv = Server(root / "server", CONFIG, seed=SEED, args=["--cluster", address],
                     env=dict({"P_C_ADMIN": PASSWORDS["admin"], "P_C_ANN": PASSWORDS["ann"]},
                              **tls))
        yield {"server": srv, "address": address, "members": members, "root": root, "ca": ca,
               "env": env}
        srv.stop()
    finally:
        for m in members:
            m.stop()


def rows(server, user, sql):
    with contextlib.closing(pg_connect(server, USERS[user])) as conn:
        with conn.cursor() as cur:
            cur.execute(sql)
            result = cur.fetchall()
            note("pg rows", repr(result))
            return result


def ran(server):
    """medlake_cluster_queries_total by where the queries ran."""
    status, _, body = http_request(server, "GET", "/metrics")
    assert status == 200
    found = dict(re.findall(r'medlake_cluster_queries_total\{ran="(\w+)"\} (\d+)', body.decode()))
    return {k: int(v) for k, v in found.items()}


def reference(server, sql):
    """The rows `medlake sql` (no cluster, the local operator) gives, as text."""
    done = run_medlake(server.warehouse, sql)
    return done.stdout.strip().splitlines()[1:]


def as_csv(result):
    return [",".join("" if v is None else str(v) for v in row) for row in result]


def test_queries_run_on_the_cluster_and_answer_as_the_server_alone(cluster):
    server = cluster["server"]
    before = ran(server)
    for sql in QUERIES:
        assert as_csv(rows(server, "admin", sql)) == reference(server, sql), sql
    after = ran(server)
    assert after["cluster"] - before.get("cluster", 0) == len(QUERIES), (before, after)
    assert after["server"] == before.get("server", 0)


def test_masks_and_row_filters_hold_on_the_cluster(cluster):
    server = cluster["server"]
    before = ran(server)
    assert rows(server, "ann", "SELECT patient_id, mrn, ward FROM silver.patients "
                               "ORDER BY patient_id") == [(1, "MRN-****", "icu"),
                                                          (3, "MRN-****", "icu")]
    # The filter holds through a join and an aggregate run by the executors.
    joined = rows(server, "ann", "SELECT p.ward, count(*) FROM silver.readings r JOIN "
                                 "silver.patients p ON p.patient_id = r.patient_id GROUP BY p.ward")
    assert [w for w, _ in joined] == ["icu"]
    assert ran(server)["cluster"] - before.get("cluster", 0) == 2
    # The mask is a literal for ann: a filter on the real values finds nothing (the plan reads
    # no table at all, so it runs here).
    assert rows(server, "ann", "SELECT count(*) FROM silver.patients WHERE mrn LIKE 'MRN-000%'") \
        == [(0,)]


def test_a_query_with_a_server_only_function_stays_on_the_server(cluster):
    """The clinical clock's functions use the server's time zone setting: not the executors'."""
    server = cluster["server"]
    before = ran(server)
    sql = "SELECT count(DISTINCT local_date(to_timestamp(seq * 60))) AS days FROM silver.readings"
    assert as_csv(rows(server, "ann", sql)) == reference(server, sql)
    after = ran(server)
    assert after["server"] - before.get("server", 0) == 1
    assert after["cluster"] == before.get("cluster", 0)


def test_refreshes_run_their_queries_on_the_cluster_and_commit_once_here(cluster):
    server = cluster["server"]
    log = server.serve.log_path
    with contextlib.closing(pg_connect(server, USERS["admin"])) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE MATERIALIZED VIEW silver.per_patient AS SELECT patient_id, "
                        "count(*) AS n, max(hr) AS top, sum(seq) AS s FROM silver.readings "
                        "GROUP BY patient_id")
            cur.execute("CREATE MATERIALIZED VIEW silver.recent AS SELECT seq, hr FROM "
                        "silver.readings WHERE seq > 299990")
            runs = log.read_text().count("a refresh query runs on the cluster")
            assert runs >= 2, log.read_text()[-2000:]
            cur.execute("INSERT INTO silver.readings VALUES (1, 300001, 99.0), (2, 300002, 98.0)")
            for view in ["silver.per_patient", "silver.recent"]:
                cur.execute(f"SELECT count(*) FROM table_history('{view}')")
                versions = cur.fetchone()[0]
                cur.execute(f"REFRESH MATERIALIZED VIEW {view}")
                cur.execute(f"SELECT count(*) FROM table_history('{view}')")
                assert cur.fetchone()[0] == versions + 1, view
            assert log.read_text().count("a refresh query runs on the cluster") > runs
            # The executors wrote the appended rows' files; this server committed them once.
            wrote = "the cluster wrote the refresh's data files"
            assert log.read_text().count(wrote) >= 1, log.read_text()[-3000:]
            # A full refresh: the executors write every row again, the commit replaces the
            # view's files at once.
            written = log.read_text().count(wrote)
            cur.execute("SELECT count(*) FROM table_history('silver.per_patient')")
            versions = cur.fetchone()[0]
            cur.execute("REFRESH MATERIALIZED VIEW silver.per_patient FULL")
            cur.execute("SELECT count(*) FROM table_history('silver.per_patient')")
            assert cur.fetchone()[0] == versions + 1
            assert log.read_text().count(wrote) == written + 1, log.read_text()[-3000:]
            cur.execute("SELECT operation, rows_written, metrics FROM table_history("
                        "'silver.per_patient') ORDER BY version DESC LIMIT 1")
            operation, written_rows, metrics = cur.fetchone()
            note("full refresh commit", f"{operation} {written_rows} {metrics}")
            cur.execute("SELECT count(*) FROM silver.per_patient")
            assert (operation, written_rows) == ("WRITE", cur.fetchone()[0])
            # A DELETE and an UPDATE of the input: the incremental refresh reads its change
            # feed, and the view rows the change touches, on the executors.
            runs = log.read_text().count("a refresh query runs on the cluster")
            cur.execute("DELETE FROM silver.readings WHERE seq = 300001")
            cur.execute("UPDATE silver.readings SET hr = hr + 1 WHERE seq = 299995")
            for view in ["silver.recent", "silver.per_patient"]:
                cur.execute(f"REFRESH MATERIALIZED VIEW {view}")
            assert log.read_text().count("a refresh query runs on the cluster") >= runs + 2
            cur.execute("SELECT view, mode, status FROM system.refreshes WHERE trigger = 'manual' "
                        "ORDER BY started")
            modes = {view: (mode, status) for view, mode, status in cur.fetchall()}
            note("refreshes", repr(modes))
            assert modes["silver.recent"] == ("incremental", "succeeded"), modes
            cur.execute("SELECT reason FROM system.refreshes WHERE view = 'silver.per_patient' "
                        "ORDER BY started DESC LIMIT 1")
            # (Incremental or full: AUTO recomputes when the touched patients' files span
            # most of the input, as here.)
            reason = note("per_patient's last refresh", cur.fetchone()[0])
            assert modes["silver.per_patient"][1] == "succeeded", (modes, reason)
    for view, query in [
        ("silver.per_patient", "SELECT patient_id, count(*), max(hr), sum(seq) FROM "
                               "silver.readings GROUP BY patient_id ORDER BY patient_id"),
        ("silver.recent", "SELECT seq, hr FROM silver.readings WHERE seq > 299990 ORDER BY seq"),
    ]:
        order = "patient_id" if "patient" in view else "seq"
        assert reference(server, f"SELECT * FROM {view} ORDER BY {order}") \
            == reference(server, query), view


def test_executors_check_expectations_while_they_write(cluster):
    """A refresh with DROP ROW and QUARANTINE rules: the executors check the rows while they
    write them, quarantined rows go to the quarantine table's files, and this server commits
    the quarantine, then the view (the log says the cluster wrote; the counts are in
    system.expectations)."""
    server = cluster["server"]
    log = server.serve.log_path
    wrote = "the cluster wrote the refresh's data files"
    with contextlib.closing(pg_connect(server, USERS["admin"])) as conn:
        with conn.cursor() as cur:
            cur.execute("CREATE MATERIALIZED VIEW silver.checked "
                        "CONSTRAINT plausible EXPECT (hr BETWEEN 5 AND 90) ON VIOLATION DROP ROW "
                        "CONSTRAINT known EXPECT (patient_id < 3) ON VIOLATION QUARANTINE "
                        "AS SELECT patient_id, seq, hr FROM silver.readings")
            written = log.read_text().count(wrote)
            cur.execute("INSERT INTO silver.readings SELECT v % 3 + 1, v, CAST(v % 97 AS DOUBLE) "
                        "FROM generate_series(500001, 530000) AS s(v)")
            # A full refresh: the executors check and write every row (an incremental one
            # reads the new commits' files, which stays on this server).
            cur.execute("REFRESH MATERIALIZED VIEW silver.checked FULL")
            assert log.read_text().count(wrote) == written + 1, log.read_text()[-3000:]
            line = [x for x in log.read_text().splitlines() if wrote in x][-1]
            note("refresh written by the cluster", line)
            cur.execute("SELECT count(*), count(*) FILTER (WHERE patient_id = 3), "
                        "count(*) FILTER (WHERE hr NOT BETWEEN 5 AND 90) FROM silver.readings")
            total, unknown, implausible = cur.fetchone()
            assert f"checked={total}" in line, line
            cur.execute("SELECT e.expectation, e.rows_checked, e.violations FROM "
                        "system.expectations e JOIN system.refreshes r USING (refresh_id) "
                        "WHERE e.view = 'silver.checked' AND r.trigger = 'manual' "
                        "ORDER BY e.expectation")
            counts = cur.fetchall()
            note("expectations", repr(counts))
            assert counts == [("known", total, unknown), ("plausible", total, implausible)]
    assert reference(server, "SELECT count(*) FROM silver.checked") == reference(
        server, "SELECT count(*) FROM silver.readings WHERE hr BETWEEN 5 AND 90 AND patient_id < 3")
    assert reference(server, "SELECT count(*) FROM silver.checked_quarantine") == reference(
        server, "SELECT count(*) FROM silver.readings WHERE patient_id = 3")


def tls_handshake(port, context):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="localhost") as tls:
            # TLS 1.3: a refused client certificate surfaces on the first read.
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            return tls.recv(1)


def test_the_cluster_refuses_peers_without_its_certificate(cluster):
    port = int(cluster["address"].rsplit(":", 1)[1])
    trusting = ssl.create_default_context(cadata=cluster["ca"].cert_pem.bytes().decode())
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_handshake(port, trusting)
    # A certificate from another CA.
    import trustme
    stranger = trustme.CA().issue_cert("localhost")
    stranger.configure_cert(trusting)
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        tls_handshake(port, trusting)
    # Plain TCP speaking HTTP/2 gets no gRPC answer either.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        try:
            answer = sock.recv(64)
        except OSError:
            answer = b""
        assert b"\x00\x00" not in answer[:2] or not answer


def test_an_executor_killed_during_a_refresh_commits_all_or_nothing(cluster):
    """kill -9 of an executor while a view's full refresh runs (and writes) on the cluster:
    Ballista retries its tasks elsewhere and the refresh commits once with every row, or it
    fails with a clear error and the view keeps its version and rows."""
    import threading

    server = cluster["server"]
    log = server.serve.log_path
    view = "silver.copied"
    query = "SELECT patient_id, seq, hr FROM silver.readings"
    with contextlib.closing(pg_connect(server, USERS["admin"])) as conn:
        with conn.cursor() as cur:
            cur.execute(f"CREATE MATERIALIZED VIEW {view} AS {query}")
            cur.execute("INSERT INTO silver.readings SELECT 2, v, 1.0 FROM "
                        "generate_series(400000, 400999) AS s(v)")
            cur.execute(f"SELECT count(*) FROM table_history('{view}')")
            versions = cur.fetchone()[0]
    before = reference(server, f"SELECT count(*) FROM {view}")
    runs = log.read_text().count("a refresh query runs on the cluster")
    outcome = {}

    def refresh():
        try:
            with contextlib.closing(pg_connect(server, USERS["admin"])) as conn:
                with conn.cursor() as cur:
                    cur.execute(f"REFRESH MATERIALIZED VIEW {view} FULL")
            outcome["ok"] = True
        except Exception as e:  # a clear error is allowed
            outcome["error"] = str(e)

    worker = threading.Thread(target=refresh)
    worker.start()
    deadline = time.monotonic() + 60
    while log.read_text().count("a refresh query runs on the cluster") == runs:
        assert time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.005)
    cluster["members"][2].kill()
    worker.join(timeout=300)
    assert not worker.is_alive()
    note("refresh after the kill", repr(outcome))
    with contextlib.closing(pg_connect(server, USERS["admin"])) as conn:
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM table_history('{view}')")
            after = cur.fetchone()[0]
    if outcome.get("ok"):
        assert after == versions + 1
        assert reference(server, f"SELECT * FROM {view} ORDER BY seq") == \
            reference(server, f"{query} ORDER BY seq")
    else:
        assert "cluster" in outcome["error"], outcome
        assert after == versions
        assert reference(server, f"SELECT count(*) FROM {view}") == before


def test_an_executor_killed_during_queries_costs_no_wrong_answer(cluster):
    server = cluster["server"]
    sql = QUERIES[1]
    expected = reference(server, sql)
    executor = cluster["members"][3]
    answers = []
    with contextlib.closing(pg_connect(server, USERS["admin"])) as conn:
        for i in range(4):
            if i == 1:
                executor.kill()
            try:
                with conn.cursor() as cur:
                    cur.execute(sql)
                    answers.append(as_csv(cur.fetchall()))
            except Exception as e:  # a clear error is allowed, a wrong answer is not
                note("after the kill", str(e))
                answers.append(None)
                assert "cluster" in str(e), str(e)
    assert all(a is None or a == expected for a in answers), answers
    # The other executor keeps answering once the scheduler knows.
    assert answers[-1] == expected, answers


def test_executors_scan_external_tables_with_their_own_config(cluster, tmp_path):
    """`medlake serve --cluster-sources executors`: the executors (started with `--config`,
    whose `[sources]` is what they may read) scan a CSV folder themselves; the query joins it
    with a Delta table on the cluster and answers as the server alone; a folder outside the
    executors' `[sources]` is refused there, whatever the server allows."""
    landing = tmp_path / "landing"
    (landing / "batch").mkdir(parents=True)
    (landing / "other").mkdir()
    for f in range(8):
        lines = "".join(f"{f * 100 + i},{i % 3 + 1}\n" for i in range(100))
        (landing / "batch" / f"{f}.csv").write_text("seq,patient_id\n" + lines)
        (landing / "other" / f"{f}.csv").write_text("seq,patient_id\n" + lines)
    # The executors' own cluster key lies in a folder their [sources] allows: still refused.
    keys = landing / "keys"
    keys.mkdir()
    env = dict(cluster["env"])
    for var, name in [("MEDLAKE_CLUSTER_CA", "ca.crt"), ("MEDLAKE_CLUSTER_CERT", "member.crt"),
                      ("MEDLAKE_CLUSTER_KEY", "member.key")]:
        (keys / name).write_bytes(open(env[var], "rb").read())
        env[var] = str(keys / name)
    sources = f'[sources]\nallowed_paths = ["{landing / "batch"}", "{keys}"]\n'
    (tmp_path / "executors.toml").write_text(sources)
    members = []
    try:
        scheduler = Member(tmp_path, "scheduler", ["scheduler", "--bind", "127.0.0.1:0"], env,
                           "scheduler listening on")
        members.append(scheduler)
        address = re.search(r"ballista://127\.0\.0\.1:\d+", scheduler.text()).group(0)
        for i in range(2):
            members.append(Member(tmp_path, f"executor{i}",
                                  ["executor", "--scheduler", address, "--bind", "127.0.0.1:0",
                                   "--vcores", "2", "--config", str(tmp_path / "executors.toml")],
                                  env, "executor serving on"))
        (tmp_path / "server").mkdir()
        srv = Server(tmp_path / "server",
                     CONFIG + f'\n[sources]\nallowed_paths = ["{landing}"]\n',
                     seed=SEED[:2],
                     args=["--cluster", address, "--cluster-sources", "executors"],
                     env=dict({"P_C_ADMIN": PASSWORDS["admin"], "P_C_ANN": PASSWORDS["ann"]},
                              **{k: v for k, v in cluster["env"].items()
                                 if k.startswith("MEDLAKE_CLUSTER")}))
        try:
            sql = ("SELECT p.ward, count(*) AS n, sum(b.seq) AS s FROM landing.{t} b "
                   "JOIN silver.patients p ON p.patient_id = b.patient_id "
                   "GROUP BY p.ward ORDER BY p.ward")
            with contextlib.closing(pg_connect(srv, USERS["admin"])) as conn:
                with conn.cursor() as cur:
                    cur.execute("CREATE SCHEMA landing")
                    for t in ["batch", "other"]:
                        cur.execute(f"CREATE EXTERNAL TABLE landing.{t} (seq BIGINT, "
                                    f"patient_id BIGINT) STORED AS CSV LOCATION "
                                    f"'file://{landing / t}/' OPTIONS ('has_header' 'true')")
            before = ran(srv).get("cluster", 0)
            got = rows(srv, "admin", sql.format(t="batch"))
            assert ran(srv).get("cluster", 0) == before + 1
            assert as_csv(got) == reference(srv, sql.format(t="batch"))
            assert [n for _, n, _ in got] == [264, 536], got
            # The server may read landing/other; the executors' [sources] says no.
            with pytest.raises(Exception) as refused:
                rows(srv, "admin", sql.format(t="other"))
            note("refused on the executors", str(refused.value))
            assert "refused" in str(refused.value).lower(), str(refused.value)
            with contextlib.closing(pg_connect(srv, USERS["admin"])) as conn:
                with conn.cursor() as cur:
                    cur.execute(f"CREATE EXTERNAL TABLE landing.keys STORED AS BINARYFILE "
                                f"LOCATION 'file://{keys}/'")
            with pytest.raises(Exception) as forbidden:
                rows(srv, "admin", "SELECT path, length(content) FROM landing.keys")
            note("the executors' key folder", str(forbidden.value))
            assert "refused" in str(forbidden.value).lower(), str(forbidden.value)
            assert "PRIVATE KEY" not in str(forbidden.value)
        finally:
            srv.stop()
    finally:
        for m in members:
            m.stop()
