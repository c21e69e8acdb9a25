"""LlamaBoard in a real browser: the real ``llamafactory-cli webui`` (with lf-multilr, and with it switched off),
driven by Debian's Chromium through Playwright. The fields are filled as a user fills them; the assertions read the
page's DOM, the run's own ``trainer_log.jsonl`` and the config files LlamaBoard writes.

``LF_MULTILR_SCREENSHOT_DIR=docs`` also writes the README's screenshots there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from lf_multilr.config.keys import KEY_NAMES
from lf_multilr.training.metrics import PREFIXES
from lf_multilr.webui.view import number
from tools.testing import BIN, clean_env, full_suite_only

pytestmark = [full_suite_only("LlamaBoard"), pytest.mark.targets]  # patch targets of LlamaBoard

MODEL_NAME = "Qwen2-VL-2B-Instruct"  # a multimodal entry of LlamaBoard's list; its path is replaced by the tiny model
SCREENSHOT_DIR = "LF_MULTILR_SCREENSHOT_DIR"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
GROUPS = [{"name": "vit_last", "params": "visual\\.blocks\\.1\\.", "lr": 1e-5}]  # the last of two ViT blocks
EXTRA = {
    "optim": "adamw_torch",
    "max_steps": 2,
    "logging_steps": 1,
    "gradient_accumulation_steps": 1,
    "preprocessing_num_workers": 1,
    "save_strategy": "no",
}
FROZEN = (
    "lf-multilr: vision_tower_lr: 2e-06 is refused: freeze_vision_tower: true freezes the vision_tower, so its "
    "value would do nothing. Fix: set freeze_vision_tower: false, or remove the key"
)  # the CLI's message as the output box renders it (its `code` spans lose their backticks)
NOT_A_NUMBER = "lf-multilr: multi_modal_projector_lr: 'fast' is refused: it is not a number. Fix: give a number >= 0"

expect.set_options(timeout=30_000)


class Board:
    """A ``llamafactory-cli webui`` process on 127.0.0.1 at a free port."""

    def __init__(self, workdir: Path, name: str, **env: str) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/"
        self.log = workdir.parent / f"{name}.log"
        home = workdir.parent / f"{name}_hf_home"
        home.mkdir()
        environment = clean_env(
            home,
            GRADIO_SERVER_NAME="127.0.0.1",
            GRADIO_SERVER_PORT=str(port),
            GRADIO_ANALYTICS_ENABLED="False",
            GRADIO_TEMP_DIR=str(workdir.parent / f"{name}_gradio"),
            BROWSER="true",  # `webui` asks to open a browser: let that be a no-op
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # LlamaBoard starts `llamafactory-cli train`
            **env,
        )
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [str(BIN / "llamafactory-cli"), "webui"], cwd=workdir, env=environment, stdout=log, stderr=log
            )

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-5000:]
            try:
                with urllib.request.urlopen(self.url, timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        raise AssertionError(f"LlamaBoard did not answer within {timeout} s:\n{self.log.read_text()[-5000:]}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """LlamaBoard's working directory (its saves, configs and caches), shared by both boards."""
    return tmp_path_factory.mktemp("llamaboard") / "work"


@pytest.fixture(scope="module")
def boards(workdir):
    workdir.mkdir()
    started = {"multilr": Board(workdir, "multilr"), "stock": Board(workdir, "stock", LF_MULTILR_DISABLE="1")}
    try:
        for board in started.values():
            board.wait(timeout=240)
        yield started
    finally:
        for board in started.values():
            board.stop()


@pytest.fixture(scope="module")
def browser():
    executable = shutil.which("chromium")
    assert executable, "Chromium is missing: apt-get install -y chromium (`make test` installs it)"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_board(browser: Browser, board: Board) -> Page:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    # Only LlamaBoard itself: no web fonts or other outside requests (there is no network here, nor in CI).
    context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(board.url) else route.abort())
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.goto(board.url)
    expect(named(page, "Model path")).to_be_visible()  # the labels come with the language, on load
    return page


def named(where: Page | Locator, label: str) -> Locator:
    """A LlamaBoard field by its label (which the field's help text follows)."""
    return where.get_by_label(re.compile(r"^\s*" + label + r"\b"))


def choose(page: Page, where: Page | Locator, label: str, option: str) -> None:
    box = named(where, label)
    box.click()
    box.fill(option)
    page.get_by_role("option", name=option, exact=True).click()


def type_in(box: Locator, text: str) -> None:
    """Type into a dropdown that takes values of its own (output dir, config path)."""
    box.fill(text)
    box.press("Enter")
    expect(box).to_have_value(text)


def module_field(page: Page, name: str) -> Locator:
    return page.locator(f"#lf_multilr_{name} textarea")


