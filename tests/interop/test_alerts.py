"""Alert rules end to end on `medlake serve`: a rule on a materialized view fires after a
refresh, is posted to a webhook declared in the config (a real HTTP receiver on loopback,
HMAC signature checked here as a receiver would), and reaches an idle psycopg connection
that ran `LISTEN` as a NotificationResponse (`conn.notifies()`)."""

import hashlib
import hmac
import http.server
import json
import threading
import time

import psycopg
import pytest

from helpers import MedlakeServe, free_port

SECRET = "pager signing key"
ADMIN = ("ada", "ada's long password")
NURSE = ("nina", "nina's long password")


class Receiver(http.server.BaseHTTPRequestHandler):
    """Records each POST (headers and body) and answers 204."""

    received = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"])).decode()
        Receiver.received.append((dict(self.headers), body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("alerts")
    hook_port = free_port()
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", hook_port), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    config = root / "medlake.toml"
    config.write_text(f"""
[[users]]
name = "ada"
password_env = "TEST_ADA_PASSWORD"
role = "admin"

[[users]]
name = "nina"
password_env = "TEST_NINA_PASSWORD"
role = "none"

[secrets]
PAGER_KEY = {{ env = "TEST_PAGER_KEY" }}

[sources]
allowed_hosts = ["127.0.0.1"]

[[webhooks]]
name = "pager"
url = "http://127.0.0.1:{hook_port}/medlake"
secret = "PAGER_KEY"

[alerts]
console_url = "https://medlake.test"
""")
    serve = MedlakeServe(root, ["--warehouse", str(root / "warehouse"), "--config", str(config),
                                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         {"TEST_ADA_PASSWORD": ADMIN[1], "TEST_NINA_PASSWORD": NURSE[1],
                          "TEST_PAGER_KEY": SECRET}, "postgres on")
    try:
        yield {"port": serve.port("postgres"), "log": serve.log_path}
    finally:
        serve.stop()
        receiver.shutdown()


def connect(server, user):
    return psycopg.connect(host="127.0.0.1", port=server["port"], dbname="medlake", user=user[0],
                           password=user[1], sslmode="disable", autocommit=True)


def test_a_firing_reaches_the_webhook_signed_and_an_idle_listener(server):
    with connect(server, ADMIN) as ada, connect(server, ADMIN) as listener, \
            connect(server, NURSE) as nina:
        ada.execute("CREATE TABLE bronze.obs (patient_id VARCHAR NOT NULL, score INT NOT NULL)")
        ada.execute("""CREATE MATERIALIZED VIEW gold.news AS SELECT patient_id, score,
                         CASE WHEN score >= 7 THEN 'high' ELSE 'low' END AS risk FROM bronze.obs""")
        ada.execute("""CREATE ALERT news_high ON gold.news WHEN risk = 'high' KEY (patient_id)
                         SEVERITY risk NOTIFY 'pager', 'postgres'""")
        with pytest.raises(psycopg.errors.UndefinedObject):
            ada.execute("CREATE ALERT x ON gold.news WHEN risk = 'high' NOTIFY 'nowhere'")
        listener.execute("LISTEN news_high")
        # A nurse without SELECT on the view listens too, and hears nothing.
        nina.execute("LISTEN news_high")

        ada.execute("INSERT INTO bronze.obs VALUES ('p-7', 9), ('p-8', 2)")
        ada.execute("REFRESH MATERIALIZED VIEW gold.news")

        heard = list(listener.notifies(timeout=20, stop_after=1))
        assert len(heard) == 1, "the idle listener got the firing"
        assert heard[0].channel == "news_high"
        payload = json.loads(heard[0].payload)
        assert payload["severity"] == "high"
        assert payload["key"] == {"patient_id": "p-7"}
        assert payload["link"].startswith("https://medlake.test/console/alerts/")
        assert list(nina.notifies(timeout=2, stop_after=1)) == []

        deadline = time.time() + 20
        while not Receiver.received and time.time() < deadline:
            time.sleep(0.1)
        assert len(Receiver.received) == 1
        headers, body = Receiver.received[0]
        signature = dict(part.split("=", 1) for part in headers["x-medlake-signature"].split(","))
        expected = hmac.new(SECRET.encode(), f"{signature['t']}.{body}".encode(),
                            hashlib.sha256).hexdigest()
        assert hmac.compare_digest(signature["v1"], expected)
        assert json.loads(body)["key"] == {"patient_id": "p-7"}
        assert "p-8" not in body

        rows = ada.execute("""SELECT target, status, attempts FROM system.alerts
                              WHERE alert = 'news_high' ORDER BY target""").fetchall()
        assert rows == [("pager", "delivered", 1), ("postgres", "delivered", 1)]
        ada.execute("ACKNOWLEDGE ALERT news_high")
        (acked,) = ada.execute("""SELECT DISTINCT acknowledged_by FROM system.alerts
                                  WHERE alert = 'news_high'""").fetchone()
        assert acked == "ada"
    assert SECRET not in server["log"].read_text()
