"""The explorer page in a real headless Chromium (Selenium), against the real explorer server over
stage folders shaped like the stages' own output: dataset list, filters, the record view (KaTeX,
highlighted code, hostile text), lineage links, eval comparison, error groups and error messages.

One server and one browser per module; every wait is explicit (WebDriverWait), none is a sleep."""
from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

WAIT_S = 15  # generous: the server indexes on first use, on a loaded 2-core machine


# ---------- a few hand-made folders for what the demo run never writes ----------

def write_stage(folder: Path, stage: str, parts: dict[str, list]) -> None:
    """A complete stage output: manifest.json plus the named JSONL files (a str row is written as is,
    to make an unreadable line)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps(
        {"stage": stage, "config": {}, "inputs": [], "num_shards": 1, "shards_done": [0], "complete": True,
         "counts": {"records": sum(len(rows) for rows in parts.values())}}), encoding="utf-8")
    for name, rows in parts.items():
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        (folder / name).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


HOSTILE = ('<script>window.__pwned = 1; alert("xss")</script>'
           '<img src="x" onerror="window.__pwned = 2">hostile completion')


def synth_row(n: int, **extra) -> dict:
    """A synth filter record as the stage writes it (kept, or with a reject_reason)."""
    row = {"id": f"s{n}", "item_key": f"sk{n}", "source_id": f"hand:{n}", "stage": "middle_school", "variant": "cot",
           "prompt_id": "p1", "sample_index": 0, "completion": f"Problem {n}: what is $2+{n}$?", "finish_reason": "stop",
           "model": "synthesizer", "problem": f"A class has {n} pupils. What is $\\frac{{{n}}}{{2}}$ of them?",
           "solution": f"Half of them: $$\\frac{{{n}}}{{2}} = {n / 2}$$\n```python\nprint({n} / 2)\n```\n"
                       f"The answer is \\boxed{{{n / 2}}}.",
           "final_answer": str(n / 2), "code": None, "parse_error": None, "text": None}
    return {**row, **extra}


def build_extras(root: Path) -> Path:
    """hand-filter: one kept record (LaTeX and a code fence), a hostile reject and an unreadable line;
    notes/: a folder that is not a stage output."""
    write_stage(root / "hand-filter", "synth_filter", {
        "part-00000-of-00001.jsonl": [synth_row(4)],
        "rejects-00000-of-00001.jsonl": [
            synth_row(5, completion=HOSTILE, problem=HOSTILE, reject_reason="no_solution", filter_details={}),
            '{"id": "cut off mid-line']})
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a stage output", encoding="utf-8")
    return root


# ---------- server and browser ----------

@pytest.fixture(scope="module")
def explorer(explored_run, tmp_path_factory):
    """The explorer server over the demo's stage folders (with eval-b), the hand-made filter output
    and a folder that is not a stage output: its URL."""
    try:
        from pipeline.explorer.server import start_server
    except ImportError as err:
        pytest.skip(f"the explorer server cannot be imported: {err}")
    extras = build_extras(tmp_path_factory.mktemp("explore-extras"))
    server, url = start_server([str(explored_run), str(extras / "hand-filter"), str(extras / "notes")])
    yield url
    server.shutdown()


@pytest.fixture(scope="module")
def driver():
    chromedriver = shutil.which("chromedriver")
    if chromedriver is None:
        pytest.skip("chromedriver is not installed (Debian: apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    try:
        browser = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    except WebDriverException as err:
        pytest.skip(f"headless Chromium does not start here: {err.msg}")
    browser.set_page_load_timeout(WAIT_S)
    yield browser
    browser.quit()


def open_page(driver, url: str, state: str = "") -> WebDriverWait:
    """Load the page fresh at a hash state and wait for its dataset list."""
    driver.get("about:blank")
    driver.get(url + ("#" + state if state else ""))
    # The page redraws parts of itself after each click (the state is in the URL hash): an element
    # found a moment before can be replaced, so a wait retries instead of failing on a stale one.
    wait = WebDriverWait(driver, WAIT_S, ignored_exceptions=[StaleElementReferenceException])
    wait.until(lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
    return wait


def wait_rows(wait, element_id: str = "total", **answering: str) -> int:
    """Wait until the table under ``element_id`` shows the answer to the given query (the page writes
    the query its rows answer in data- attributes) and return its total."""
    def ready(d):  # one read of all the attributes: the page may redraw between two reads
        data = d.execute_script("return {...document.getElementById(arguments[0]).dataset}", element_id)
        if "total" not in data or any(data.get(k) != v for k, v in answering.items()):
            return False
        return [int(data["total"])]  # truthy even for a total of 0
    return wait.until(ready)[0]


def filters_json(*filters: dict) -> str:
    return json.dumps(list(filters), separators=(",", ":"))  # as the page's JSON.stringify writes it


def open_first_row(driver, wait, url: str, dataset: str, q: str = "") -> None:
    wait = open_page(driver, url, f"ds={dataset}" + (f"&q={q}" if q else ""))
    row = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#results tbody tr.clickable")))
    row.click()
    wait.until(lambda d: d.find_element(By.ID, "record").find_elements(By.CLASS_NAME, "field"))


def png_is_not_blank(data: bytes) -> bool:
    """True when the screenshot holds more than one colour (PIL when installed, else how well it deflates)."""
    try:
        from PIL import Image
        colours = Image.open(io.BytesIO(data)).convert("RGB").getcolors(maxcolors=1 << 20)
        return colours is None or len(colours) > 1
    except ImportError:
        pass
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    at, idat = 8, b""
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        if kind == b"IDAT":
            idat += data[at + 8:at + 8 + length]
        at += 12 + length
    pixels = zlib.decompress(idat)
    return len(idat) * 200 > len(pixels)  # one colour deflates to almost nothing; a page of text does not


# ---------- tests ----------

def test_dataset_list_shows_every_dataset_and_its_state(explorer, driver):
    wait = open_page(driver, explorer)
    items = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#datasets li.dataset"))
    by_name = {item.get_attribute("data-name"): item for item in items}
    assert {"eval", "eval-b", "distill", "synthetic-filtered", "influence/selection", "hand-filter", "notes"} <= set(by_name)
    assert "complete" in by_name["eval"].text and "records" in by_name["eval"].text
    assert "1 unreadable line" in by_name["hand-filter"].text
    # The folder that is not a stage output is listed, with its reason in red.
    stray = by_name["notes"].find_element(By.CLASS_NAME, "dataset-error")
    assert "not a stage output" in stray.text and stray.value_of_css_property("color") == "rgba(207, 34, 46, 1)"


def test_filter_changes_the_total(explorer, driver):
    wait = open_page(driver, explorer, "ds=eval")
    before = wait_rows(wait, filters="[]")
    Select(driver.find_element(By.ID, "filter-column")).select_by_value("benchmark")
    Select(driver.find_element(By.ID, "filter-op")).select_by_value("eq")
    Select(driver.find_element(By.ID, "filter-value")).select_by_value(json.dumps("gsm8k"))  # the known values
    driver.find_element(By.ID, "filter-add").click()
    after = wait_rows(wait, filters=filters_json({"col": "benchmark", "op": "eq", "value": "gsm8k"}))
    assert 0 < after < before  # the demo evaluates gsm8k and math500
    assert {cell.text for cell in driver.find_elements(By.CSS_SELECTOR, "#results tbody td[data-col=benchmark]")} == {"gsm8k"}
    assert "filters=" in driver.find_element(By.ID, "export").get_attribute("href")
    driver.find_element(By.CSS_SELECTOR, "#chips .chip[data-col=benchmark] button").click()
    assert wait_rows(wait, filters="[]") == before


def test_record_view_renders_latex_and_code(explorer, driver, tmp_path):
    wait = WebDriverWait(driver, WAIT_S)
    open_first_row(driver, wait, explorer, "hand-filter")
    record = driver.find_element(By.ID, "record")
    wait.until(lambda d: record.find_elements(By.CSS_SELECTOR, "[data-field=problem] .katex"))
    assert record.find_elements(By.CSS_SELECTOR, "[data-field=solution] .katex-display")
    assert record.find_elements(By.CSS_SELECTOR, "[data-field=solution] pre code.hljs .hljs-built_in")  # print
    shot = tmp_path / "record.png"
    driver.save_screenshot(str(shot))
    assert png_is_not_blank(shot.read_bytes())


def test_lineage_link_opens_the_source_record(explorer, driver, tmp_path):
    wait = WebDriverWait(driver, WAIT_S)
    open_first_row(driver, wait, explorer, "distill", q="frac")  # a prompt quoting a text with LaTeX
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#record [data-field=prompt] .katex"))
    driver.save_screenshot(str(tmp_path / "distill-record.png"))
    link = wait.until(EC.element_to_be_clickable(
        (By.CSS_SELECTOR, "#lineage-back li.clickable[data-dataset='influence/selection']")))
    link.click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "record-title"), "influence/selection"))
    # ...and from the source text, forward again to what it became.
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#lineage-forward li.clickable[data-dataset=distill]"))


def test_compare_two_eval_runs(explorer, driver):
    wait = open_page(driver, explorer, "tab=compare")
    for name in ("eval", "eval-b"):
        wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, f"#compare-runs input[value='{name}']"))).click()
        wait.until(EC.element_located_to_be_selected((By.CSS_SELECTOR, f"#compare-runs input[value='{name}']")))
    every = wait_rows(wait, "compare-total", show="all")
    whole = driver.find_elements(By.CSS_SELECTOR, "#compare-summary tbody tr.benchmark-total")
    assert sorted(row.get_attribute("data-benchmark") for row in whole) == ["gsm8k", "math500"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#compare-problems tbody tr")) == min(every, 50) > 0
    # Two runs: every problem is right in both, wrong in both, or differs.
    counts = {}
    for show in ("differ", "all_right", "all_wrong"):
        Select(driver.find_element(By.ID, "compare-show")).select_by_value(show)
        counts[show] = wait_rows(wait, "compare-total", show=show)
    assert sum(counts.values()) == every and min(counts.values()) < every
    # A per-run cell opens that run's record.
    Select(driver.find_element(By.ID, "compare-show")).select_by_value("all")
    wait_rows(wait, "compare-total", show="all")
    driver.find_element(By.CSS_SELECTOR, "#compare-problems td.run-cell.clickable[data-run='eval-b']").click()
    wait.until(EC.text_to_be_present_in_element((By.ID, "record-title"), "eval-b"))


def test_errors_tab_draws_bars(explorer, driver):
    wait = open_page(driver, explorer, "tab=errors&ds=synthetic-filtered")
    groups = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#error-groups .group"))
    bars = [(int(g.find_element(By.CLASS_NAME, "bar-count").text), g.find_element(By.CLASS_NAME, "bar").size["width"])
            for g in groups]
    assert all(width > 0 for _, width in bars)
    assert [w for _, w in sorted(bars, reverse=True)] == sorted((w for _, w in bars), reverse=True)  # longer = more
    # An eval run's groups too (the demo's tiny model gets most answers wrong).
    Select(driver.find_element(By.ID, "errors-dataset")).select_by_value("eval")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#error-groups .group .bar"))


def test_api_error_is_shown_in_the_message_box(explorer, driver):
    wait = open_page(driver, explorer, "ds=no-such-dataset")
    message = wait.until(EC.visibility_of_element_located((By.ID, "message")))
    assert "no-such-dataset" in message.text


def test_hostile_record_is_shown_as_text(explorer, driver):
    wait = WebDriverWait(driver, WAIT_S)
    open_first_row(driver, wait, explorer, "hand-filter", q="hostile")
    wait.until(EC.text_to_be_present_in_element((By.ID, "record"), "<script>window.__pwned"))
    with pytest.raises(NoAlertPresentException):
        driver.switch_to.alert.dismiss()  # an alert would mean the <script> ran
    assert driver.execute_script("return window.__pwned") is None
    assert not driver.find_elements(By.CSS_SELECTOR, "#record script, #record img, #results script, #results img")

