"""The board end to end in headless Chromium: fill the train form for a tiny model and a demo dataset, start,
watch the progress reach the end and the loss plot appear, run the saved YAML with `tuneforge train`, stop a
longer run and resume it from its checkpoint, predict with BLEU/ROUGE, chat with the result and export it.
Screenshots of every tab go to a temporary folder (printed)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest


ROWS = [{"instruction": f"What is {i} plus {i}?", "input": "", "output": f"{i} plus {i} is {2 * i}."}
        for i in range(16)]


@pytest.fixture
def workdir(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "sums.json").write_text(json.dumps(ROWS))
    (data / "dataset_info.json").write_text(json.dumps({"sums": {"file_name": "sums.json"}}))
    return tmp_path


@pytest.fixture
def board_url(workdir, serve_blocks):
    from tuneforge.webui.actions import Board
    from tuneforge.webui.board import build_board

    board = Board(workdir)
    yield serve_blocks(build_board(board, refresh_seconds=0.5)), board
    board.close()


def _fill(page, selector, value, kind="input"):
    box = page.locator(f"{selector} {kind}")
    box.fill(str(value))
    box.blur()  # Gradio takes a custom Dropdown value when the field loses focus (Tab would open the next one)


def _choose(page, selector, value):
    box = page.locator(f"{selector} input")
    box.click()
    box.fill(value)
    box.press("Enter")


def _fill_train_form(page, model_dir, output_dir, max_steps):
    _fill(page, "#tf-model", model_dir)
    _choose(page, "#tf-dataset", "sums")
    _fill(page, "#tf-max_steps", max_steps)
    _fill(page, "#tf-cutoff_len", 64)
    _fill(page, "#tf-gradient_accumulation_steps", 1)
    _fill(page, "#tf-output-dir", output_dir, "textarea")
    if not page.locator("#tf-logging_steps").is_visible():
        page.get_by_text("More training keys").click()
    _fill(page, "#tf-logging_steps", 1)
    _fill(page, "#tf-save_steps", 5)


def _progress(page):
    return page.locator("#tf-progress .tf-progress")


def test_train_watch_save_stop_resume_predict_chat_export(board_url, browser_page, screenshot, tiny_model_dir,
                                                          workdir):
    from playwright.sync_api import expect

    url, board = board_url
    page = browser_page
    page.goto(url)
    expect(page.locator("#tf-tab-train")).to_be_visible()
    _choose(page, "#tf-lang", "zh")  # every label in Chinese, then back
    expect(page.get_by_text("训练阶段")).to_be_visible()
    expect(page.get_by_role("tab", name="评估")).to_be_visible()
    screenshot(page, "0-train-zh")
    _choose(page, "#tf-lang", "en")
    expect(page.get_by_role("tab", name="Evaluate")).to_be_visible()

    # --- train a short run and watch it end -----------------------------------------------------------
    _fill_train_form(page, tiny_model_dir, "saves/short", 6)
    page.locator("#tf-preview").click()  # the rows, and the tokenized example with the trained tokens marked
    expect(page.locator("#tf-tokens mark.tf-trained").first).to_contain_text("plus", timeout=60_000)
    expect(page.locator("#tf-rows")).to_contain_text("What is 0 plus 0?")
    page.locator("#tf-estimate").click()  # `tuneforge estimate` on the form, before starting
    expect(page.locator("#tf-estimate-out")).to_contain_text("peak per process", timeout=120_000)
    expect(page.locator("#tf-estimate-out")).to_contain_text("fits this machine")
    screenshot(page, "1-train-form")
    page.locator("#tf-start").click()
    expect(page.locator("#tf-message")).to_contain_text("started", timeout=30_000)
    expect(_progress(page)).to_have_attribute("data-state", "finished", timeout=180_000)
    expect(_progress(page)).to_have_attribute("data-percent", "100.0")
    expect(_progress(page)).to_have_attribute("data-step", "6")
    expect(page.locator("#tf-plot img")).to_be_visible(timeout=20_000)  # the loss curve, drawn by matplotlib
    log = page.locator("#tf-log textarea").input_value()
    assert "tuneforge.cli train" in log and "trainable parameters" in log
    screenshot(page, "2-train-finished")
    run = workdir / "saves" / "short"
    assert (run / "adapter_model.safetensors").is_file() and (run / "training_args.yaml").is_file()
    records = [json.loads(line) for line in (run / "trainer_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]

    # --- the same form, saved, runs unchanged from the command line; that run shows in the page --------
    _fill(page, "#tf-config-path", "saves/short.yaml", "textarea")
    page.locator("#tf-save").click()
    expect(page.locator("#tf-message")).to_contain_text("saved", timeout=10_000)
    saved = workdir / "saves" / "short.yaml"
    cli = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(saved), "output_dir=saves/from-cli"],
                         cwd=workdir, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    cli_records = [json.loads(line) for line in (workdir / "saves/from-cli/trainer_log.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in cli_records if "loss" in r] == [r["loss"] for r in records if "loss" in r]
    _fill(page, "#tf-output-dir", "saves/from-cli", "textarea")
    expect(_progress(page)).to_have_attribute("data-step", "6", timeout=20_000)
    expect(_progress(page)).to_contain_text("finished")

    # --- a long run: a second start into its folder is refused; stop keeps a checkpoint; resume ends it ---
    _fill(page, "#tf-output-dir", "saves/long", "textarea")
    _fill(page, "#tf-max_steps", 100000)
    page.locator("#tf-start").click()
    expect(page.locator("#tf-message")).to_contain_text("started", timeout=30_000)
    page.wait_for_function("() => Number(document.querySelector('#tf-progress .tf-progress')"
                           "?.dataset.step || 0) >= 7", timeout=180_000)
    page.locator("#tf-start").click()
    expect(page.locator("#tf-message")).to_contain_text("not started", timeout=10_000)
    expect(page.locator("#tf-message")).to_contain_text("saves/long")
    page.locator("#tf-stop").click()
    expect(page.locator("#tf-message")).to_contain_text("stopping", timeout=20_000)
    expect(_progress(page)).to_have_attribute("data-state", "stopped", timeout=120_000)
    expect(_progress(page)).to_contain_text("last checkpoint")
    screenshot(page, "3-train-stopped")
    long_run = workdir / "saves" / "long"
    checkpoints = sorted(int(p.name.split("-")[1]) for p in long_run.glob("checkpoint-*"))
    stopped_at = checkpoints[-1]
    assert stopped_at >= 7 and not (long_run / "adapter_model.safetensors").exists()
    _fill(page, "#tf-max_steps", stopped_at + 3)
    page.locator("#tf-resume").click()
    expect(page.locator("#tf-message")).to_contain_text("started", timeout=30_000)
    expect(_progress(page)).to_have_attribute("data-state", "finished", timeout=180_000)
    expect(_progress(page)).to_have_attribute("data-step", str(stopped_at + 3))
    resumed_from = long_run / f"checkpoint-{stopped_at}"
    assert f"resume_from_checkpoint: {resumed_from}" in (long_run / "training_args.yaml").read_text()

    # --- evaluate: batch prediction with BLEU / ROUGE ----------------------------------------------------
    _fill(page, "#tf-adapter", "saves/short", "textarea")
    page.get_by_role("tab", name="Evaluate").click()
    _choose(page, "#tf-eval-dataset", "sums")
    _fill(page, "#tf-eval-max-samples", 4)
    _fill(page, "#tf-eval-max-new", 8)
    _fill(page, "#tf-eval-cutoff", 64)
    page.locator("#tf-eval-start").click()
    expect(page.locator("#tf-eval-message")).to_contain_text("started", timeout=30_000)
    expect(page.locator("#tf-eval-results")).to_contain_text("predict_bleu-4", timeout=180_000)
    expect(page.locator("#tf-eval-results")).to_contain_text("predict_rouge-l")
    screenshot(page, "4-evaluate")
    results = json.loads((workdir / "saves/webui-predict/predict_results.json").read_text())
    assert "predict_bleu-4" in results and "predict_rouge-1" in results
    assert len((workdir / "saves/webui-predict/generated_predictions.jsonl").read_text().splitlines()) == 4

    # --- chat with the trained adapter ------------------------------------------------------------------
    page.get_by_role("tab", name="Chat").click()
    page.locator("#tf-chat-load").click()
    expect(page.locator("#tf-chat-loaded textarea")).to_have_value(f"{tiny_model_dir} + saves/short",
                                                                   timeout=120_000)
    page.locator("#tf-chat-box textarea").fill("What is 2 plus 2?")
    page.locator("#tf-chat-send").click()
    expect(page.locator("#tf-chatbot")).to_contain_text("What is 2 plus 2?", timeout=30_000)
    page.wait_for_function("() => document.querySelectorAll('#tf-chatbot .message').length >= 2", timeout=60_000)
    screenshot(page, "5-chat")

    # --- export the merged model ------------------------------------------------------------------------
    page.get_by_role("tab", name="Export").click()
    _fill(page, "#tf-export-dir", "saves/merged", "textarea")
    page.locator("#tf-export-start").click()
    expect(page.locator("#tf-export-message")).to_contain_text("started", timeout=30_000)
    expect(page.locator("#tf-export-files textarea")).to_have_value(
        re.compile(r"model\.safetensors"), timeout=180_000)
    merged = workdir / "saves" / "merged"
    assert (merged / "config.json").is_file() and (merged / "tokenizer_config.json").is_file()
    _choose(page, "#tf-export-format", "gguf")
    _choose(page, "#tf-export-quant", "q8_0")
    _fill(page, "#tf-export-dir", "saves/gguf", "textarea")
    page.locator("#tf-export-start").click()
    gguf_and_modelfile = re.compile(r"(?=[\s\S]*\.gguf )(?=[\s\S]*Modelfile)")
    expect(page.locator("#tf-export-files textarea")).to_have_value(gguf_and_modelfile,
                                                                    timeout=180_000)
    screenshot(page, "6-export")
    from gguf import GGUFReader

    gguf_file = next((workdir / "saves" / "gguf").glob("*.gguf"))
    assert any(t.tensor_type.name == "Q8_0" for t in GGUFReader(str(gguf_file)).tensors)
    assert page.external_requests == [], f"the page reached beyond the machine: {page.external_requests}"
    assert os.path.isdir(workdir / "saves")
