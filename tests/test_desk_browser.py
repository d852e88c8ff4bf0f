"""The review desk's page in a real browser (headless Debian Chromium driven by Selenium), served by the running bot
with the desk on, a real SQLite file with pending labels made through the store, and the fake Bot API: sign in with
signed initData, filter, select, decide in bulk and by keyboard, relabel to not_kimchi, a user name with markup,
the one-time login link, and screenshots at 360 and 1280 px saved under test-artifacts/desk/ (artifacts, not golden
files). One bot and one browser for the module. The refusals over plain HTTP are tests/test_desk_api.py's."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from bot.desk_texts import DESK_TEXTS, desk_texts
from bot.texts import TEXTS
from models.home import Home
from models.labels import NOT_KIMCHI
from tests.botkit import ADMIN, ROOT, TOKEN, rows
from tests.deskkit import LABELLERS, Loop, desk_bot, init_data, login_link, page_wait, seed_pending
from tests.telegram_fake import FakeTelegram, user

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
STATIC = ROOT / "bot" / "desk_static"
ARTIFACTS = ROOT / "test-artifacts" / "desk"
PHONE, DESKTOP = (360, 800), (1280, 900)
SCRIPT_NAME = next(name for _, name in LABELLERS if "<script>" in name)
# Telegram's dark theme as a Mini App receives it
DARK = {"bg_color": "#212121", "text_color": "#ffffff", "hint_color": "#aaaaaa", "link_color": "#8774e1",
        "button_color": "#8774e1", "button_text_color": "#ffffff", "secondary_bg_color": "#0f0f0f"}


# ---- the desk's words: no browser needed ---------------------------------------------------------------------

def used_keys() -> set[str]:
    """Every text key the page uses: t('key') in desk.js, data-t / data-t-title in desk.html."""
    js = (STATIC / "desk.js").read_text(encoding="utf-8")
    html = (STATIC / "desk.html").read_text(encoding="utf-8")
    return set(re.findall(r"\bt\(\s*'([a-z0-9_]+)'", js)) | set(re.findall(r'data-t(?:-title)?="([a-z0-9_]+)"', html))


def test_the_desk_texts_are_complete_in_both_languages_and_all_used():
    ko, en = DESK_TEXTS["ko"], DESK_TEXTS["en"]
    assert set(ko) == set(en)
    assert all(ko.values()) and all(en.values())
    for key in ko:  # a placeholder in one language is in the other
        assert set(re.findall(r"\{(\w+)\}", ko[key])) == set(re.findall(r"\{(\w+)\}", en[key])), key
    used = used_keys()
    assert len(used) > 100  # the scan finds the page's keys
    assert sorted(used - set(en)) == []  # every key the page uses exists
    assert sorted(set(en) - used) == []  # every key defined is used
    assert desk_texts("ko")["title"] != desk_texts("en")["title"] and desk_texts("fr") == desk_texts("en")
    # a key of both tables would look used to tests/test_texts.py's scan of bot/ and hide a dead sentence there
    assert sorted(set(en) & set(TEXTS)) == []


def test_the_page_has_no_inline_script_or_style():
    html = (STATIC / "desk.html").read_text(encoding="utf-8")
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html and "<style" not in html
    assert not re.search(r"\son[a-z]+=", html)  # no inline event handlers
    assert "http://" not in html and "https://" not in html  # nothing from elsewhere
    js = (STATIC / "desk.js").read_text(encoding="utf-8")
    assert "innerHTML" not in js and "insertAdjacentHTML" not in js and "localStorage" not in js


# ---- a running bot with the desk, in a loop of its own --------------------------------------------------------



@dataclass
class Desk:
    home: Home
    fake: FakeTelegram
    app: Any
    url: str
    loop: Loop

    def link(self) -> str:
        async def make() -> str:
            return login_link(self.app)
        return self.loop.run(make())

    def stats(self) -> str:
        """/stats in the admin's chat, as the bot answers it."""
        def answer(call) -> bool:
            return call.method == "sendMessage" and int(call.params.get("chat_id", 0)) == ADMIN \
                and str(call.params.get("text", "")).startswith("predictions:")

        async def ask() -> str:
            before = sum(map(answer, self.fake.calls))
            await self.fake.send_text(user(ADMIN, "en", "admin"), "/stats")
            return (await self.fake.wait_for(answer, count=before + 1))[-1].params["text"]
        return self.loop.run(ask())


