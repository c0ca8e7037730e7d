"""External tables as an attacker allowed to create them (`etl`): no login password, ingest
token or process environment variable can be sent anywhere; no loopback, link-local, private
or unspecified address is reached (not even through a redirect); no server file outside
`[sources] allowed_paths` is read (no `..`, no symlink, no `file://` spelling, no prefix trick).
Every probe is watched by a listener of the test's own (a canary): it must see no connection."""

import re
import socket
import time

import pytest

from attack import (SECRET_ENV, USERS, Canary, Server, admin_rows, http_response, note,
                    pg_connect, run_probe, users_toml)


def table_exists(server, schema, name):
    return admin_rows(server, f"SELECT count(*) FROM information_schema.tables WHERE "
                              f"table_schema = '{schema}' AND table_name = '{name}'") != [(0,)]


def drop_if_created(server, schema, name):
    if table_exists(server, schema, name):
        admin_pg(server).execute(f"DROP TABLE {schema}.{name}")
        return True
    return False


def admin_pg(server):
    from attack import admin_pg as a
    return a(server)


def etl_try(server, sql, door="pg-simple", user="etl"):
    return run_probe(server, user, door, [sql])


def assert_no_secret(text):
    for name, value in SECRET_ENV.items():
        assert value not in text, f"the value of {name} leaked: {text[:500]!r}"


class DualCanary(Canary):
    """A canary on every IPv4 and IPv6 address of the machine (:: with V6ONLY off)."""

    def __init__(self, response=None):
        super().__init__("::", response, socket.AF_INET6)


@pytest.fixture(scope="module")
def open_server(tmp_path_factory):
    """A server whose operator allows 127.0.0.1 (and only it) as a source host: the secret rules
    are then the only thing between an etl user and a listener on 127.0.0.1."""
    root = tmp_path_factory.mktemp("open")
    config = users_toml() + """
[sources]
allowed_paths = []
allowed_hosts = ["127.0.0.1"]
"""
    # Debug logs: the secret-leak checks read them too (an operator turns them on to debug a
    # source; the EHR password must not appear).
    server = Server(root, config, seed=["CREATE SCHEMA ext"],
                    env={"MEDLAKE_LOG": "debug,h2=info,hyper=info,rustls=info,tower=info"})
    try:
        yield server
    finally:
        server.stop()


def rest(name, port, options, host="127.0.0.1", columns=""):
    opts = ", ".join(f"'{k}' '{v}'" for k, v in options.items())
    return (f"CREATE EXTERNAL TABLE ext.{name} {columns} STORED AS REST "
            f"LOCATION 'http://{host}:{port}/data'" + (f" OPTIONS ({opts})" if opts else ""))


# ---------------------------------------------------------------------------------------------
# Secrets towards a host the operator allowed


def test_positive_control_ehr_secret_reaches_an_allowed_host(open_server):
    """The listener method works: the secret etl may use does reach an allowed host (so the
    "no connection" assertions below are meaningful)."""
    canary = Canary(response=lambda req: http_response(200, b'[{"id": 1, "name": "a"}]'))
    try:
        outcome = etl_try(open_server, rest("control", canary.port,
                                            {"bearer_token": "${EHR_PASSWORD}"}))
        assert outcome.ok, outcome
        rows = pg_connect(open_server, USERS["etl"]).execute(
            "SELECT count(*) FROM ext.control").fetchall()
        assert rows == [(1,)]
        assert canary.connections >= 1
        sent = b"".join(canary.requests).decode(errors="replace")
        assert f"Bearer {SECRET_ENV['MEDLAKE_EHR_PASSWORD']}" in sent
        # The catalog keeps the reference, never the value.
        shown = admin_rows(open_server, "SELECT * FROM information_schema.tables")
        assert_no_secret(repr(shown))
    finally:
        canary.close()


SECRET_REFS = ["P_ADMIN", "P_ETL", "P_READER", "T_GW", "HOME", "PATH", "MEDLAKE_EHR_PASSWORD"]


