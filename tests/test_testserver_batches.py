"""Both batch APIs of the test server, driven through the official SDKs: upload, create, retrieve,
results, cancel, expiry, refusal and per-request errors."""

from __future__ import annotations

import asyncio
import json

import anthropic
import openai
import pytest

from synthledger.testing.server import ServerConfig, TeacherServer


@pytest.fixture
async def serve():
    servers: list[TeacherServer] = []

    async def start(**kw) -> TeacherServer:
        srv = TeacherServer(ServerConfig(**kw))
        await srv.start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        await srv.stop()


def jsonl(n: int, start: int = 0) -> bytes:
    return "".join(json.dumps({
        "custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "test-teacher", "max_tokens": 30,
                 "messages": [{"role": "user", "content": f"What is {i} plus 1?"}]}}) + "\n"
        for i in range(start, start + n)).encode()


async def wait_openai(client, bid, until=("completed", "failed", "expired", "cancelled"), timeout=10.0):
    seen = []
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        b = await client.batches.retrieve(bid)
        if not seen or seen[-1] != b.status:
            seen.append(b.status)
        if b.status in until:
            return b, seen
        assert asyncio.get_running_loop().time() < deadline, seen
        await asyncio.sleep(0.01)


def oai(srv):
    return openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="k", max_retries=0)


async def test_openai_batch_lifecycle_through_the_sdk(serve):
    srv = await serve(batch_validating_s=0.1, batch_request_s=0.01, batch_finalizing_s=0.1)
    client = oai(srv)
    f = await client.files.create(file=("in.jsonl", jsonl(20)), purpose="batch")
    assert f.purpose == "batch" and f.bytes > 0
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                    metadata={"run": "abc"})
    assert b.status == "validating" and b.request_counts.total == 20 and b.metadata == {"run": "abc"}
    b, seen = await wait_openai(client, b.id)
    assert seen == ["validating", "in_progress", "finalizing", "completed"]
    assert b.request_counts.completed == 20 and b.request_counts.failed == 0 and b.error_file_id is None
    lines = [json.loads(x) for x in (await client.files.content(b.output_file_id)).text.splitlines()]
    assert sorted(x["custom_id"] for x in lines) == sorted(f"r{i}" for i in range(20))
    body = lines[0]["response"]["body"]
    assert lines[0]["response"]["status_code"] == 200 and body["object"] == "chat.completion"
    assert body["usage"]["completion_tokens"] == len(body["choices"][0]["message"]["content"].split())
    listed = await client.batches.list(limit=5)
    assert [x.id for x in listed.data] == [b.id]
    await client.close()
    assert srv.stats()["batch_requests"] == 20 and srv.stats()["batches"] == 1


