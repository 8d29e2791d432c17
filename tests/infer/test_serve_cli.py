"""`tuneforge api` as a user runs it: config and environment, mistakes before the model loads, the real
command serving the openai client."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time

import pytest

from tests.infer.serving import free_port
from tuneforge.cli import main
from tuneforge.errors import ConfigError
from tuneforge.infer.serve_config import parse_serve_args, warn_if_exposed


def test_keys_win_over_environment_and_defaults_are_loopback(tiny_model_dir, monkeypatch):
    for name in ("API_HOST", "API_PORT", "API_KEY", "API_MODEL_NAME"):
        monkeypatch.delenv(name, raising=False)
    _, s = parse_serve_args([f"model_name_or_path={tiny_model_dir}"], "api", 8000)
    assert (s.host, s.port, s.api_key) == ("127.0.0.1", 8000, None)
    assert s.model_name == os.path.basename(tiny_model_dir.rstrip("/"))
    monkeypatch.setenv("API_PORT", "9001")
    monkeypatch.setenv("API_KEY", "k")
    monkeypatch.setenv("API_MODEL_NAME", "forge")
    _, s = parse_serve_args([f"model_name_or_path={tiny_model_dir}", "--port", "9002"], "api", 8000)
    assert (s.port, s.api_key, s.model_name) == (9002, "k", "forge")
    _, s = parse_serve_args([f"model_name_or_path={tiny_model_dir}", "adapter_name_or_path=a/b,saves/my-lora"],
                            "api", 8000)
    assert s.model_name == "forge"
    monkeypatch.delenv("API_MODEL_NAME")
    _, s = parse_serve_args([f"model_name_or_path={tiny_model_dir}", "adapter_name_or_path=a/b,saves/my-lora/"],
                            "api", 8000)
    assert s.model_name == "my-lora"


@pytest.mark.parametrize("argv, words", [
    ([], "model_name_or_path is not set"),
    (["model_name_or_path=m", "port=70000"], "out of range"),
    (["model_name_or_path=m", "num_beams=2"], "num_beams"),
    (["model_name_or_path=m", "max_batch_size=0"], "at least 1"),
    (["model_name_or_path=m", "hots=0.0.0.0"], "did you mean 'host'"),
])
def test_config_mistakes_are_one_line_before_any_model_loads(argv, words, capsys):
    with pytest.raises(ConfigError, match=words):
        parse_serve_args(argv, "api", 8000)
    assert main(["api", *argv]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_serving_keys_are_refused_by_train(tmp_path, capsys):
    assert main(["train", "model_name_or_path=m", "dataset=x", f"output_dir={tmp_path}", "port=8000"]) == 1
    assert "serving key" in capsys.readouterr().err


def test_binding_beyond_loopback_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        warn_if_exposed("127.0.0.1", None, "api")
        warn_if_exposed("localhost", None, "api")
        assert not caplog.records
        warn_if_exposed("0.0.0.0", None, "api")
    assert "without an api_key" in caplog.text


def test_the_command_serves_the_openai_client(tiny_model_dir):
    openai = pytest.importorskip("openai")
    import httpx

    port = free_port()
    env = dict(os.environ, API_KEY="k3y")
    server = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "api", f"model_name_or_path={tiny_model_dir}",
                               "--port", str(port), "--api_model_name", "forge", "max_new_tokens=6"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, server.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.time() < deadline, "server did not start"
            time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="k3y", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["forge"]
        reply = client.chat.completions.create(model="forge", messages=[{"role": "user", "content": "Hi"}])
        assert reply.usage.completion_tokens <= 6 and reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="nope", max_retries=0).models.list()
    finally:
        server.terminate()
        _, err = server.communicate(timeout=60)
    assert f"forge (chat model) at http://127.0.0.1:{port}/v1" in err


def test_llamafactory_inference_yaml_serves_with_only_the_model_changed(tiny_model_dir):
    from pathlib import Path

    from tests.infer.serving import settings
    from tuneforge.data.conversation import Message
    from tuneforge.infer.api.app import load_service

    yaml = Path(__file__).parents[2].parent / "shared/anchors/llamafactory-examples/inference/qwen3.yaml"
    if not yaml.is_file():
        pytest.skip(f"{yaml} is not there (../shared beside the checkout)")
    args, s = parse_serve_args([str(yaml), f"model_name_or_path={tiny_model_dir}"], "api", 8000)
    engine, reward = load_service(args, settings())
    try:
        assert reward is None and engine.template.name == "qwen3_nothink"
        assert engine.tokenizer.decode(engine.prompt_ids([Message("user", "Hi")])).startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    finally:
        engine.close()


def test_webchat_refuses_api_only_keys(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setenv("API_KEY", "ignored-for-the-page")
    _, s = parse_serve_args([f"model_name_or_path={tiny_model_dir}"], "webchat", 7860)
    assert s.api_key is None and s.port == 7860
    with pytest.raises(ConfigError, match="api_key is for `tuneforge api`"):
        parse_serve_args([f"model_name_or_path={tiny_model_dir}", "api_key=k"], "webchat", 7860)
    with caplog.at_level(logging.WARNING, logger="tuneforge"):
        warn_if_exposed("0.0.0.0", None, "tuneforge webchat")
    assert "through the page" in caplog.text and "api_key" not in caplog.text