@pytest.mark.parametrize("door", ["pg-simple", "adbc-query", "flight-update"])
@pytest.mark.parametrize("option", ["bearer_token", "api_key"])
@pytest.mark.parametrize("var", SECRET_REFS)
def test_etl_cannot_send_environment_variables(open_server, var, option, door):
    canary = Canary()
    name = f"leak_{var.lower()}_{option}_{door.replace('-', '_')}"
    try:
        outcome = etl_try(open_server, rest(name, canary.port, {option: "${" + var + "}"}), door)
        if outcome.ok:
            # Declared or lazily fetched: the first scan is where the value would travel.
            etl_try(open_server, f"SELECT * FROM ext.{name}", door)
        created = drop_if_created(open_server, "ext", name)
        sent = b"".join(canary.requests).decode(errors="replace")
        assert_no_secret(sent)
        assert canary.connections == 0, f"the server connected with ${{{var}}}: {sent[:300]!r}"
        assert not outcome.ok and not created, f"${{{var}}} was accepted: {outcome!r}"
        assert_no_secret(outcome.message)
    finally:
        canary.close()


@pytest.mark.parametrize("option", ["records_pointer", "cursor_param", "limit_param",
                                    "api_key_header"])
def test_non_secret_options_do_not_expand_login_secrets(open_server, option):
    """${NAME} in an option that is not a secret is either refused or kept literally: never
    expanded (it would come back in an error message or the request)."""
    canary = Canary(response=lambda req: http_response(200, b'{"data": [{"id": 1}]}'))
    name = f"opt_{option}"
    try:
        options = {option: "${P_ADMIN}"}
        if option == "cursor_param":
            options.update(pagination="cursor", cursor_pointer="/next")
        outcome = etl_try(open_server, rest(name, canary.port, options))
        if outcome.ok:
            outcome = etl_try(open_server, f"SELECT * FROM ext.{name}")
        drop_if_created(open_server, "ext", name)
        assert_no_secret(outcome.message)
        assert_no_secret(b"".join(canary.requests).decode(errors="replace"))
    finally:
        canary.close()


def test_secret_in_location_is_not_expanded(open_server):
    canary = Canary(response=lambda req: http_response(200, b'[{"id": 1}]'))
    try:
        sql = (f"CREATE EXTERNAL TABLE ext.loc_leak STORED AS REST "
               f"LOCATION 'http://127.0.0.1:{canary.port}/x?k=${{P_ADMIN}}&e=${{EHR_PASSWORD}}'")
        outcome = etl_try(open_server, sql)
        if outcome.ok:
            etl_try(open_server, "SELECT * FROM ext.loc_leak")
        drop_if_created(open_server, "ext", "loc_leak")
        assert_no_secret(b"".join(canary.requests).decode(errors="replace"))
        assert_no_secret(outcome.message)
    finally:
        canary.close()


def test_upstream_error_bodies_do_not_echo_the_secret(open_server):
    """A host that echoes the Authorization header in its error page: medlake's error to the
    etl user must not carry the secret's value (etl may use EHR_PASSWORD, not read it)."""
    def echo(req):
        return http_response(401, b'{"error": "bad credentials", "got": "' +
                             req.replace(b'"', b"'").replace(b"\r\n", b" | ") + b'"}')
    canary = Canary(response=echo)
    try:
        outcome = etl_try(open_server, rest("echo", canary.port,
                                            {"bearer_token": "${EHR_PASSWORD}"}))
        if outcome.ok:
            outcome = etl_try(open_server, "SELECT * FROM ext.echo")
        drop_if_created(open_server, "ext", "echo")
        assert canary.connections >= 1, "the allowed host was never asked"
        assert not outcome.ok
        assert SECRET_ENV["MEDLAKE_EHR_PASSWORD"] not in outcome.message, outcome.message[:600]
    finally:
        canary.close()


