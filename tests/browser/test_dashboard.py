"""Acceptance: the dashboard in a real browser, against real foreman and stub processes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import expect

from foreman.testing import Process, stub_process
from foreman.upstream_specs import default_name

from .conftest import TIMEOUT_MS, Foreman

pytestmark = pytest.mark.slow

ADMIN = "ops-key-0123456789abcdef"
READER = "reader-key-0123456789abcdef"


def chat(model: str, text: str) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}]}


def submit(client: httpx.Client, model: str, text: str, **extra: Any) -> str:
    r = client.post("/jobs", json={"endpoint": "/api/chat", "body": chat(model, text), **extra})
    assert r.status_code == 202, r.text
    job_id: str = r.json()["id"]
    return job_id


def row(page: Any, job_id: str) -> Any:
    return page.locator(f'#jobs tr[data-job-id="{job_id}"]')


def wait_live(page: Any) -> None:
    expect(page.locator("#conn")).to_have_attribute("data-state", "live")


def test_jobs_go_queued_running_done_with_one_swap_per_model_and_cancel_from_the_page(
    page: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    shoot: Any,
) -> None:
    foreman = make_foreman()
    control = api(stub.url)
    client = api(foreman.url)
    page.goto(f"{foreman.url}/ui")
    wait_live(page)
    expect(page.locator("#who")).to_contain_text("open access")
    expect(page.locator("#running")).to_have_attribute("data-state", "idle")
    shoot(page, "01-empty")

    # the stub holds every answer: the first job runs, the rest wait
    control.post("/_stub/hold").raise_for_status()
    first = submit(client, "llama3", "first", ref="memo-1")
    expect(page.locator("#running")).to_have_attribute("data-state", "working")
    expect(page.locator("#running .model")).to_contain_text("llama3:latest")
    waiting = {
        "mistral-1": submit(client, "mistral", "m1"),
        "llama3-2": submit(client, "llama3", "l2"),
        "mistral-2": submit(client, "mistral", "m2"),
        "mistral-3": submit(client, "mistral", "m3", ref="to-cancel"),
    }
    for job_id in waiting.values():
        expect(row(page, job_id)).to_have_attribute("data-state", "queued")
        expect(row(page, job_id).locator(".state .badge")).to_have_text("queued")
    expect(page.locator('#waiting tr[data-model="mistral:latest"] .count')).to_have_text("3")
    expect(page.locator('#waiting tr[data-model="llama3:latest"] .count')).to_have_text("1")
    expect(page.locator("#resident-chat")).to_contain_text("llama3:latest")
    expect(page.locator("#queued-total .stat-value")).to_have_text("4")
    # without keys everyone is one owner: no per-key table
    expect(page.locator("#owners")).to_be_hidden()
    shoot(page, "02-queued")

    # cancel a queued job from the page; the API agrees
    row(page, waiting["mistral-3"]).locator('button[data-action="cancel"]').click()
    expect(row(page, waiting["mistral-3"])).to_have_attribute("data-state", "cancelled")
    assert client.get(f"/jobs/{waiting['mistral-3']}").json()["state"] == "cancelled"
    expect(page.locator('#waiting tr[data-model="mistral:latest"] .count')).to_have_text("2")
    shoot(page, "03-cancelled-from-page")

    # end the running job: the next job of the resident model runs, with no swap
    assert client.post(f"/jobs/{first}/cancel").json()["state"] == "cancelled"
    expect(row(page, waiting["llama3-2"])).to_have_attribute("data-state", "working")
    expect(page.locator("#running")).to_have_attribute("data-state", "working")
    shoot(page, "04-running")

    control.post("/_stub/release").raise_for_status()
    for name in ("mistral-1", "llama3-2", "mistral-2"):
        expect(row(page, waiting[name])).to_have_attribute("data-state", "done")
        expect(row(page, waiting[name]).locator(".state .badge")).to_have_text("done")
    expect(page.locator("#running")).to_have_attribute("data-state", "idle")
    expect(page.locator("#waiting tr[data-model]")).to_have_count(0)
    # drained by model: one load of each model, in the order they ran
    swaps = page.locator("#swaps .swap")
    expect(swaps).to_have_count(2)
    assert [swaps.nth(i).get_attribute("data-model") for i in range(2)] == [
        "llama3:latest",
        "mistral:latest",
    ]
    expect(page.locator("#swap-list .swap-item")).to_have_count(2)
    # arrival order (llama3, mistral, llama3, mistral of the jobs that ran) loads 4 times
    expect(page.locator("#swaps-avoided .stat-value")).to_have_text("2")
    expect(page.locator("#swaps-avoided .stat-note")).to_contain_text("2 made vs 4")
    shoot(page, "05-done")
    assert [r["state"] for r in client.get("/jobs").json()["jobs"]] == [
        "cancelled",
        "done",
        "done",
        "done",
        "cancelled",
    ]


def test_the_key_is_asked_once_kept_for_the_session_and_never_shown(
    browser: Any,
    page: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    tmp_path: Path,
    shoot: Any,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"ops {ADMIN} admin\nreader {READER} inference\n")
    foreman = make_foreman("--api-keys-file", str(keys))
    page.goto(f"{foreman.url}/ui")
    expect(page.locator("#conn")).to_have_attribute("data-state", "auth")
    expect(page.locator("#key-form")).to_be_visible()
    shoot(page, "01-asks-for-a-key")

    page.fill("#key", "not-a-key-of-this-server")
    page.locator("#key-form button[type=submit]").click()
    expect(page.locator("#key-form")).to_contain_text("not accepted")

    page.fill("#key", READER)
    page.locator("#key-form button[type=submit]").click()
    wait_live(page)
    expect(page.locator("#who")).to_contain_text("reader")
    expect(page.locator("#readonly")).to_be_visible()
    expect(page.locator("#readonly")).to_contain_text("403")
    expect(page.locator("#purge")).to_be_hidden()
    # the key lives in this tab's session storage only, and nowhere on the page
    assert page.evaluate("sessionStorage.getItem('foreman.key')") == READER
    assert page.evaluate("localStorage.length") == 0
    assert READER not in page.content()
    assert page.input_value("#key") == ""
    shoot(page, "02-read-only")

    # a reload keeps the session's key; another session asks again
    page.reload()
    wait_live(page)
    expect(page.locator("#who")).to_contain_text("reader")
    other = browser.new_context()
    try:
        fresh = other.new_page()
        fresh.set_default_timeout(TIMEOUT_MS)
        fresh.goto(f"{foreman.url}/ui")
        expect(fresh.locator("#conn")).to_have_attribute("data-state", "auth")
    finally:
        other.close()


def test_an_action_the_key_may_not_take_shows_403_clearly(
    page: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    tmp_path: Path,
    shoot: Any,
) -> None:
    """The page offered the actions to an admin key; the operator then made that key
    inference-only. The server refuses the cancel and the page says so."""
    keys = tmp_path / "keys"
    keys.write_text(f"ops {ADMIN} admin\n")
    foreman = make_foreman("--api-keys-file", str(keys))
    control = api(stub.url)
    admin = api(foreman.url, ADMIN)
    control.post("/_stub/hold").raise_for_status()
    submit(admin, "llama3", "running")
    queued = submit(admin, "llama3", "queued")

    page.goto(f"{foreman.url}/ui")
    page.fill("#key", ADMIN)
    page.locator("#key-form button[type=submit]").click()
    wait_live(page)
    expect(row(page, queued)).to_have_attribute("data-state", "queued")
    expect(row(page, queued).locator('button[data-action="cancel"]')).to_be_visible()

    keys.write_text(f"ops {ADMIN} inference\n")
    foreman.process.wait_for_output("keys reloaded")  # type: ignore[union-attr]
    row(page, queued).locator('button[data-action="cancel"]').click()
    notice = page.locator("#notice")
    expect(notice).to_contain_text("403")
    expect(notice).to_contain_text("Forbidden")
    assert ADMIN not in page.content()
    shoot(page, "01-forbidden")
    assert api(foreman.url, ADMIN).get("/queue").json()["jobs"][0]["state"] == "queued"
    control.post("/_stub/release").raise_for_status()


def test_a_dropped_stream_is_reported_and_the_page_reconnects(
    page: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    shoot: Any,
) -> None:
    foreman = make_foreman()
    client = api(foreman.url)
    page.goto(f"{foreman.url}/ui")
    wait_live(page)
    job = submit(client, "llama3", "before")
    expect(row(page, job)).to_have_attribute("data-state", "done")

    foreman.stop()
    expect(page.locator("#conn")).to_have_attribute("data-state", "lost")
    expect(page.locator("#conn")).to_contain_text("reconnect")
    shoot(page, "01-stream-lost")

    foreman.start()
    wait_live(page)
    later = submit(api(foreman.url), "mistral", "after")
    expect(row(page, later)).to_have_attribute("data-state", "done")
    expect(row(page, job)).to_have_attribute("data-state", "done")
    shoot(page, "02-reconnected")


def test_the_page_fits_a_phone_and_reads_in_dark_mode(
    browser: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    shoot: Any,
) -> None:
    foreman = make_foreman()
    client = api(foreman.url)
    for i, model in enumerate(["llama3", "mistral", "llama3"]):
        submit(client, model, f"phone {i}", ref=f"note-{i}")
    context = browser.new_context(
        viewport={"width": 390, "height": 844},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        color_scheme="dark",
    )
    try:
        phone = context.new_page()
        phone.set_default_timeout(TIMEOUT_MS)
        phone.goto(f"{foreman.url}/ui")
        wait_live(phone)
        expect(phone.locator("#jobs tr[data-job-id]")).to_have_count(3)
        expect(phone.locator('#jobs tr[data-state="done"]')).to_have_count(3)
        # nothing wider than the screen: the page never scrolls sideways
        width = phone.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, width
        # dark: the background is dark and the text light
        background = phone.evaluate(
            "getComputedStyle(document.body).backgroundColor.match(/\\d+/g).slice(0, 3)"
        )
        text = phone.evaluate("getComputedStyle(document.body).color.match(/\\d+/g).slice(0, 3)")
        assert sum(int(c) for c in background) < 3 * 80, background
        assert sum(int(c) for c in text) > 3 * 160, text
        shoot(phone, "01-phone-dark")
    finally:
        context.close()


def test_an_admin_retries_a_failed_job_and_purges_finished_ones_from_the_page(
    page: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    shoot: Any,
) -> None:
    foreman = make_foreman()
    client = api(foreman.url)
    control = api(stub.url)
    # Ollama refuses the first attempt for good (a 404 is permanent): the job fails
    fault = {"kind": "status", "status": 404, "message": "model 'llama3' not found"}
    control.post("/_stub/faults", json=fault).raise_for_status()
    failed = submit(client, "llama3", "fails once", max_attempts=1)
    page.goto(f"{foreman.url}/ui")
    expect(row(page, failed)).to_have_attribute("data-state", "failed")
    expect(row(page, failed)).to_contain_text("not found")
    shoot(page, "01-failed")

    row(page, failed).locator('button[data-action="retry"]').click()
    expect(row(page, failed)).to_have_attribute("data-state", "done")
    assert client.get(f"/jobs/{failed}").json()["state"] == "done"
    shoot(page, "02-retried")

    # another page watching the same queue
    other = page.context.new_page()
    other.goto(f"{foreman.url}/ui")
    expect(row(other, failed)).to_have_attribute("data-state", "done")

    purge = page.locator("#purge")
    purge.click()
    expect(purge).to_have_attribute("data-confirm", "true")
    purge.click()
    expect(page.locator("#notice")).to_contain_text("Purged 1 finished job")
    expect(page.locator("#jobs tr[data-job-id]")).to_have_count(0)
    assert client.get("/jobs").json()["jobs"] == []
    shoot(page, "03-purged")
    # the other page learns of the purge from its stream (a new snapshot)
    expect(other.locator("#jobs tr[data-job-id]")).to_have_count(0)
    expect(other.locator("#failures .stat-note")).to_contain_text("0 done")
    shoot(other, "04-purged-elsewhere")


def test_two_upstreams_each_show_their_model_slots_running_job_and_swap_lane(
    page: Any, stub: Process, tmp_path: Path, shoot: Any
) -> None:
    second = stub_process(tmp_path / "stub-2.log", "--load-delay", "0.3")
    second.start()
    foreman = Foreman(tmp_path, f"{stub.url},{second.url}")
    names = [default_name(stub.url), default_name(second.url)]
    controls = [httpx.Client(base_url=s.url, timeout=60) for s in (stub, second)]
    client = httpx.Client(base_url=foreman.start(), timeout=60)
    try:
        page.goto(f"{foreman.url}/ui")
        wait_live(page)
        upstreams = page.locator("#upstreams-table tbody tr[data-upstream]")
        expect(upstreams).to_have_count(2)
        assert [upstreams.nth(i).get_attribute("data-upstream") for i in range(2)] == names
        for name in names:
            lane = page.locator(f'#upstreams-table tr[data-upstream="{name}"]')
            expect(lane.locator(".health .pill")).to_have_text("up")
            expect(lane.locator(".slots")).to_have_text("0/1")
        expect(page.locator("#ollama")).to_have_text("Ollama: 2 of 2 upstreams reachable")

        # both stubs hold their answers: each upstream loads one model and runs its job
        for control in controls:
            control.post("/_stub/hold").raise_for_status()
        jobs = {model: submit(client, model, "x") for model in ("llama3", "mistral")}
        expect(page.locator("#running .run")).to_have_count(2)
        expect(page.locator("#running")).to_have_attribute("data-state", "working")
        for name in names:
            lane = page.locator(f'#upstreams-table tr[data-upstream="{name}"]')
            expect(lane.locator(".slots")).to_have_text("1/1")
            expect(page.locator(f'#running .run[data-upstream="{name}"]')).to_have_count(1)
        ran_on = {m: client.get(f"/jobs/{job_id}").json()["upstream"] for m, job_id in jobs.items()}
        assert sorted(ran_on.values()) == sorted(names)
        for model, name in ran_on.items():
            card = page.locator(f'#running .run[data-upstream="{name}"]')
            expect(card.locator(".running-head .model")).to_have_text(f"{model}:latest")
            lane = page.locator(f'#upstreams-table tr[data-upstream="{name}"]')
            expect(lane.locator(".chat .model")).to_have_text(f"{model}:latest")
            expect(row(page, jobs[model]).locator(".upstream")).to_have_text(name)
        shoot(page, "01-two-upstreams-running")

        for control in controls:
            control.post("/_stub/release").raise_for_status()
        for job_id in jobs.values():
            expect(row(page, job_id)).to_have_attribute("data-state", "done")
        expect(page.locator("#running")).to_have_attribute("data-state", "idle")
        # one lane per upstream on the swap timeline, each with its own load
        expect(page.locator("#swap-timeline .swap-lane")).to_have_count(2)
        for model, name in ran_on.items():
            lane = page.locator(f'#swap-timeline .swap-lane[data-upstream="{name}"]')
            expect(lane.locator(".lane-name")).to_have_text(name)
            expect(lane.locator(".swap")).to_have_count(1)
            expect(lane.locator(".swap")).to_have_attribute("data-model", f"{model}:latest")
        expect(page.locator("#swap-list .swap-item")).to_have_count(2)
        shoot(page, "02-two-upstreams-done")
    finally:
        # the page's event stream and the clients' idle connections must not hold
        # foreman's shutdown
        page.context.close()
        for http in (client, *controls):
            http.close()
        foreman.stop()
        second.terminate()


BULK = "bulk-key-0123456789abcdef"
PERSON = "person-key-0123456789abcdef"


def sign_in(page: Any, url: str, key: str) -> None:
    page.goto(f"{url}/ui")
    page.fill("#key", key)
    page.locator("#key-form button[type=submit]").click()
    wait_live(page)


def owner_cells(page: Any, owner: str) -> list[str]:
    cells = page.locator(f'#owners tr[data-owner="{owner}"] td')
    return [cells.nth(i).inner_text() for i in range(4)]


def test_the_per_key_table_shows_each_keys_jobs_and_share_and_a_queued_job_its_place(
    browser: Any,
    page: Any,
    stub: Process,
    make_foreman: Callable[..., Foreman],
    api: Callable[..., httpx.Client],
    tmp_path: Path,
    shoot: Any,
) -> None:
    keys = tmp_path / "keys"
    keys.write_text(
        f"ops {ADMIN} admin\nbulk {BULK} jobs max_queued=50\nperson {PERSON} jobs weight=3\n"
    )
    foreman = make_foreman("--api-keys-file", str(keys))
    control = api(stub.url)
    bulk = api(foreman.url, BULK)
    person = api(foreman.url, PERSON)
    control.post("/_stub/hold").raise_for_status()
    running = submit(bulk, "llama3", "runs")
    for i in range(2):
        submit(bulk, "llama3", f"bulk {i}")
    mine = submit(person, "llama3", "mine")

    sign_in(page, foreman.url, ADMIN)
    expect(page.locator("#owners")).to_be_visible()
    expect(page.locator("#owners tbody tr")).to_have_count(3)
    expect(page.locator('#owners tr[data-owner="bulk"] .queued')).to_have_text("2")
    expect(page.locator('#owners tr[data-owner="bulk"] .running')).to_have_text("1")
    assert owner_cells(page, "bulk") == ["2", "1", "1", "50"]
    assert owner_cells(page, "person") == ["1", "0", "3", "—"]
    assert owner_cells(page, "ops") == ["0", "0", "1", "—"]
    expect(page.locator('#owners tr[data-owner="ops"]')).to_have_attribute("data-idle", "true")
    for key in (ADMIN, BULK, PERSON):
        assert key not in page.content()
    shoot(page, "01-admin-sees-every-key")

    # a key that sees only its own jobs sees only its own row
    other = browser.new_context()
    try:
        theirs = other.new_page()
        theirs.set_default_timeout(TIMEOUT_MS)
        sign_in(theirs, foreman.url, PERSON)
        expect(theirs.locator("#owners tbody tr")).to_have_count(1)
        expect(theirs.locator('#owners tr[data-owner="person"] .queued')).to_have_text("1")
        expect(theirs.locator("#owners-hint")).to_contain_text("Your key")
        shoot(theirs, "02-a-key-sees-its-own-row")
    finally:
        other.close()

    # a queued job's row shows its place in line from the summary the server sends: the
    # person's one job goes after the bulk key's front job (fair turns), and nothing has
    # been measured yet, so there is no estimate
    expect(row(page, mine)).to_have_attribute("data-state", "queued")
    place = row(page, mine).locator(".place")
    expect(place).to_have_attribute("data-position", "1")
    expect(place).to_have_text("1 job ahead")
    # a job's own data, when it carries a place (as the job API's stream does), wins
    rows = {j["id"]: j for j in api(foreman.url, ADMIN).get("/queue").json()["jobs"]}
    client_job = rows[mine]
    soon = page.evaluate("new Date(Date.now() + 90000).toISOString()")
    page.evaluate(
        "([job, at]) => onEvent('job', JSON.stringify({...job, position: 2, estimated_start: at}))",
        [client_job, soon],
    )
    place = row(page, mine).locator(".place")
    expect(place).to_have_attribute("data-position", "2")
    expect(place).to_contain_text("2 jobs ahead")
    expect(place).to_contain_text("starts in ~1 min")
    page.evaluate(
        "(job) => onEvent('job', JSON.stringify({...job, position: 0, estimated_start: null}))",
        client_job,
    )
    expect(place).to_have_text("next in line")
    shoot(page, "03-place-in-line")
    # without one, the summary's place shows again
    page.evaluate("(job) => onEvent('job', JSON.stringify(job))", client_job)
    expect(row(page, mine).locator(".place")).to_have_attribute("data-position", "1")
    # a running job has no place in line, whatever its data says
    expect(row(page, running)).to_have_attribute("data-state", "working")
    page.evaluate("(job) => onEvent('job', JSON.stringify({...job, position: 1}))", rows[running])
    expect(row(page, running).locator(".place")).to_have_count(0)

    control.post("/_stub/release").raise_for_status()
    expect(page.locator('#owners tr[data-owner="bulk"] .queued')).to_have_text("0")
    expect(page.locator('#owners tr[data-owner="bulk"] .running')).to_have_text("0")
    expect(page.locator('#owners tr[data-owner="person"] .queued')).to_have_text("0")