def train_tab(page: Page) -> Locator:
    return page.locator("[role=tabpanel]:visible")


def fill_basics(page: Page, model: Path, data: Path, output_dir: str) -> Locator:
    """Model, method, data and output dir, as a user sets them; returns the Train tab."""
    choose(page, page, "Model name", MODEL_NAME)
    expect(named(page, "Model path")).not_to_have_value("")  # LlamaBoard fills in its default first
    named(page, "Model path").fill(str(model))
    choose(page, page, "Finetuning method", "full")
    tab = train_tab(page)
    named(tab, "Data dir").fill(str(data))
    choose(page, tab, "Dataset", "tiny_mm")
    type_in(named(tab, "Output dir"), output_dir)
    return tab


def screenshot(locator: Locator, path: Path) -> None:
    locator.screenshot(path=path)
    if os.environ.get(SCREENSHOT_DIR):
        Path(os.environ[SCREENSHOT_DIR]).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(os.environ[SCREENSHOT_DIR]) / path.name)


def test_kill_switch_ui_has_no_accordion(boards, browser):
    page = open_board(browser, boards["stock"])
    tab = train_tab(page)
    expect(tab.get_by_text("Multimodal configurations")).to_be_visible()
    expect(page.locator("[id^=lf_multilr]")).to_have_count(0)
    expect(page.locator("body")).not_to_contain_text("lf-multilr")
    page.context.close()


def test_refused_values_show_the_cli_message_and_start_nothing(boards, browser, tiny, data, workdir):
    page = open_board(browser, boards["multilr"])
    tab = fill_basics(page, tiny("qwen2_vl"), data, "refused")
    tab.get_by_text("Module learning rates (lf-multilr)").click()
    module_field(page, "vision_tower_lr").fill("2e-6")  # the vision tower is frozen: LlamaBoard's default
    tab.get_by_role("button", name="Start").click()
    expect(tab).to_contain_text(FROZEN)
    module_field(page, "vision_tower_lr").fill("")
    module_field(page, "multi_modal_projector_lr").fill("fast")
    tab.get_by_role("button", name="Start").click()
    expect(tab).to_contain_text(NOT_A_NUMBER)
    expect(tab).not_to_contain_text(FROZEN)
    time.sleep(2)  # a run that had started would have made its output dir by now
    assert not (workdir / "saves" / MODEL_NAME / "full" / "refused").exists()
    page.context.close()