async def test_openai_batch_expiry_writes_batch_expired_errors(serve):
    srv = await serve(batch_validating_s=0.0, batch_request_s=0.05, batch_expire_s=0.3)
    client = oai(srv)
    f = await client.files.create(file=("in.jsonl", jsonl(20)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, _ = await wait_openai(client, b.id)
    assert b.status == "expired" and b.expired_at is not None
    done = [json.loads(x) for x in (await client.files.content(b.output_file_id)).text.splitlines()]
    expired = [json.loads(x) for x in (await client.files.content(b.error_file_id)).text.splitlines()]
    assert 0 < len(done) < 20 and len(done) + len(expired) == 20
    assert {x["error"]["code"] for x in expired} == {"batch_expired"}
    await client.close()


async def test_openai_batch_cancel_keeps_what_finished_and_drops_the_rest(serve):
    srv = await serve(batch_validating_s=0.0, batch_request_s=0.02, batch_finalizing_s=0.05)
    client = oai(srv)
    f = await client.files.create(file=("in.jsonl", jsonl(50)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    await asyncio.sleep(0.2)
    c = await client.batches.cancel(b.id)
    assert c.status == "cancelling"
    b, _ = await wait_openai(client, b.id)
    assert b.status == "cancelled"
    done = [json.loads(x) for x in (await client.files.content(b.output_file_id)).text.splitlines()]
    assert 0 < len(done) < 50 and b.error_file_id is None  # cancelled requests are in neither file
    with pytest.raises(openai.ConflictError):
        await client.batches.cancel(b.id)
    await client.close()


async def test_openai_batch_refused_or_with_failing_requests(serve):
    srv = await serve(batch_fail=True)
    client = oai(srv)
    f = await client.files.create(file=("in.jsonl", jsonl(3)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, seen = await wait_openai(client, b.id)
    assert seen[-1] == "failed" and b.errors.data and b.output_file_id is None
    srv.control(batch_fail=False, batch_error_rate=0.5)
    bad = jsonl(1).replace(b'"max_tokens": 30', b'"max_tokens": "many"')
    f = await client.files.create(file=("in.jsonl", bad), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, _ = await wait_openai(client, b.id)
    assert b.status == "failed" and "max_tokens" in b.errors.data[0].message and b.errors.data[0].line == 1
    f = await client.files.create(file=("in.jsonl", jsonl(40)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, _ = await wait_openai(client, b.id)
    errors = [json.loads(x) for x in (await client.files.content(b.error_file_id)).text.splitlines()]
    assert b.status == "completed" and 0 < b.request_counts.failed == len(errors) < 40
    assert {e["response"]["status_code"] for e in errors} == {500}
    with pytest.raises(openai.NotFoundError):
        await client.batches.retrieve("batch_nope")
    await client.close()


async def test_openai_enqueued_token_limit_fails_a_batch_at_validation_until_others_end(serve):
    # As OpenAI: the batch is created, then fails with token_limit_exceeded while the model's running
    # batches and it hold more prompt tokens than the limit; once they end, the same file passes.
    srv = await serve(batch_request_s=0.02, batch_enqueued_tokens=85)
    client = oai(srv)
    first = await client.files.create(file=("a.jsonl", jsonl(20)), purpose="batch")  # 4 tokens each: 80
    second = await client.files.create(file=("b.jsonl", jsonl(2, start=20)), purpose="batch")
    a = await client.batches.create(input_file_id=first.id, endpoint="/v1/chat/completions", completion_window="24h")
    b = await client.batches.create(input_file_id=second.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert b.status == "validating"  # created; the refusal comes at validation
    b, seen = await wait_openai(client, b.id)
    assert seen[-1] == "failed" and b.output_file_id is None and b.request_counts.total == 2
    err = b.errors.data[0]
    assert err.code == "token_limit_exceeded" and err.line is None
    assert err.message == ("Enqueued token limit reached for test-teacher in organization org-test. Limit: 85 enqueued "
                           "tokens. Please try again once some in_progress batches have been completed.")
    a, _ = await wait_openai(client, a.id)
    assert a.status == "completed"
    b = await client.batches.create(input_file_id=second.id, endpoint="/v1/chat/completions", completion_window="24h")
    b, _ = await wait_openai(client, b.id)
    assert b.status == "completed" and b.request_counts.completed == 2
    big = await client.files.create(file=("c.jsonl", jsonl(30)), purpose="batch")  # alone over the limit
    c = await client.batches.create(input_file_id=big.id, endpoint="/v1/chat/completions", completion_window="24h")
    c, _ = await wait_openai(client, c.id)
    assert c.status == "failed" and c.errors.data[0].code == "token_limit_exceeded"
    await client.close()


async def test_a_batch_upload_over_the_byte_cap_is_refused_whole_as_each_provider_refuses_it(serve):
    # OpenAI takes a batch input file of up to 200 MB and says 400 "File is too large." to a larger
    # one; Anthropic takes a batch request of up to 256 MB, and its front door answers a larger one
    # with 413 request_too_large. Here the cap is 2,000 bytes.
    srv = await serve(batch_max_bytes=2000)
    client = oai(srv)
    small, big = jsonl(5), jsonl(40)
    assert len(small) <= 2000 < len(big)
    assert (await client.files.create(file=("a.jsonl", small), purpose="batch")).bytes == len(small)
    with pytest.raises(openai.BadRequestError) as refused:
        await client.files.create(file=("b.jsonl", big), purpose="batch")
    assert refused.value.status_code == 400 and refused.value.body["message"] == "File is too large."
    assert (await client.files.create(file=("c.jsonl", big), purpose="fine-tune")).bytes == len(big)  # batch files only
    await client.close()

    client = anthropic.AsyncAnthropic(base_url=srv.url, api_key="k", max_retries=0)
    def reqs(n):
        return [{"custom_id": f"q{i}", "params": {"model": "m", "max_tokens": 30,
                                                  "messages": [{"role": "user", "content": f"What is {i}?"}]}}
                for i in range(n)]
    assert (await client.messages.batches.create(requests=reqs(5))).request_counts.processing == 5
    with pytest.raises(anthropic.APIStatusError) as refused:
        await client.messages.batches.create(requests=reqs(40))
    assert refused.value.status_code == 413 and refused.value.body["error"]["type"] == "request_too_large"
    await client.close()


async def test_anthropic_message_batches_through_the_sdk(serve):
    srv = await serve(batch_request_s=0.01, batch_finalizing_s=0.05)
    client = anthropic.AsyncAnthropic(base_url=srv.url, api_key="k", max_retries=0)
    requests = [{"custom_id": f"q{i}", "params": {"model": "m", "max_tokens": 30,
                                                  "messages": [{"role": "user", "content": f"What is {i}?"}]}}
                for i in range(10)]
    requests.append({"custom_id": "bad", "params": {"model": "m", "messages": [{"role": "user", "content": "x"}]}})
    b = await client.messages.batches.create(requests=requests)
    assert b.processing_status == "in_progress" and b.request_counts.processing == 11 and b.results_url is None
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        await client.messages.batches.results(b.id)
    for _ in range(500):
        b = await client.messages.batches.retrieve(b.id)
        if b.processing_status == "ended":
            break
        await asyncio.sleep(0.01)
    assert b.request_counts.succeeded == 10 and b.request_counts.errored == 1 and b.ended_at is not None
    results = {r.custom_id: r.result async for r in await client.messages.batches.results(b.id)}
    assert results["bad"].type == "errored" and "max_tokens" in results["bad"].error.error.message
    ok = results["q3"]
    assert ok.type == "succeeded" and ok.message.usage.output_tokens == len(ok.message.content[0].text.split())
    await client.close()


async def test_anthropic_cancel_and_expiry_result_types(serve):
    srv = await serve(batch_request_s=0.02, batch_finalizing_s=0.02)
    client = anthropic.AsyncAnthropic(base_url=srv.url, api_key="k", max_retries=0)
    reqs = [{"custom_id": f"q{i}", "params": {"model": "m", "max_tokens": 5,
                                              "messages": [{"role": "user", "content": f"{i}"}]}} for i in range(30)]
    b = await client.messages.batches.create(requests=reqs)
    await asyncio.sleep(0.15)
    c = await client.messages.batches.cancel(b.id)
    assert c.processing_status == "canceling" and c.cancel_initiated_at is not None
    await asyncio.sleep(0.1)
    types = [r.result.type async for r in await client.messages.batches.results(b.id)]
    assert set(types) == {"succeeded", "canceled"} and len(types) == 30
    srv.control(batch_expire_s=0.1)
    b = await client.messages.batches.create(requests=reqs)
    await asyncio.sleep(0.15)
    b = await client.messages.batches.retrieve(b.id)
    assert b.processing_status == "ended" and b.request_counts.expired > 0
    types = [r.result.type async for r in await client.messages.batches.results(b.id)]
    assert set(types) <= {"succeeded", "expired"} and types.count("expired") == b.request_counts.expired
    page = await client.messages.batches.list()
    assert len(page.data) == 2
    await client.close()


async def test_batch_endpoints_check_the_api_key(serve):
    srv = await serve(require_api_key="right")
    client = openai.AsyncOpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.files.create(file=("in.jsonl", jsonl(1)), purpose="batch")
    await client.close()
    ac = anthropic.AsyncAnthropic(base_url=srv.url, api_key="wrong", max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        await ac.messages.batches.retrieve("msgbatch_x")
    await ac.close()
