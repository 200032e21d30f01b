"""The web page at `/` in headless Chromium, driven through WebDriver (Debian's
chromium-driver): enter a key, submit a prompt, watch the progress bar, see the video play,
delete it.

    python tools/server/page_check.py BASE_URL KEY [SCREENSHOT.png]

BASE_URL is the server root (http://127.0.0.1:PORT). Exits non-zero on the first mismatch.
Run by crates/zoetrope-cli/tests/serve.rs.
"""

import json
import shutil
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

PROMPT = "a red ball bounces to the right on a black background"


def check(cond, what):
    if not cond:
        raise SystemExit(f"FAIL: {what}")
    print(f"ok: {what}")


def main():
    base, key = sys.argv[1], sys.argv[2]
    shot = sys.argv[3] if len(sys.argv) > 3 else None
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    profile = tempfile.mkdtemp()
    # The flags that keep Chromium off the network and quiet on a closed machine.
    for flag in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--mute-audio", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={profile}", "--window-size=1100,800"]:
        opts.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    driver = webdriver.Chrome(service=service, options=opts)
    try:
        wait = WebDriverWait(driver, 120, poll_frequency=0.1)
        driver.get(base + "/")
        check("zoetrope" in driver.title, "the page loads")
        driver.find_element(By.ID, "apikey").send_keys(key)
        driver.find_element(By.ID, "savekey").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#model option"))
        models = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, "#model option")]
        check("zoetrope-world" in models, f"the model list comes from /v1/models ({models})")

        driver.find_element(By.ID, "prompt").send_keys(PROMPT)
        driver.find_element(By.ID, "seed").send_keys("3")
        driver.find_element(By.ID, "submit").click()
        card = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#videos li"))
        vid = card.get_attribute("data-id")
        check(vid.startswith("video_"), f"submitting adds a card ({vid})")

        # The bar moves while it runs (server-sent events), then the video replaces it.
        seen = set()
        deadline = time.time() + 120
        while time.time() < deadline:
            status = card.get_attribute("data-status")
            value = driver.execute_script("return arguments[0].querySelector('progress').value", card)
            seen.add((status, int(value)))
            if status == "completed":
                break
            time.sleep(0.05)
        check(card.get_attribute("data-status") == "completed", f"the job finishes ({sorted(seen)[-3:]})")
        midway = [p for s, p in seen if s == "in_progress" and 0 < p < 100]
        check(len(midway) > 0, f"progress shown while running ({sorted(set(midway))})")

        video = wait.until(lambda d: card.find_element(By.TAG_NAME, "video"))
        wait.until(lambda d: d.execute_script("return arguments[0].readyState >= 2", video))
        w, h = driver.execute_script("return [arguments[0].videoWidth, arguments[0].videoHeight]", video)
        check((w, h) == (64, 64), f"the browser decodes the MP4 ({w}x{h})")
        t0 = driver.execute_script("return arguments[0].currentTime", video)
        time.sleep(0.6)
        t1 = driver.execute_script("return arguments[0].currentTime", video)
        paused = driver.execute_script("return arguments[0].paused", video)
        check(not paused and t1 != t0, f"it plays (currentTime {t0:.2f} -> {t1:.2f})")
        if shot:
            driver.save_screenshot(shot)
            print(f"screenshot: {shot}")

        card.find_element(By.CSS_SELECTOR, "button.delete").click()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, f'li[data-id="{vid}"]'))
        req = urllib.request.Request(f"{base}/v1/videos/{vid}", headers={"Authorization": f"Bearer {key}"})
        try:
            urllib.request.urlopen(req)
            check(False, "the deleted video is gone from the server")
        except urllib.error.HTTPError as e:
            check(e.code == 404 and "error" in json.loads(e.read()), "delete removes it on the server (404)")
        print("PAGE CHECK PASSED")
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