def test_module_lrs_flow_from_the_fields_to_the_run_and_back(boards, browser, tiny, data, workdir, tmp_path):
    model = tiny("qwen2_vl")
    page = open_board(browser, boards["multilr"])
    tab = fill_basics(page, model, data, "run")
    choose(page, tab, "Compute type", "fp32")
    choose(page, tab, "LR scheduler", "constant")
    named(tab, "Learning rate").fill("1e-3")
    cutoff = tab.get_by_label("number input for Cutoff length")
    cutoff.fill("256")
    cutoff.press("Enter")
    tab.get_by_text("Extra configurations").click()
    named(tab, "Extra arguments").fill(json.dumps(EXTRA))
    tab.get_by_text("Multimodal configurations").click()
    named(tab, "Freeze vision tower").uncheck()
    named(tab, "Freeze multi-modal projector").uncheck()
    tab.get_by_text("Module learning rates (lf-multilr)").click()
    module_field(page, "vision_tower_lr").fill("2e-6")
    module_field(page, "multi_modal_projector_lr").fill("1,5e-4")  # a decimal comma
    module_field(page, "language_model_weight_decay").fill("0.01")
    module_field(page, "lr_groups").fill(json.dumps(GROUPS))
    screenshot(page.locator("#lf_multilr_tab"), tmp_path / "webui_accordion.png")

    tab.get_by_role("button", name="Preview command").click()
    preview = tab.locator("code", has_text="llamafactory-cli train")
    expect(preview).to_contain_text("--vision_tower_lr 2e-06")
    expect(preview).to_contain_text("--multi_modal_projector_lr 0.00015")
    expect(preview).to_contain_text("--language_model_weight_decay 0.01")
    expect(preview).not_to_contain_text("--language_model_lr")
    expect(preview).to_contain_text("--lr_groups")

    tab.get_by_role("button", name="Start").click()
    expect(tab).to_contain_text("Finished.", timeout=180_000)
    run_dir = workdir / "saves" / MODEL_NAME / "full" / "run"
    records = [json.loads(line) for line in (run_dir / "trainer_log.jsonl").read_text().splitlines()]
    steps = [record for record in records if "loss" in record]
    assert [record["current_steps"] for record in steps] == [1, 2]
    for record in steps:
        assert record["lr/vision_tower"] == 2e-6
        assert record["lr/multi_modal_projector"] == 1.5e-4
        assert record["lr/language_model"] == record["lr"] == 1e-3
        assert record["lr/vit_last"] == 1e-5 and record["grad_norm/vit_last"] > 0
    # The module table the run logged, in LlamaBoard's output box.
    expect(tab).to_contain_text("lf-multilr param groups for model type `qwen2_vl`")
    table = tab.locator("code", has_text="lf-multilr param groups")
    expect(table).to_contain_text(re.compile(r"language_model +\d+ +[\d.]+k +yes +1\.000e-03 +0\.01"))
    expect(table).to_contain_text(re.compile(r"vision_tower +\d+ +[\d.]+k +yes +2\.000e-06 +0\n"))
    expect(table).to_contain_text(re.compile(r"multi_modal_projector +\d+ +[\d.]+k +yes +1\.500e-04 +0\n"))
    # The per-module view next to the loss plot: every per-module value of the last step, as logged.
    shown = page.locator("#lf_multilr_table")
    logged = {key: value for key, value in steps[-1].items() if key.startswith(PREFIXES)}
    prefixes = [prefix for prefix in PREFIXES if any(key.startswith(prefix) for key in logged)]
    assert "lr/" in prefixes
    expect(shown).to_contain_text(re.compile(r"step 2 +" + " +".join(prefix.rstrip("/") for prefix in prefixes)))
    for module in ("language_model", "vision_tower", "multi_modal_projector"):
        cells = [re.escape(number(logged[prefix + module])) for prefix in prefixes]
        expect(shown).to_contain_text(re.compile(rf"\n{module} +" + " +".join(cells) + r"\n"))
    expect(page.locator("#lf_multilr_viewer img")).to_be_visible()
    page.add_style_tag(content=".toast-wrap { display: none !important; }")  # for the picture only
    screenshot(page.locator("#lf_multilr_viewer").locator("xpath=.."), tmp_path / "webui_module_view.png")
    page.screenshot(path=tmp_path / "llamaboard.png", full_page=True)

    # Saved, cleared, loaded back.
    config_path = named(tab, "Config path")
    type_in(config_path, "multilr.yaml")
    tab.get_by_role("button", name="Save arguments").click()
    expect(tab).to_contain_text("Arguments have been saved at: llamaboard_config/multilr.yaml")
    saved = yaml.safe_load((workdir / "llamaboard_config" / "multilr.yaml").read_text())
    assert not {f"train.{name}" for name in KEY_NAMES} & set(saved)
    assert json.loads(saved["train.extra_args"]) == {
        **EXTRA,
        "vision_tower_lr": 2e-6,
        "multi_modal_projector_lr": 1.5e-4,
        "language_model_weight_decay": 0.01,
        "lr_groups": GROUPS,
    }
    for name in (*KEY_NAMES, "lr_groups"):
        module_field(page, name).fill("")
    tab.get_by_role("button", name="Load arguments").click()
    expect(tab).to_contain_text("Arguments have been restored.")
    restored = {
        "vision_tower_lr": "2e-06",
        "multi_modal_projector_lr": "0.00015",
        "language_model_weight_decay": "0.01",
        "lr_groups": json.dumps(GROUPS),
    }
    for name in (*KEY_NAMES, "lr_groups"):
        expect(module_field(page, name)).to_have_value(restored.get(name, ""))
    expect(named(tab, "Extra arguments")).to_have_value(json.dumps(EXTRA))

    # Stock LlamaBoard (lf-multilr switched off) loads that config: the keys land in its extra arguments.
    stock = open_board(browser, boards["stock"])
    stock_tab = fill_basics(stock, model, data, "stock")
    type_in(named(stock_tab, "Config path"), "stock.yaml")
    stock_tab.get_by_role("button", name="Save arguments").click()
    expect(stock_tab).to_contain_text("Arguments have been saved at: llamaboard_config/stock.yaml")
    type_in(named(stock_tab, "Config path"), "multilr.yaml")
    stock_tab.get_by_role("button", name="Load arguments").click()
    expect(stock_tab).to_contain_text("Arguments have been restored.")
    expect(named(stock_tab, "Extra arguments")).to_have_value(re.compile('"vision_tower_lr": 2e-06'))
    expect(stock.get_by_text("Error", exact=True)).to_have_count(0)

    # A config stock LlamaBoard saved loads in lf-multilr's and clears the fields.
    type_in(config_path, "stock.yaml")
    tab.get_by_role("button", name="Load arguments").click()
    expect(tab).to_contain_text("Arguments have been restored.")
    expect(named(tab, "Compute type")).to_have_value("bf16")  # stock.yaml's, where this run had fp32
    for name in KEY_NAMES:
        expect(module_field(page, name)).to_have_value("")
    stock.context.close()
    page.context.close()
