"""The operator console (`/console` on the HTTP door of `medlake serve`) in a real headless
Chromium (Debian's chromium and chromium-driver, driven by Selenium): the login form, the
panels, a failed refresh turning its view red within a poll, an alert appearing, logout, and
a user without grants seeing nothing. Saves a screenshot to docs/console.png."""

import pathlib
import shutil
import time

import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from helpers import MedlakeServe

ADMIN = ("ada", "ada's long password")
NURSE = ("nina", "nina's long password")
POLL_SECONDS = 3  # CONSOLE.pollMs in crates/http/src/console/assets/app.js
RED = "rgb(214, 69, 65)"  # --failed in app.css
GREEN = "rgb(46, 158, 91)"  # --fresh
SCREENSHOT = pathlib.Path(__file__).resolve().parents[2] / "docs" / "console.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("console")
    config = root / "medlake.toml"
    config.write_text("""
[[users]]
name = "ada"
password_env = "TEST_ADA_PASSWORD"
role = "admin"

[[users]]
name = "nina"
password_env = "TEST_NINA_PASSWORD"
role = "none"
""")
    serve = MedlakeServe(root, ["--warehouse", str(root / "warehouse"), "--config", str(config),
                                "--pg", "127.0.0.1:0", "--flight", "127.0.0.1:0", "--http", "127.0.0.1:0"],
                         {"TEST_ADA_PASSWORD": ADMIN[1], "TEST_NINA_PASSWORD": NURSE[1]}, "http on")
    try:
        yield {"pg": serve.port("postgres"), "http": serve.port("http"), "log": serve.log_path}
    finally:
        serve.stop()


def connect(server, user):
    return psycopg.connect(host="127.0.0.1", port=server["pg"], dbname="medlake", user=user[0],
                           password=user[1], sslmode="disable", autocommit=True)


def setup_warehouse(ada):
    """A small pipeline: a checked view that can fail, a quarantining view, a NEWS2-like view
    with an alert rule, and the ward board's gold.news2_hourly."""
    for sql in [
        "CREATE TABLE bronze.counts (n INT NOT NULL)",
        "INSERT INTO bronze.counts VALUES (0)",
        """CREATE MATERIALIZED VIEW silver.checked
             CONSTRAINT below_one EXPECT (n < 1) ON VIOLATION FAIL UPDATE
           AS SELECT n FROM bronze.counts""",
        "CREATE MATERIALIZED VIEW gold.checked_total AS SELECT sum(n) AS total FROM silver.checked",
        """CREATE TABLE bronze.vitals (patient_id VARCHAR NOT NULL, metric VARCHAR NOT NULL,
             value DOUBLE NOT NULL, taken_at TIMESTAMP NOT NULL)""",
        """INSERT INTO bronze.vitals VALUES
             ('p-1', 'heart_rate', 72, TIMESTAMP '2026-11-23 08:10:00'),
             ('p-1', 'heart_rate', 5000, TIMESTAMP '2026-11-23 08:20:00'),
             ('p-2', 'heart_rate', 118, TIMESTAMP '2026-11-23 08:15:00')""",
        """CREATE MATERIALIZED VIEW silver.vitals
             CONSTRAINT plausible EXPECT (value BETWEEN 20 AND 300) ON VIOLATION QUARANTINE
           AS SELECT patient_id, metric, value, taken_at FROM bronze.vitals""",
        """CREATE TABLE bronze.scores (patient_id VARCHAR NOT NULL, hour TIMESTAMP NOT NULL,
             ward VARCHAR, bed VARCHAR, news2 INT)""",
        """INSERT INTO bronze.scores VALUES
             ('p-1', TIMESTAMP '2026-11-23 07:00:00', 'Ward 3', 'B1', 1),
             ('p-1', TIMESTAMP '2026-11-23 08:00:00', 'Ward 3', 'B1', 2),
             ('p-2', TIMESTAMP '2026-11-23 07:00:00', 'Ward 3', 'B2', 3),
             ('p-2', TIMESTAMP '2026-11-23 08:00:00', 'Ward 3', 'B2', 6),
             ('p-3', TIMESTAMP '2026-11-23 08:00:00', 'ICU', 'I4', 4)""",
        """CREATE MATERIALIZED VIEW gold.news2_hourly AS
           SELECT s.patient_id, s.hour, s.ward, s.bed, s.news2,
                  CASE WHEN s.news2 >= 7 THEN 'high' WHEN s.news2 >= 5 THEN 'medium' ELSE 'low' END AS risk
           FROM bronze.scores AS s""",
        """CREATE ALERT news2_high ON gold.news2_hourly WHEN risk = 'high' KEY (patient_id, hour)
             SEVERITY risk NOTIFY 'postgres'""",
    ]:
        ada.execute(sql)


@pytest.fixture(scope="module")
def browser():
    for tool in ("chromium", "chromedriver"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is not installed (Debian packages chromium and chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--window-size=1400,1050", "--force-device-scale-factor=1"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")),
                              options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, seconds, what):
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(lambda d: condition(d))
    except TimeoutException:
        pytest.fail(f"{what} within {seconds} s; page:\n{driver.find_element(By.TAG_NAME, 'body').text}")


def node(driver, name):
    found = driver.find_elements(By.CSS_SELECTOR, f'#dag g[data-node="{name}"]')
    return found[0] if found else None


def fill(driver, name):
    rect = node(driver, name).find_element(By.TAG_NAME, "rect")
    return driver.execute_script("return getComputedStyle(arguments[0]).fill", rect)