def test_redirect_to_a_host_not_allowed_is_not_followed(open_server):
    inner = Canary(host="127.0.0.2", response=lambda req: http_response(200, b'[{"id": 7}]'))
    inner6 = Canary(host="::1", family=socket.AF_INET6,
                    response=lambda req: http_response(200, b'[{"id": 7}]'))
    hops = iter([f"http://127.0.0.2:{inner.port}/data", f"http://[::1]:{inner6.port}/data"])
    outer = Canary(response=lambda req: http_response(
        302, b"", {"Location": next(hops, f"http://127.0.0.2:{inner.port}/data")}))
    try:
        for i in range(2):
            outcome = etl_try(open_server, rest(f"redirected{i}", outer.port,
                                                {"bearer_token": "${EHR_PASSWORD}"}))
            if outcome.ok:
                etl_try(open_server, f"SELECT * FROM ext.redirected{i}")
            drop_if_created(open_server, "ext", f"redirected{i}")
        assert outer.connections >= 1
        assert inner.connections == 0, f"followed a redirect to 127.0.0.2: {inner.requests!r}"
        assert inner6.connections == 0, f"followed a redirect to [::1]: {inner6.requests!r}"
    finally:
        outer.close()
        inner.close()
        inner6.close()


# ---------------------------------------------------------------------------------------------
# The shared server: allowed_hosts = [] (nothing private), allowed_paths = [landing]


@pytest.mark.parametrize("door", ["pg-simple", "adbc-query"])
def test_ehr_secret_to_loopback_is_refused(main, door):
    canary = DualCanary()
    try:
        outcome = etl_try(main, rest("ehr_loop", canary.port, {"bearer_token": "${EHR_PASSWORD}"})
                          .replace("ext.", "bronze."), door)
        if outcome.ok:
            etl_try(main, "SELECT * FROM bronze.ehr_loop", door)
        created = drop_if_created(main, "bronze", "ehr_loop")
        assert canary.connections == 0, f"connected to loopback: {canary.requests!r}"
        assert not outcome.ok and not created, outcome
        assert_no_secret(outcome.message)
    finally:
        canary.close()


@pytest.mark.parametrize("var", ["P_ADMIN", "T_GW", "HOME", "PATH"])
def test_login_secret_to_loopback_is_refused(main, var):
    canary = DualCanary()
    try:
        outcome = etl_try(main, rest("env_loop", canary.port, {"bearer_token": "${" + var + "}"})
                          .replace("ext.", "bronze."))
        created = drop_if_created(main, "bronze", "env_loop")
        assert canary.connections == 0
        assert not outcome.ok and not created, outcome
        assert_no_secret(outcome.message)
    finally:
        canary.close()


LOOPBACK_SPELLINGS = ["127.0.0.1", "localhost", "127.1", "2130706433", "0x7f000001", "0177.0.0.1",
                      "127.0.0.2", "0.0.0.0", "[::1]", "[::ffff:127.0.0.1]", "[::]",
                      "localhost.", "LOCALHOST"]


@pytest.mark.parametrize("host", LOOPBACK_SPELLINGS)
def test_rest_to_loopback_is_refused(main, host):
    canary = DualCanary(response=lambda req: http_response(200, b'[{"id": 1}]'))
    name = "ssrf_loop"
    try:
        outcome = etl_try(main, f"CREATE EXTERNAL TABLE bronze.{name} STORED AS REST "
                                f"LOCATION 'http://{host}:{canary.port}/'")
        if outcome.ok:
            etl_try(main, f"SELECT * FROM bronze.{name}")
        created = drop_if_created(main, "bronze", name)
        assert canary.connections == 0, f"{host} reached the canary: {canary.requests!r}"
        assert not outcome.ok and not created, outcome
    finally:
        canary.close()


# Words only an attempted connection produces (a refusal by policy inside the resolver may well
# be wrapped in "error sending request ... dns error: ...", which is fine). "HTTP 404" and the
# like: something answered, so a request was sent.
CONNECT_FAILURE_WORDS = ["tcp connect", "timed out", "unreachable", "no route to host",
                         "connection refused", "os error", "57014", "canceling", "resolve_deny",
                         "has no table at this path"]


