"""The web console in a real headless Chromium against the service on Postgres and the real tiny teacher:
sign-in, live job list, the job page, the completion viewer, cancel, another project's view, /docs offline,
datasets and teachers; no console errors on any page, a screenshot of each."""

from __future__ import annotations

import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from app.ui import sessions
from tests.conftest import Service
from tests.helpers import submit, wait_done

pytestmark = [pytest.mark.vllm, pytest.mark.parametrize("service", ["postgres"], indirect=True)]

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "viewer.png"
PROMPTS = [{"prompt": f"def f{i}(x):\n    return", "custom_id": f"p{i}"} for i in range(24)]


def wait_for(check: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def console_errors(browser: Any) -> list[str]:
    """Severe browser console entries since the last call (the log is drained on read)."""
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def visit(browser: Any, url: str, artifacts: Path, name: str) -> None:
    console_errors(browser)  # drain what earlier pages logged
    browser.get(url)
    wait_for(lambda: browser.execute_script("return document.readyState") == "complete", what=f"{name} loaded")
    time.sleep(0.3)  # scripts run their first paint
    browser.save_screenshot(str(artifacts / f"{name}.png"))
    errors = console_errors(browser)
    assert not errors, f"console errors on {name}: {errors}"
    unlabelled = browser.execute_script(UNLABELLED_CONTROLS)
    assert not unlabelled, f"form controls without a label on {name}: {unlabelled}"


# Visible form controls with no accessible name: no <label for>, no wrapping <label>, no aria-label(ledby).
UNLABELLED_CONTROLS = """
return [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
  .filter(el => !(el.labels && el.labels.length))
  .filter(el => !el.getAttribute('aria-label') && !el.getAttribute('aria-labelledby'))
  .map(el => el.outerHTML);
"""


def sign_in(browser: Any, service: Service, key: str) -> None:
    from selenium.webdriver.common.by import By

    console_errors(browser)  # drain what earlier pages logged
    browser.delete_all_cookies()
    browser.get(f"{service.url}/ui/jobs")
    wait_for(lambda: urlsplit(browser.current_url).path == "/ui/sign-in", what="redirect to sign-in")
    browser.find_element(By.ID, "api_key").send_keys(key)
    browser.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    wait_for(lambda: urlsplit(browser.current_url).path == "/ui/jobs", what="the jobs page after sign-in")
    errors = console_errors(browser)
    assert not errors, f"console errors while signing in: {errors}"


@pytest.fixture(scope="module")
def done_job(service: Service) -> Iterator[dict[str, Any]]:
    with service.client() as api:
        job = submit(api, PROMPTS[:6], max_tokens=24, top_logprobs=5, seed=7)
        yield wait_done(api, job["id"])


def test_sign_in_page_is_labelled_and_refuses_a_wrong_key(browser: Any, service: Service, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    browser.delete_all_cookies()
    visit(browser, f"{service.url}/ui/jobs", artifacts, "sign-in")
    assert urlsplit(browser.current_url).path == "/ui/sign-in"
    key_input = browser.find_element(By.ID, "api_key")
    assert browser.find_element(By.CSS_SELECTOR, "label[for=api_key]").text == "API key"
    key_input.send_keys("dk_000000000000_wrong")
    browser.find_element(By.CSS_SELECTOR, "form.signin button[type=submit]").click()
    alert = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "[role=alert]"), what="the error")
    assert "unknown or revoked" in alert[0].text
    names = {c["name"] for c in browser.get_cookies()}
    assert sessions.COOKIE not in names, "a refused key must not leave a session"


def test_the_session_cookie_is_httponly_strict_and_holds_no_key(browser: Any, service: Service) -> None:
    sign_in(browser, service, service.api_key)
    (cookie,) = browser.get_cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert service.api_key.split("_")[2] not in cookie["value"]
    assert browser.execute_script("return document.cookie") == ""