def polls(driver):
    return int(driver.find_element(By.TAG_NAME, "body").get_attribute("data-polls") or 0)


def log_in(driver, base, user):
    driver.get(f"{base}/console")
    wait(driver, lambda d: d.current_url.endswith("/console/login"), 10, "redirected to the login page")
    driver.find_element(By.ID, "username").send_keys(user[0])
    driver.find_element(By.ID, "password").send_keys(user[1])
    driver.find_element(By.ID, "submit").click()


def test_console_shows_the_pipeline_a_failure_and_an_alert(server, browser):
    base = f"http://127.0.0.1:{server['http']}"
    with connect(server, ADMIN) as ada:
        setup_warehouse(ada)

        # A wrong password: the form again, with an error, and no session.
        log_in(browser, base, (ADMIN[0], "not the password"))
        wait(browser, lambda d: "Login failed" in d.page_source, 10, "the login error")
        assert browser.get_cookies() == []

        log_in(browser, base, ADMIN)
        wait(browser, lambda d: d.current_url.endswith("/console") and polls(d) >= 1, 15, "the console")
        cookie = {c["name"]: c for c in browser.get_cookies()}["medlake_console"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
        assert browser.find_element(By.ID, "user").text == ADMIN[0]

        # The DAG: views and their inputs, edges, colours by status.
        for name in ("silver.checked", "gold.checked_total", "silver.vitals", "gold.news2_hourly",
                     "bronze.counts"):
            assert node(browser, name) is not None, name
        assert node(browser, "silver.checked").get_attribute("data-state") == "fresh"
        assert fill(browser, "silver.checked") == GREEN
        assert node(browser, "bronze.counts").get_attribute("data-state") == "table"
        assert len(browser.find_elements(By.CSS_SELECTOR, "#dag path.edge")) >= 4
        # The timeline, the quarantine counts and samples, the ward board.
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.mark")) >= 4
        quarantine = browser.find_element(By.ID, "quarantine").text
        assert "plausible" in quarantine and "silver.vitals_quarantine" in quarantine
        assert "5000" in quarantine
        ward = browser.find_element(By.ID, "ward-panel")
        assert ward.is_displayed()
        assert "Ward 3" in ward.text and "ICU" in ward.text
        p2 = [r.text for r in ward.find_elements(By.CSS_SELECTOR, "tr") if "p-2" in r.text]
        assert len(p2) == 1 and "medium" in p2[0] and "up" in p2[0], p2
        # Source health is shown exactly when the server has system.sources.
        try:
            ada.execute("SELECT count(*) FROM system.sources").fetchone()
            has_sources = True
        except psycopg.errors.UndefinedTable:
            has_sources = False
        assert browser.find_element(By.ID, "sources-panel").is_displayed() == has_sources

        # A refresh that fails turns its node red within a poll.
        ada.execute("INSERT INTO bronze.counts VALUES (5)")
        with pytest.raises(psycopg.errors.CheckViolation):
            ada.execute("REFRESH MATERIALIZED VIEW silver.checked")
        failed_at = polls(browser)
        wait(browser, lambda d: node(d, "silver.checked").get_attribute("data-state") == "failed",
             2 * POLL_SECONDS + 5, "the failed view turned red")
        assert polls(browser) - failed_at <= 2, "red within a poll"
        assert fill(browser, "silver.checked") == RED
        assert len(browser.find_elements(By.CSS_SELECTOR, "#timeline rect.mark.failed")) >= 1

        # A high NEWS2 fires the alert rule; the firing appears in the alerts panel.
        ada.execute("""INSERT INTO bronze.scores VALUES
                         ('p-2', TIMESTAMP '2026-11-23 09:00:00', 'Ward 3', 'B2', 9)""")
        ada.execute("REFRESH MATERIALIZED VIEW gold.news2_hourly")
        wait(browser, lambda d: "news2_high" in d.find_element(By.ID, "alerts").text,
             2 * POLL_SECONDS + 15, "the alert in the alerts panel")
        alerts = browser.find_element(By.ID, "alerts").text
        assert "gold.news2_hourly" in alerts and "high" in alerts
        wait(browser, lambda d: "▲ up" in d.find_element(By.ID, "ward").text and
             "high" in d.find_element(By.ID, "ward").text, 2 * POLL_SECONDS + 5, "p-2's new score")

        SCREENSHOT.parent.mkdir(exist_ok=True)
        browser.save_screenshot(str(SCREENSHOT))
        assert SCREENSHOT.stat().st_size > 10_000

        # Logout (its CSRF token sent by the page) ends the session.
        browser.find_element(By.ID, "logout").click()
        wait(browser, lambda d: d.current_url.endswith("/console/login"), 10, "back at the login page")
        browser.get(f"{base}/console")
        wait(browser, lambda d: d.current_url.endswith("/console/login"), 10, "the shell needs a login")


def test_a_user_without_grants_sees_empty_panels(server, browser):
    base = f"http://127.0.0.1:{server['http']}"
    log_in(browser, base, NURSE)
    wait(browser, lambda d: d.current_url.endswith("/console") and polls(d) >= 1, 15, "the console")
    assert browser.find_elements(By.CSS_SELECTOR, "#dag g.node") == []
    assert "not granted" in browser.find_element(By.ID, "dag").text
    assert "news2_high" not in browser.find_element(By.ID, "alerts").text
    assert "5000" not in browser.find_element(By.ID, "quarantine").text
    browser.find_element(By.ID, "logout").click()
    wait(browser, lambda d: d.current_url.endswith("/console/login"), 10, "logged out")
