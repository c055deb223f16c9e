"""The official ``openai`` client against a real agent (uvicorn on a free port, tiny random-weight models on the
CPU): embeddings in base64 (the client's default) and float, chat and completions, models, and errors as the
client raises them."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from modelserver_fakes import tiny_loader

from colo.modelserver.app import create_app
from colo.modelserver.runtime import AgentRuntime
from colo.spec.config import ModelSpec

SPECS = [
    ("enc", ModelSpec(batch_size=4, max_seq_len=16)),
    ("gen", ModelSpec(batch_size=4, max_seq_len=16, new_tokens=3, task="generator")),
]


@pytest.fixture(scope="module")
def base_url() -> Iterator[str]:
    runtime = AgentRuntime(
        agent="writer", specs=SPECS, device="cpu", loader=tiny_loader({"enc": "bert", "gen": "gpt2"}, words=True)
    )
    runtime.load()
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), host="127.0.0.1", port=0, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(500):  # up within a few ms; bounded at 5 s
            if server.started:
                break
            threading.Event().wait(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        runtime.close()


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=30)


def test_embeddings_through_the_official_client(client: openai.OpenAI, base_url: str) -> None:
    got = client.embeddings.create(model="enc", input=["w5 w6 w7", "w9"])  # the client asks for base64
    assert [d.index for d in got.data] == [0, 1] and got.model == "enc"
    assert len(got.data[0].embedding) == 16 and all(isinstance(v, float) for v in got.data[0].embedding)
    assert got.usage.prompt_tokens == 4 and got.usage.total_tokens == 4
    # The same numbers as colo's own route, and as the float encoding.
    ours = httpx.post(base_url + "/infer", json={"texts": ["w5 w6 w7", "w9"]}).json()["embeddings"]
    assert np.allclose(np.array([d.embedding for d in got.data]), np.array(ours), atol=1e-5)
    floats = client.embeddings.create(model="enc", input="w5 w6 w7", encoding_format="float")
    assert np.allclose(floats.data[0].embedding, ours[0], atol=1e-5)
    ids = client.embeddings.create(model="enc", input=[[5, 6, 7]], encoding_format="float")
    assert np.allclose(ids.data[0].embedding, ours[0], atol=1e-5) and ids.usage.prompt_tokens == 3


def test_base64_is_little_endian_float32(base_url: str) -> None:
    body = {"model": "enc", "input": "w5 w6 w7", "encoding_format": "base64"}
    (item,) = httpx.post(base_url + "/v1/embeddings", json=body).json()["data"]
    raw = base64.b64decode(item["embedding"])
    assert len(raw) == 16 * 4
    floats = httpx.post(base_url + "/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    assert np.frombuffer(raw, dtype="<f4").tolist() == pytest.approx(floats["data"][0]["embedding"], abs=1e-6)


def test_chat_and_completions(client: openai.OpenAI) -> None:
    chat = client.chat.completions.create(
        model="gen", messages=[{"role": "user", "content": "w10 w11"}], max_tokens=2
    )
    (choice,) = chat.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert all(word.startswith("w") or word == "[UNK]" for word in choice.message.content.split())
    assert chat.usage is not None and chat.usage.completion_tokens == 2 and chat.usage.prompt_tokens >= 2
    done = client.completions.create(model="gen", prompt=["w3 w4", "w5"], max_tokens=3)
    assert [c.index for c in done.choices] == [0, 1] and done.usage is not None
    assert done.usage.completion_tokens == 6 and done.choices[0].finish_reason == "length"


def test_models_and_errors(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["enc", "gen"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.embeddings.create(model="gpt-5", input="x")
    assert missing.value.code == "model_not_found" and "not served here" in missing.value.message
    with pytest.raises(openai.NotFoundError) as unfit:
        client.completions.create(model="enc", prompt="x")  # an encoder has no completions
    assert unfit.value.code == "model_not_supported" and "/v1/completions" in unfit.value.message
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gen", input="x")
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="enc", input=["x"] * 5)  # batch_size is 4
    assert "batch_size 4" in bad.value.message
    with pytest.raises(openai.BadRequestError) as big:
        client.chat.completions.create(model="gen", messages=[{"role": "user", "content": "x"}], max_tokens=9)
    assert "new_tokens" in big.value.message