def test_a_submitted_job_reaches_100_percent_in_the_list_without_a_reload(
    browser: Any, service: Service, artifacts: Path
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, service, service.api_key)
    visit(browser, f"{service.url}/ui/jobs", artifacts, "jobs-before")
    browser.execute_script("window.__notReloaded = true")
    with service.client() as api:
        # Long enough (~10k tokens) to be seen running: the idle list polls every 2 s.
        job = submit(api, [{"prompt": f"import m{i}\n"} for i in range(160)], max_tokens=64, top_logprobs=20)
    row_css = f"tr[data-job-id='{job['id']}']"
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row_css), timeout=30, what="the new job's row")
    seen: set[str] = set()

    def finished() -> bool:
        # Read in one script: the rows are replaced under us every second.
        state = browser.execute_script(
            "const r = document.querySelector(arguments[0]);"
            "return r ? [r.dataset.status, r.querySelector('.pct').dataset.pct] : null;",
            row_css,
        )
        if state is None:
            return False
        seen.add(state[0])
        return state[0] == "completed" and float(state[1]) == 100.0

    wait_for(finished, timeout=120, what="the job at 100% in the list")
    assert browser.execute_script("return window.__notReloaded === true"), "the page was reloaded"
    assert seen & {"queued", "running"}, f"the row was never live: {seen}"
    browser.save_screenshot(str(artifacts / "jobs.png"))
    assert not console_errors(browser)
    # The filters: by status and by teacher.
    browser.get(f"{service.url}/ui/jobs?status=running")
    assert not browser.find_elements(By.CSS_SELECTOR, row_css)
    browser.get(f"{service.url}/ui/jobs?status=completed&teacher=tiny")
    assert browser.find_elements(By.CSS_SELECTOR, row_css)
    browser.get(f"{service.url}/ui/jobs?teacher=another")
    assert not browser.find_elements(By.CSS_SELECTOR, row_css)


def test_the_job_page_shows_counts_lineage_and_records(
    browser: Any, service: Service, artifacts: Path, done_job: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, service, service.api_key)
    visit(browser, f"{service.url}/ui/jobs/{done_job['id']}", artifacts, "job")
    text = browser.find_element(By.TAG_NAME, "main").text
    assert done_job["teacher_info"]["tokenizer_fingerprint"] in text
    assert len(browser.find_elements(By.CSS_SELECTOR, "a.record-link")) == 6
    links = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "a[download]")]
    assert any(link.endswith("format=parquet") for link in links)
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    export = httpx.get(links[0], cookies=cookies, timeout=60)
    assert export.status_code == 200 and export.content[:4] == b"PAR1"
    assert export.headers["x-distillery-job-status"] == "completed"