@pytest.fixture(scope="module")
def desk(tmp_path_factory) -> Desk:
    home = Home(tmp_path_factory.mktemp("desk") / "kimchi-home").ensure()
    loop = Loop()
    fake = loop.run(FakeTelegram(TOKEN).start())
    loop.run(seed_pending(home, 90, classes=3))  # 30 each of 배추김치, 오이소박이, 파김치, from 4 people
    bot = desk_bot(home, fake)
    app, url = loop.run(bot.__aenter__())
    try:
        yield Desk(home, fake, app, url, loop)
    finally:
        loop.run(bot.__aexit__(None, None, None))
        loop.run(fake.stop())
        loop.close()


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip("the browser tests need Debian's chromium and chromium-driver (/usr/bin/chromium, "
                    "/usr/bin/chromedriver): apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--lang=ko-KR", "--hide-scrollbars"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_window_size(*DESKTOP)
    try:
        yield driver
    finally:
        driver.quit()


# ---- what the tests do in the page ----------------------------------------------------------------------------

wait = page_wait


def open_desk(driver, desk: Desk, data: str | None = None, size: tuple[int, int] = DESKTOP,
              theme: dict | None = None) -> None:
    """The desk as Telegram opens a Mini App: initData (the admin's, by default) and the theme in the URL's hash."""
    driver.set_window_size(*size)
    driver.get("about:blank")  # a new hash alone would not reload the page
    colours = f"&tgWebAppThemeParams={quote(json.dumps(theme), safe='')}" if theme else ""
    driver.get(f"{desk.url}#tgWebAppData={quote(data or init_data(language_code='ko'), safe='')}"
               f"&tgWebAppVersion=7.0&tgWebAppPlatform=tdesktop{colours}")
    wait(lambda: "ready" in driver.find_element(By.TAG_NAME, "body").get_attribute("class"), "the desk signed in")


def cards(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, "#grid .card")


def grid_settled(driver) -> bool:
    return driver.find_element(By.ID, "grid").get_attribute("aria-busy") is None


def filter_class(driver, label: str) -> None:
    Select(driver.find_element(By.ID, "f-label")).select_by_value(label)
    wait(lambda: grid_settled(driver) and cards(driver)
         and all(c.find_element(By.CSS_SELECTOR, ".label").text.startswith(label) for c in cards(driver)),
         f"the grid filtered to {label}")


def click(driver, element, shift: bool = False) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    if shift:
        ActionChains(driver).key_down(Keys.SHIFT).click(element).key_up(Keys.SHIFT).perform()
    else:
        element.click()


def keys(driver, *pressed: str) -> None:
    ActionChains(driver).send_keys(*pressed).perform()


def toast(driver) -> str:
    return wait(lambda: driver.find_element(By.ID, "toast").is_displayed() and driver.find_element(By.ID, "toast").text,
                "a message after the decision")


def statuses(desk: Desk, ids: list[int]) -> set[tuple]:
    return {tuple(r) for r in rows(desk.home, "SELECT status, basis, decided_by FROM corrections WHERE id IN "
                                               f"({','.join('?' * len(ids))})", tuple(ids))}


def no_page_errors(driver) -> None:
    """Nothing the CSP refused, no script error in the console."""
    severe = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert severe == []


# ---- the tests ------------------------------------------------------------------------------------------------

def test_filter_select_twenty_and_accept_them(browser, desk):
    open_desk(browser, desk)
    assert browser.find_element(By.ID, "tab-review").text.startswith(desk_texts("ko")["tab_review"])
    assert browser.find_element(By.ID, "pending-total").text == "90"
    filter_class(browser, "파김치")
    shown = cards(browser)
    assert len(shown) == 30
    assert "(30)" in Select(browser.find_element(By.ID, "f-label")).first_selected_option.text
    wait(lambda: all(img.get_attribute("src").startswith("blob:")
                     for img in browser.find_elements(By.CSS_SELECTOR, "#grid .card img")[:6]),
         "thumbnails fetched with the bearer token")

    click(browser, shown[0])  # a tap on the card, then a shift-click: 20 in a range
    click(browser, shown[19], shift=True)
    assert browser.find_element(By.ID, "selected-count").text == "20개 선택"
    chosen = [int(c.get_attribute("data-id")) for c in cards(browser) if c.get_attribute("aria-selected") == "true"]
    assert len(chosen) == 20 and all(c.find_element(By.CSS_SELECTOR, ".pick-box").is_selected()
                                     for c in cards(browser)[:20])
    browser.find_element(By.CSS_SELECTOR, "#actionbar .accept").click()

    assert "20개 승인했어요" in toast(browser)
    wait(lambda: len(cards(browser)) == 10 and grid_settled(browser), "the decided cards left the grid")
    assert not set(chosen) & {int(c.get_attribute("data-id")) for c in cards(browser)}
    assert browser.find_element(By.ID, "pending-total").text == "70"
    assert "(10)" in Select(browser.find_element(By.ID, "f-label")).first_selected_option.text
    assert browser.find_element(By.ID, "actionbar").is_displayed() is False
    assert statuses(desk, chosen) == {("accepted", "admin", ADMIN)}
    assert "20 accepted, 70 pending, 0 rejected" in desk.stats()
    no_page_errors(browser)


def test_relabel_to_not_kimchi_by_keyboard(browser, desk):
    open_desk(browser, desk)
    filter_class(browser, "오이소박이")
    keys(browser, "j")  # the first card has the focus; nothing selected: the keys act on it
    first = cards(browser)[0]
    assert "focused" in first.get_attribute("class")
    target = int(first.get_attribute("data-id"))
    keys(browser, "e")
    picker = wait(lambda: browser.find_element(By.ID, "picker").is_displayed() and browser.find_element(By.ID, "picker"),
                  "the label picker")
    names = [b.text for b in picker.find_elements(By.CSS_SELECTOR, "button[data-label]")]
    assert len(names) == 12 and names[-1].endswith("김치 아님") and names[0].startswith("1")
    keys(browser, "n")  # n: not kimchi
    assert "김치 아님" in toast(browser)
    wait(lambda: target not in {int(c.get_attribute("data-id")) for c in cards(browser)}, "the card left the grid")
    (row,) = rows(desk.home, "SELECT corrected_label, status, basis FROM corrections WHERE id=?", (target,))
    assert tuple(row) == (NOT_KIMCHI, "accepted", "relabelled")  # trained on; earns its author nothing


def test_a_user_name_with_markup_shows_as_text(browser, desk):
    open_desk(browser, desk)
    wait(lambda: any(e.text == SCRIPT_NAME for e in browser.find_elements(By.CSS_SELECTOR, "#grid .user-name")),
         "the name as text in the grid")
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text
    scripts = browser.execute_script("return [...document.scripts].map(s => s.src)")
    assert len(scripts) == 1 and scripts[0].endswith("/desk/static/desk.js")
    browser.find_element(By.ID, "tab-users").click()
    cell = wait(lambda: [e for e in browser.find_elements(By.CSS_SELECTOR, "#users-table .user-name")
                         if e.text == SCRIPT_NAME], "the name as text in the users tab")
    assert cell and browser.execute_script("return document.querySelectorAll('#users-table script').length") == 0
    no_page_errors(browser)


def test_suspects_open_the_grid_filtered_to_flagged_labels(browser, desk):
    flagged = [r[0] for r in rows(desk.home, "SELECT id FROM corrections WHERE status='pending' AND corrected_label="
                                              "'배추김치' ORDER BY id LIMIT 3")]
    import sqlite3
    con = sqlite3.connect(desk.home.database)
    with con:
        con.execute(f"UPDATE corrections SET audit_flag='not_kimchi,outlier' WHERE id IN ({','.join('?' * 3)})",
                    tuple(flagged))
    con.close()
    open_desk(browser, desk)
    browser.find_element(By.ID, "tab-dataset").click()
    wait(lambda: "3" in browser.find_element(By.ID, "suspects-count").text, "the suspects' count")
    table = browser.find_element(By.ID, "dataset-table").text
    assert "배추김치" in table and "파김치" in table
    browser.find_element(By.ID, "suspects-open").click()
    wait(lambda: browser.find_element(By.ID, "panel-review").is_displayed() and grid_settled(browser)
         and len(cards(browser)) == 3, "the grid with the flagged labels")
    assert {int(c.get_attribute("data-id")) for c in cards(browser)} == set(flagged)
    badge = cards(browser)[0].find_element(By.CSS_SELECTOR, ".badge.flag").text
    assert desk_texts("ko")["flag_not_kimchi"] in badge and desk_texts("ko")["flag_outlier"] in badge


def test_the_login_link_signs_in_once(browser, desk):
    link = desk.link()
    browser.set_window_size(*DESKTOP)
    browser.get(link)  # 303 to /desk/ with the session cookie; the page signs in with it
    wait(lambda: "ready" in browser.find_element(By.TAG_NAME, "body").get_attribute("class"), "the desk by cookie")
    assert browser.current_url == desk.url and browser.title == desk_texts("en")["title"]
    assert wait(lambda: cards(browser), "the grid")
    browser.get(link)
    refusal = browser.find_element(By.TAG_NAME, "body").text
    assert "used already or has expired" in refusal and not browser.find_elements(By.ID, "grid")  # not the desk


def test_a_refused_sign_in_says_why_and_how_to_get_back(browser, desk):
    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get(f"{desk.url}#tgWebAppData={quote(init_data(user_id=5001), safe='')}")  # not an admin
    banner = wait(lambda: browser.find_element(By.ID, "banner").is_displayed() and browser.find_element(By.ID, "banner"),
                  "the refusal")
    assert "Only admins can use the review desk." in banner.text and "/desk" in banner.text
    assert not browser.find_element(By.ID, "grid").is_displayed()


def test_screenshots_at_360_and_1280(browser, desk):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width, height in (PHONE, DESKTOP):
        open_desk(browser, desk, size=(width, height))
        wait(lambda: grid_settled(browser) and len(cards(browser)) >= 6 and all(
            img.get_attribute("src").startswith("blob:") for img in browser.find_elements(By.CSS_SELECTOR, "#grid img")[:6]),
             "the grid with its first thumbnails")
        click(browser, cards(browser)[1])
        browser.execute_script("window.scrollTo(0, 0)")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width  # no sideways scroll
        browser.save_screenshot(str(ARTIFACTS / f"grid-{width}.png"))
        browser.find_element(By.ID, "tab-dataset").click()
        wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#dataset-table tbody tr"), "the dataset table")
        assert browser.execute_script("return document.documentElement.scrollWidth") <= width
        browser.save_screenshot(str(ARTIFACTS / f"dataset-{width}.png"))
        browser.find_element(By.ID, "tab-users").click()
        wait(lambda: browser.find_elements(By.CSS_SELECTOR, "#users-table tbody tr"), "the users table")
        browser.save_screenshot(str(ARTIFACTS / f"users-{width}.png"))
    open_desk(browser, desk, size=PHONE, theme=DARK)  # Telegram's dark theme through themeParams
    wait(lambda: all(img.get_attribute("src").startswith("blob:")
                     for img in browser.find_elements(By.CSS_SELECTOR, "#grid img")[:4]), "the dark grid's thumbnails")
    assert browser.execute_script("return getComputedStyle(document.body).backgroundColor") == "rgb(15, 15, 15)"
    assert browser.execute_script("return getComputedStyle(document.body).color") == "rgb(255, 255, 255)"
    browser.save_screenshot(str(ARTIFACTS / "grid-360-dark.png"))
    assert all((ARTIFACTS / f"{tab}-{w}.png").stat().st_size > 10_000 for tab in ("grid", "dataset") for w in (360, 1280))


def test_a_whole_page_is_decided_in_two_key_presses(browser, desk):
    open_desk(browser, desk)
    filter_class(browser, "배추김치")
    ids = [int(c.get_attribute("data-id")) for c in cards(browser)]
    assert len(ids) >= 20
    ActionChains(browser).key_down(Keys.SHIFT).send_keys("a").key_up(Keys.SHIFT).perform()  # Shift+A: the page
    assert browser.find_element(By.ID, "selected-count").text == f"{len(ids)}개 선택"
    keys(browser, "r")
    assert f"{len(ids)}개 거절했어요" in toast(browser)
    wait(lambda: grid_settled(browser) and not cards(browser), "an empty grid")
    assert browser.find_element(By.ID, "grid-empty").is_displayed()
    assert statuses(desk, ids) == {("rejected", "admin", ADMIN)}