PRIVATE_URLS = [
    "http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/latest/meta-data/",
    "http://metadata.google.internal/computeMetadata/v1/", "http://10.0.0.1/",
    "http://192.168.1.1/", "http://172.16.0.1/", "http://100.64.0.1/", "http://224.0.0.1/",
    "http://[fe80::1]/", "http://[::ffff:169.254.169.254]/", "http://[::ffff:a9fe:a9fe]/",
    "http://2852039166/", "http://0xa9fea9fe/", "http://0251.0376.0251.0376/",
    "http://169.254.169.254.nip.io/", "http://127.0.0.1:9/", "http://localhost:9/",
    "http://[::1]:9/", "http://0.0.0.0:9/", "https://169.254.169.254/",
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_rest_to_private_addresses_is_refused_without_trying(main, url):
    """Refused by policy, quickly, before any connection attempt (an error about a connection
    that failed, timed out or got an HTTP answer means the server did try)."""
    conn = pg_connect(main, USERS["etl"])
    try:
        conn.execute("SET statement_timeout = '6s'")
        started = time.time()
        try:
            conn.execute(f"CREATE EXTERNAL TABLE bronze.ssrf_priv STORED AS REST LOCATION '{url}'")
            error = None
        except Exception as e:  # noqa: BLE001
            error = note("ssrf", str(e))
        elapsed = time.time() - started
    finally:
        conn.close()
    created = drop_if_created(main, "bronze", "ssrf_priv")
    assert error is not None and not created, f"{url} accepted"
    lowered = error.lower()
    tried = [w for w in CONNECT_FAILURE_WORDS if w in lowered] + re.findall(r"HTTP \d{3}", error)
    assert not tried, f"the server tried to connect to {url} ({elapsed:.1f}s): {error}"
    assert elapsed < 5, f"{elapsed:.1f}s: the server waited on {url}"


# ---------------------------------------------------------------------------------------------
# Through an HTTP proxy (HTTP_PROXY/HTTPS_PROXY/ALL_PROXY, honoured by reqwest and object_store):
# every request the server sends goes to a listener of the test, whatever its target, so an
# attempt is seen even where the network would have dropped it. A proxy is also how a hospital
# network usually reaches the Internet: a host check made on the socket's peer (the proxy)
# instead of on the target would let everything through.


@pytest.fixture(scope="module")
def proxied(tmp_path_factory):
    proxy = Canary(response=lambda req: http_response(200, b'[{"id": 1}]'))
    url = f"http://127.0.0.1:{proxy.port}"
    env = {"HTTP_PROXY": url, "HTTPS_PROXY": url, "ALL_PROXY": url, "http_proxy": url,
           "https_proxy": url, "all_proxy": url, "NO_PROXY": "", "no_proxy": ""}
    root = tmp_path_factory.mktemp("proxied")
    config = users_toml() + """
[sources]
allowed_paths = []
allowed_hosts = []
"""
    server = Server(root, config, seed=["CREATE SCHEMA ext"], env=env)
    server.proxy = proxy
    try:
        yield server
    finally:
        server.stop()
        proxy.close()


def through_proxy(server, sql, name):
    server.proxy.requests.clear()
    outcome = etl_try(server, sql)
    if outcome.ok:
        etl_try(server, f"SELECT * FROM ext.{name}")
    created = drop_if_created(server, "ext", name)
    return outcome, created, [r.split(b"\r\n")[0].decode(errors="replace")
                              for r in server.proxy.requests]


def test_positive_control_a_public_host_is_not_refused(proxied):
    """A public address is allowed: the server either sends the request through the proxy
    (then the tests below see every attempt) or connects itself (then its own connect-time
    check is what refuses private targets, and the direct tests above see attempts)."""
    outcome, created, requests = through_proxy(
        proxied, "CREATE EXTERNAL TABLE ext.public STORED AS REST LOCATION 'http://8.8.8.8/data'",
        "public")
    note("public host", f"{outcome!r} {requests}")
    via_proxy = any("8.8.8.8" in r for r in requests)
    assert via_proxy or outcome.code != "42501", f"a public host was refused: {outcome!r}"




@pytest.mark.parametrize("url", PRIVATE_URLS)
def test_private_and_metadata_hosts_are_never_requested(proxied, url):
    outcome, created, requests = through_proxy(
        proxied, f"CREATE EXTERNAL TABLE ext.private STORED AS REST LOCATION '{url}'", "private")
    assert not requests, f"the server sent {requests} for {url}"
    assert not outcome.ok and not created, outcome


@pytest.mark.parametrize("kind", ["az", "s3", "gs", "az_emulator_elsewhere"])
def test_blob_tables_do_not_use_the_servers_ambient_identity(proxied, kind):
    """No `[sources] ambient_identity`: a blob LOCATION without explicit credentials must not
    fetch the server's managed identity (IMDS at 169.254.169.254) nor send anything."""
    location, options = {
        "az": ("az://container/", "('azure_storage_account_name' 'hospitalacct')"),
        "s3": ("s3://bucket/", "('aws_region' 'us-east-1')"),
        "gs": ("gs://bucket/", "('google_bucket' 'bucket')"),
        "az_emulator_elsewhere": ("az://container/",
                                  "('azure_storage_account_name' 'devstoreaccount1', "
                                  "'azure_storage_endpoint' 'http://10.0.0.1:10000', "
                                  "'azure_allow_http' 'true')"),
    }[kind]
    outcome, created, requests = through_proxy(
        proxied, f"CREATE EXTERNAL TABLE ext.blob STORED AS BINARYFILE LOCATION '{location}' "
                 f"OPTIONS {options}", "blob")
    imds = [r for r in requests if "169.254.169.254" in r or "metadata" in r.lower()]
    assert not imds, f"the server asked for its own cloud identity: {imds}"
    assert not [r for r in requests if "10.0.0.1" in r], requests
    assert not created, outcome


def path_locations(main):
    landing = main.landing
    return {
        "etc": ("BINARYFILE", "/etc/"),
        "etc_no_slash": ("BINARYFILE", "/etc"),
        "etc_dotted": ("BINARYFILE", "/etc/./"),
        "etc_double_slash": ("BINARYFILE", "//etc/"),
        "proc_environ": ("BINARYFILE", "/proc/self/"),
        "proc_environ_csv": ("CSV", "/proc/self/environ"),
        "warehouse": ("BINARYFILE", f"{main.warehouse}/"),
        "warehouse_table": ("PARQUET", f"{main.warehouse}/bronze/readings/"),
        "tls_folder": ("BINARYFILE", f"{main.tls_dir}/"),
        "tls_key": ("CSV", f"{main.tls_dir}/server.key"),
        "file_url_passwd": ("CSV", "file:///etc/passwd"),
        "file_url_etc": ("BINARYFILE", "file:///etc/"),
        "file_url_percent": ("BINARYFILE", "file:///%65tc/"),
        "file_url_upper": ("BINARYFILE", "FILE:///etc/"),
        "file_url_host": ("BINARYFILE", "file://localhost/etc/"),
        "dotdot": ("BINARYFILE", f"{landing}/../"),
        "dotdot_tls": ("BINARYFILE", f"{landing}/labs/../../tls/"),
        "dotdot_file_url": ("BINARYFILE", f"file://{landing}/../tls/"),
        "symlink_dir": ("BINARYFILE", f"{landing}/etc_link/"),
        "symlink_file_url": ("BINARYFILE", f"file://{landing}/etc_link/"),
        "prefix_sibling": ("PARQUET", f"{landing}-evil/"),
        "relative": ("BINARYFILE", "../"),
        "run_secrets": ("BINARYFILE", "/run/secrets/"),
    }


PATH_PROBES = list(path_locations(type("M", (), {"landing": "/l", "warehouse": "/w",
                                                 "tls_dir": "/t"})))


@pytest.mark.parametrize("probe", PATH_PROBES)
def test_local_paths_outside_allowed_paths_are_refused(main, probe):
    kind, location = path_locations(main)[probe]
    name = "path_probe"
    outcome = etl_try(main, f"CREATE EXTERNAL TABLE bronze.{name} STORED AS {kind} "
                            f"LOCATION '{location}'")
    leaked = ""
    if outcome.ok:
        shown = etl_try(main, f"SELECT * FROM bronze.{name} LIMIT 3", door="psql")
        leaked = shown.message[:400]
    created = drop_if_created(main, "bronze", name)
    assert not outcome.ok and not created, f"{location} accepted; it shows: {leaked!r}"
    assert_no_secret(outcome.message)


def test_symlinked_file_inside_allowed_folder_does_not_expose_its_target(main):
    """landing/csvdir holds ok.csv and passwd.csv -> /etc/passwd: the folder is allowed, the
    file behind the symlink is not."""
    outcome = etl_try(main, f"CREATE EXTERNAL TABLE bronze.csv_link STORED AS CSV "
                            f"LOCATION '{main.landing}/csvdir/' OPTIONS ('has_header' 'true')")
    seen = ""
    if outcome.ok:
        seen = etl_try(main, "SELECT * FROM bronze.csv_link", door="psql").message
    drop_if_created(main, "bronze", "csv_link")
    outcome2 = etl_try(main, f"CREATE EXTERNAL TABLE bronze.bin_link STORED AS BINARYFILE "
                             f"LOCATION '{main.landing}/csvdir/'")
    if outcome2.ok:
        seen += etl_try(main, "SELECT path, CAST(content AS VARCHAR) FROM bronze.bin_link",
                        door="psql").message
    drop_if_created(main, "bronze", "bin_link")
    assert "root:" not in seen, f"/etc/passwd read through a symlink: {seen[:400]!r}"


def test_parquet_inside_allowed_paths_works(main):
    outcome = run_probe(main, "etl", "pg-simple", [
        f"CREATE EXTERNAL TABLE bronze.etl_labs STORED AS PARQUET LOCATION '{main.landing}/labs/'",
    ])
    try:
        assert outcome.ok, outcome
        rows = pg_connect(main, USERS["etl"]).execute(
            "SELECT count(*), sum(result) FROM bronze.etl_labs").fetchall()
        assert rows == [(3, 7.5)]
    finally:
        drop_if_created(main, "bronze", "etl_labs")


def test_a_location_swapped_for_a_symlink_after_create_is_not_read(main):
    """Whoever can drop files into the landing folder (an upload share) swaps an accepted
    folder for a symlink to the TLS folder after CREATE: the checks run again at read. One such
    table must not break the catalog listings of everyone else either."""
    import os
    import shutil
    import pyarrow as pa
    import pyarrow.parquet as pq
    folder = main.landing / "swap"
    folder.mkdir()
    pq.write_table(pa.table({"id": [1]}), folder / "part-0.parquet")
    try:
        outcome = etl_try(main, f"CREATE EXTERNAL TABLE bronze.swapped STORED AS BINARYFILE "
                                f"LOCATION '{folder}/'")
        assert outcome.ok, outcome
        shutil.rmtree(folder)
        os.symlink(main.tls_dir, folder)
        shown = etl_try(main, "SELECT path, CAST(content AS VARCHAR) AS body FROM bronze.swapped",
                        door="psql")
        assert "PRIVATE KEY" not in shown.message and "server.key" not in shown.message, \
            f"the TLS key was read through a swapped folder: {shown.message[:300]!r}"
        for user in ("reader", "admin"):
            listing = run_probe(main, user, "pg-simple",
                                ["SELECT count(*) FROM information_schema.tables", "SHOW TABLES"])
            assert listing.ok, f"one refused external table breaks the catalog for {user}: " \
                               f"{listing!r}"
    finally:
        if folder.is_symlink():
            folder.unlink()
        elif folder.exists():
            shutil.rmtree(folder)
        run_probe(main, "admin", "pg-simple", ["DROP TABLE IF EXISTS bronze.swapped"])