def test_the_viewer_shows_each_token_and_its_stored_top_k(
    browser: Any, service: Service, artifacts: Path, done_job: dict[str, Any]
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    with service.client() as api:
        record = api.get(f"/v1/jobs/{done_job['id']}/records", params={"limit": 1}).json()["records"][0]
    sign_in(browser, service, service.api_key)
    url = f"{service.url}/ui/jobs/{done_job['id']}/records/{record['item_id']}/{record['sample_index']}"
    visit(browser, url, artifacts, "viewer-plain")
    tokens = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert len(tokens) == len(record["token_ids"])
    assert not browser.find_elements(By.CSS_SELECTOR, ".warning"), "token strings should come from the teacher"
    # The strings are the teacher's: together they spell the stored text.
    assert "".join(t.get_attribute("textContent") for t in tokens) == record["text"]

    position = min(3, len(tokens) - 1)
    ActionChains(browser).move_to_element(tokens[position]).perform()
    wait_for(lambda: browser.find_element(By.ID, "tip").is_displayed(), what="the tooltip")
    shown = browser.find_elements(By.CSS_SELECTOR, "#tip li.cand")
    pairs = zip(record["top_logprobs_ids"][position], record["top_logprobs"][position], strict=True)
    stored = [(i, lp) for i, lp in pairs if i >= 0]
    assert len(shown) == len(stored) == 5
    for li, (token_id, logprob) in zip(shown, stored, strict=True):
        assert int(li.get_attribute("data-id")) == token_id
        assert float(li.get_attribute("data-p")) == pytest.approx(math.exp(logprob), abs=1e-6)
    sampled = browser.find_elements(By.CSS_SELECTOR, "#tip li.sampled")
    in_topk = record["token_ids"][position] in [i for i, _ in stored]
    assert len(sampled) == (1 if in_topk else 0)
    if DOCS_SCREENSHOT_WANTED:
        browser.save_screenshot(str(artifacts / "viewer.png"))
        shutil.copyfile(artifacts / "viewer.png", DOCS_SCREENSHOT)
    browser.save_screenshot(str(artifacts / "viewer.png"))

    # Keyboard: focus moves token to token with the arrow keys, and the tooltip follows.
    tokens[0].click()
    browser.switch_to.active_element.send_keys(Keys.ARROW_RIGHT)
    assert browser.switch_to.active_element.get_attribute("data-i") == "1"
    assert browser.find_element(By.CSS_SELECTOR, "#tip div").text.startswith("token 1:")

    # Shading by entropy: each token's confidence is 1 - H(top-k + tail) / ln(k + 1), from the stored logprobs.
    browser.find_element(By.CSS_SELECTOR, "input[name=shade][value=entropy]").click()
    shown_conf = float(tokens[position].get_attribute("data-confidence"))
    probs_k = [math.exp(lp) for _, lp in stored]
    tail = max(0.0, 1 - sum(probs_k))
    entropy = -sum(p * math.log(p) for p in [*probs_k, tail] if p > 0)
    assert shown_conf == pytest.approx(1 - entropy / math.log(len(stored) + 1), abs=1e-3)
    browser.find_element(By.CSS_SELECTOR, "input[name=shade][value=prob]").click()

    # At temperature T the top-k are re-softmaxed: they sum to 1 and follow softmax(logprob / T).
    browser.find_element(By.CSS_SELECTOR, "input[name=dist][value=temp]").click()
    browser.switch_to.active_element.send_keys(Keys.TAB)  # leave the radio; show position 1 again
    ActionChains(browser).move_to_element(tokens[1]).perform()
    probs = [float(li.get_attribute("data-p")) for li in browser.find_elements(By.CSS_SELECTOR, "#tip li.cand")]
    lps = [lp for i, lp in zip(record["top_logprobs_ids"][1], record["top_logprobs"][1], strict=True) if i >= 0]
    expected = [math.exp(lp / 2) for lp in lps]
    assert probs == pytest.approx([e / sum(expected) for e in expected], abs=1e-6)
    assert not console_errors(browser)


def test_the_viewer_shows_a_scored_response_token_by_token(browser: Any, service: Service, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    body = {
        "teacher": "tiny",
        "kind": "score",
        "params": {"top_logprobs": 3},
        "prompts": [{"prompt": "def add(a, b):\n", "response": "    return a + b\n"}],
    }
    with service.client() as api:
        created = api.post("/v1/jobs", json=body)
        assert created.status_code == 201, created.text
        job = wait_done(api, created.json()["id"])
        record = api.get(f"/v1/jobs/{job['id']}/records").json()["records"][0]
    sign_in(browser, service, service.api_key)
    url = f"{service.url}/ui/jobs/{job['id']}/records/{record['item_id']}/{record['sample_index']}"
    visit(browser, url, artifacts, "viewer-score")
    assert browser.find_element(By.ID, "h-output").text.startswith("Scored response")
    tokens = browser.find_elements(By.CSS_SELECTOR, "#tokens .tok")
    assert len(tokens) == len(record["token_ids"]) > 0
    assert "".join(t.get_attribute("textContent") for t in tokens) == "    return a + b\n"


def test_the_shading_scale_keeps_the_text_readable(browser: Any, service: Service, done_job: dict[str, Any]) -> None:
    """Contrast (WCAG) of the token text on the darkest and the lightest shade is at least 4.5:1."""
    from selenium.webdriver.common.by import By

    sign_in(browser, service, service.api_key)
    with service.client() as api:
        record = api.get(f"/v1/jobs/{done_job['id']}/records", params={"limit": 1}).json()["records"][0]
    browser.get(f"{service.url}/ui/jobs/{done_job['id']}/records/{record['item_id']}/{record['sample_index']}")
    swatches = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#scale span"), what="the scale")
    text = browser.execute_script("return getComputedStyle(document.querySelector('.tok')).color")
    for swatch in (swatches[0], swatches[-1]):
        background = swatch.value_of_css_property("background-color")
        assert contrast(text, background) >= 4.5, (text, background)


def test_cancel_from_the_job_page_stops_the_job(browser: Any, service: Service, artifacts: Path) -> None:
    from selenium.webdriver.common.by import By

    with service.client() as api:
        many = [{"prompt": f"class C{i}:\n"} for i in range(400)]
        job = submit(api, many, max_tokens=128, top_logprobs=20)
        sign_in(browser, service, service.api_key)
        visit(browser, f"{service.url}/ui/jobs/{job['id']}", artifacts, "job-running")
        browser.find_element(By.ID, "cancel-job").click()
        wait_for(lambda: api.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled", what="cancelled")
        final = wait_done(api, job["id"], timeout=60)
    assert final["counts"]["cancelled"] > 0
    assert final["counts"]["done"] < len(many)


def test_a_form_without_the_csrf_token_changes_nothing(service: Service) -> None:
    with service.client() as api:
        job = submit(api, PROMPTS[:2], max_tokens=4, top_logprobs=1)
        with httpx.Client(base_url=service.url, timeout=30) as web:
            forged = web.post("/ui/sign-in", data={"api_key": service.api_key, "csrf": "forged"})
            assert forged.status_code == 403 and sessions.COOKIE not in web.cookies  # a cross-site sign-in
            form = web.get("/ui/sign-in")
            token = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert token is not None
            signed = web.post("/ui/sign-in", data={"api_key": service.api_key, "csrf": token[1], "next": "/ui/jobs"})
            assert signed.status_code == 303
            refused = web.post(f"/ui/jobs/{job['id']}/cancel", data={"csrf": "forged"})
            assert refused.status_code == 403
        assert api.get(f"/v1/jobs/{job['id']}").json()["status"] != "cancelled"
        wait_done(api, job["id"])


def test_another_project_sees_neither_the_job_nor_its_records(
    browser: Any, service: Service, artifacts: Path, done_job: dict[str, Any]
) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, service, service.other_key)
    assert done_job["id"] not in browser.page_source
    browser.get(f"{service.url}/ui/jobs/{done_job['id']}")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("404")
    browser.save_screenshot(str(artifacts / "other-project-404.png"))
    with service.client() as api:
        record = api.get(f"/v1/jobs/{done_job['id']}/records", params={"limit": 1}).json()["records"][0]
    browser.get(f"{service.url}/ui/jobs/{done_job['id']}/records/{record['item_id']}/{record['sample_index']}")
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("404")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    export = httpx.get(f"{service.url}/ui/jobs/{done_job['id']}/export", cookies=cookies, timeout=30)
    assert export.status_code == 404
    console_errors(browser)  # the 404 document itself is logged as a failed load; that is the point here


def test_signing_out_ends_the_session(browser: Any, service: Service) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, service, service.api_key)
    browser.find_element(By.CSS_SELECTOR, "form.signout button").click()
    wait_for(lambda: urlsplit(browser.current_url).path == "/ui/sign-in", what="the sign-in page")
    browser.get(f"{service.url}/ui/jobs")
    assert urlsplit(browser.current_url).path == "/ui/sign-in"


def test_teachers_and_datasets_pages(browser: Any, service: Service, artifacts: Path, done_job: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, service, service.api_key)
    visit(browser, f"{service.url}/ui/teachers", artifacts, "teachers")
    assert done_job["teacher_info"]["tokenizer_fingerprint"] in browser.page_source
    assert "in rotation" in browser.find_element(By.TAG_NAME, "main").text
    visit(browser, f"{service.url}/ui/datasets", artifacts, "datasets")
    browser.find_element(By.ID, "ds-name").send_keys("from-the-console")
    browser.find_element(By.CSS_SELECTOR, f"input[name=jobs][value='{done_job['id']}']").click()
    browser.find_element(By.CSS_SELECTOR, "form.build button[type=submit]").click()
    wait_for(lambda: re.search(r"/ui/datasets/[0-9a-f-]{36}$", browser.current_url), what="the dataset page")
    assert "ready" in browser.find_element(By.TAG_NAME, "main").text
    assert '"distillery.dataset"' in browser.find_element(By.CSS_SELECTOR, "pre.manifest").text
    browser.save_screenshot(str(artifacts / "dataset.png"))
    assert not console_errors(browser)


def test_api_docs_render_offline(browser: Any, service: Service, artifacts: Path) -> None:
    """Swagger UI comes from the app itself: every resource the page loads is same-origin."""
    from selenium.webdriver.common.by import By

    browser.get(f"{service.url}/docs")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title"), what="Swagger UI")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, ".opblock"), what="the operations")
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(service.url) for r in resources), resources
    browser.save_screenshot(str(artifacts / "docs.png"))
    assert not console_errors(browser)


def _luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"\d+(?:\.\d+)?", css)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


DOCS_SCREENSHOT_WANTED = os.environ.get("DISTILLERY_UPDATE_SCREENSHOT") == "1"
