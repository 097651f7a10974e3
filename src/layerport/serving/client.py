"""A model served by Triton (or any KServe v2 server), through ``tritonclient.http``.

``ServedModel`` connects, checks that the model is ready, and reads its config
and metadata; ``verify.engines.ServerEngine`` runs named arrays through it, so ``verify --server`` compares what is *served* with eager PyTorch
over the same grid as ``verify FILE``. A server that cannot be reached, a model
that is not ready or does not exist is bad input (``BadFile``, exit 2), as an
unreadable file is; a served model that fails a request is failed work.

Protocol: https://kserve.github.io/website/latest/modelserving/data_plane/v2_protocol/
"""

from __future__ import annotations

import contextlib
import http.client
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

import numpy as np

from layerport.dtypes import kserve_datatype, kserve_element_type_name
from layerport.errors import BadFile, WorkFailed, one_line
from layerport.runtime.arrays import ArraySpec
from layerport.runtime.metadata import ExportRecord
from layerport.serving.model_config import record_of

# Seconds to wait for a connection and for an answer: a grid point of the rnn
# at batch 37, seq 301 takes the python backend a few hundred milliseconds.
CONNECTION_TIMEOUT = 10.0
NETWORK_TIMEOUT = 300.0


def _tritonclient() -> Any:
    try:
        import tritonclient.http
    except ImportError as error:
        raise BadFile(
            "verifying a served model needs tritonclient: pip install 'layerport[serve]'"
        ) from error
    # Its HTTP client runs on gevent, whose hub prints an exception raised while
    # it waits (Ctrl-C mid-request) before passing it on. Passed on it still is
    # (KeyboardInterrupt stays a SYSTEM_ERROR); layerport says "interrupted" itself.
    from gevent.hub import Hub

    if not issubclass(KeyboardInterrupt, Hub.NOT_ERROR):
        Hub.NOT_ERROR = (*Hub.NOT_ERROR, KeyboardInterrupt)
    return tritonclient.http


def _message(error: BaseException) -> str:
    # tritonclient's InferenceServerException keeps the server's words in message().
    message = getattr(error, "message", None)
    text = message() if callable(message) else str(error)
    return one_line(str(text) or type(error).__name__)


_HOST_PORT = re.compile(
    r"^(?P<host>[A-Za-z0-9][A-Za-z0-9.\-]*|\[[0-9A-Fa-f:.]+\]):(?P<port>\d{1,5})$"
)


def server_address(url: str) -> str:
    """``host:port`` from ``url`` (an ``http://`` prefix and a trailing ``/`` allowed).

    Raises ``BadFile`` for anything else: https, a path, no port, a port out of range.
    """
    address = url.strip()
    if address.lower().startswith("https://"):
        raise BadFile(f"{url}: only http:// servers are supported")
    if address.lower().startswith("http://"):
        address = address[len("http://") :]
    address = address.rstrip("/")
    match = _HOST_PORT.match(address)
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise BadFile(
            f"server {url!r} must be HOST:PORT, for example 127.0.0.1:8000 (Triton's HTTP port)"
        )
    return address


def wait_until_ready(url: str, name: str, seconds: float) -> None:
    """Poll the server's readiness of model ``name`` for up to ``seconds``; silent on timeout.

    For a server just started in the background: ``ServedModel`` then says what is wrong.
    """
    deadline = time.monotonic() + seconds
    address = server_address(url)
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(
                f"http://{address}/v2/models/{urllib.parse.quote(name)}/ready", timeout=1
            ) as response:
                if response.status == 200:
                    return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)


def _probe(address: str, url: str) -> None:
    """Whether anything answers Triton's liveness endpoint, within ``CONNECTION_TIMEOUT``.

    A short probe first, so that a server that accepts connections and never
    answers costs seconds, not the request timeout.
    """
    try:
        with urllib.request.urlopen(
            f"http://{address}/v2/health/live", timeout=CONNECTION_TIMEOUT
        ) as response:
            if response.status == 200:
                return
    except urllib.error.HTTPError as error:
        raise BadFile(
            f"{url} answers, but not as a Triton (KServe v2) server: /v2/health/live gave "
            f"HTTP {error.code}"
        ) from error
    except http.client.HTTPException as error:
        # A gRPC port (HTTP/2), or anything else that does not speak HTTP/1.1.
        raise BadFile(
            f"{url} answers, but not as a Triton (KServe v2) HTTP server ({type(error).__name__}); "
            "give Triton's HTTP port, 8000 by default, not its gRPC port"
        ) from error
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise BadFile(f"cannot reach a Triton server at {url}: {one_line(str(reason))}") from error


class ServedModel:
    """Model ``name`` on the server at ``url`` (``host:port``, an ``http://`` prefix allowed).

    Raises ``BadFile`` when the server cannot be reached or the model is not
    ready there (unknown names included), naming what is served instead.
    """

    def __init__(self, url: str, name: str) -> None:
        http = _tritonclient()
        self.url = server_address(url)
        self.name = name
        _probe(self.url, url)
        try:
            self.client = http.InferenceServerClient(
                self.url,
                connection_timeout=CONNECTION_TIMEOUT,
                network_timeout=NETWORK_TIMEOUT,
            )
            live = self.client.is_server_live()
        except Exception as error:  # refused, unknown host, timeout, bad URL
            raise BadFile(f"cannot reach a Triton server at {url}: {_message(error)}") from error
        if not live:
            raise BadFile(f"the Triton server at {url} is not live")
        try:
            ready = self.client.is_model_ready(name)
        except Exception as error:
            raise BadFile(f"cannot ask {url} about model {name!r}: {_message(error)}") from error
        if not ready:
            raise BadFile(f"model {name!r} is not ready on {url}; {self._served()}")
        try:
            self.config: dict[str, Any] = self.client.get_model_config(name)
            self.metadata: dict[str, Any] = self.client.get_model_metadata(name)
        except Exception as error:
            raise BadFile(f"cannot read model {name!r} from {url}: {_message(error)}") from error
        self.max_batch_size = int(self.config.get("max_batch_size", 0))
        self.batched = self.max_batch_size > 0

    def _served(self) -> str:
        with contextlib.suppress(Exception):
            index = self.client.get_model_repository_index()
            ready = sorted(entry["name"] for entry in index if entry.get("state") == "READY")
            return f"ready models: {', '.join(ready) or '(none)'}"
        return "the server did not list its models"

    def optional_inputs(self) -> set[str]:
        """The inputs the served config declares ``optional``."""
        return {entry["name"] for entry in self.config.get("input", []) if entry.get("optional")}

    def record(self) -> ExportRecord:
        """The layerport metadata in the served config's ``parameters``."""
        record = record_of(self.config.get("parameters"))
        if record is None:
            raise BadFile(
                f"model {self.name!r} on {self.url} was not exported by layerport (its config has "
                "no layerport parameters), so verify cannot rebuild its layer"
            )
        return record

    def interface(self) -> tuple[list[ArraySpec], list[ArraySpec]]:
        """Inputs and outputs as the server declares them; ``-1`` dims are symbolic.

        The server's metadata includes the batch dim Triton owns, so these read
        as a file's would, and ``verify.structure`` checks them the same way.
        """

        def specs(kind: str) -> list[ArraySpec]:
            return [
                ArraySpec(
                    name=entry["name"],
                    dims=tuple(
                        f"{entry['name']}_axis{axis}" if int(size) < 0 else int(size)
                        for axis, size in enumerate(entry["shape"])
                    ),
                    dtype=kserve_element_type_name(entry["datatype"]),
                )
                for entry in self.metadata.get(kind, [])
            ]

        return specs("inputs"), specs("outputs")

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One request: ``inputs`` as they are (left-out optional inputs are not sent)."""
        http = _tritonclient()
        request = []
        for name, array in inputs.items():
            tensor = http.InferInput(name, list(array.shape), kserve_datatype(array.dtype.name))
            tensor.set_data_from_numpy(np.ascontiguousarray(array), binary_data=True)
            request.append(tensor)
        names = [entry["name"] for entry in self.metadata.get("outputs", [])]
        wanted = [http.InferRequestedOutput(name, binary_data=True) for name in names]
        try:
            result = self.client.infer(self.name, request, outputs=wanted)
        except Exception as error:
            shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in inputs.items())
            raise WorkFailed(
                f"model {self.name!r} on {self.url} failed a request ({shapes}): {_message(error)}"
            ) from error
        return {name: result.as_numpy(name) for name in names}

    def statistics(self) -> dict[str, int]:
        """``inference_count`` (samples) and ``execution_count`` (batches run) of the model."""
        stats = self.client.get_inference_statistics(self.name)["model_stats"]
        return {
            "inference_count": sum(int(entry.get("inference_count", 0)) for entry in stats),
            "execution_count": sum(int(entry.get("execution_count", 0)) for entry in stats),
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
