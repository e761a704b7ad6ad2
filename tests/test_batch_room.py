"""Sizing and spacing batches to a provider's enqueued token limit (engine/run/batch_room.py); the
end-to-end run against the test server's limit is in test_batch_mode.py."""

from __future__ import annotations

import anyio

from synthledger.engine.run.batch_room import CAP_SHARE, BatchRoom


def test_refused_alone_with_the_limit_named_sizes_batches_to_it():
    room = BatchRoom()
    room.started("a", 3000.0)  # 60 requests, 3,000 typical tokens, against a 1,200 cap
    said = room.refused("a", 60, 1200)
    assert room.cap == int(60 * CAP_SHARE * 1200 / 3000) == 21 and room.size(100) == 21 and room.size(10) == 10
    assert said == "batches of at most 21 from now on"


def test_refused_alone_under_the_limit_by_our_count_is_halved_and_one_request_is_a_real_refusal():
    room = BatchRoom()
    room.started("a", 500.0)
    assert room.refused("a", 40, 1200) == "batches of at most 20 from now on"  # the provider counts more
    room.ended("a")
    room.started("b", 10.0)
    assert room.refused("b", 1, None) is None  # nothing smaller to try: refused for itself
    assert room.cap == 20


async def test_refused_beside_others_waits_for_one_to_end_when_no_limit_is_named():
    room = BatchRoom()
    room.started("a", 100.0)
    room.started("b", 100.0)
    assert room.refused("b", 10, None) == "a batch waits while those running leave it no room"
    assert room.cap is None  # it may well fit once the others are done
    room.ended("b")
    passed = []

    async def next_batch() -> None:
        await room.wait(100.0)
        passed.append(anyio.current_time())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(next_batch)
            await anyio.sleep(0.05)
            assert not passed  # "a" still runs
            room.ended("a")
    assert passed


async def test_a_named_limit_spaces_batches_by_their_tokens():
    room = BatchRoom()
    room.started("a", 900.0)
    room.started("b", 900.0)
    room.refused("b", 20, 1200)  # beside "a": it fit alone, so it is not made smaller
    room.ended("b")
    assert room.cap is None
    with anyio.fail_after(5):
        await room.wait(150.0)  # 900 + 150 <= 0.9 x 1,200: room beside "a"
        with anyio.move_on_after(0.05) as scope:
            await room.wait(300.0)  # 900 + 300 > 1,080: waits for "a"
        assert scope.cancelled_caught
        room.ended("a")
        await room.wait(300.0)


async def test_a_stopping_run_waits_for_no_room():
    room = BatchRoom()
    room.started("a", 100.0)
    room.started("b", 100.0)
    room.refused("b", 10, None)
    room.ended("b")
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(room.wait, 100.0)
            await anyio.sleep(0.01)
            room.close()  # "a" may run for hours: the collector must not wait for it to stop


def test_a_batch_refused_as_too_large_halves_requests_and_bytes_until_one_request_is_left():
    room = BatchRoom()
    assert room.max_bytes(200_000_000) == 200_000_000 and room.size(10_000) == 10_000
    assert room.too_large(60, 19_000) == "batches of at most 30 requests and 9,500 bytes from now on"
    assert room.size(10_000) == 30 and room.max_bytes(200_000_000) == 9_500 and room.max_bytes(8_000) == 8_000
    room.too_large(30, 12_000)  # its twin, prepared before the first answer: never grows back
    assert (room.size(100), room.max_bytes(10**9)) == (15, 6_000)
    assert room.too_large(1, 5_000) is None  # one request too large is refused for itself
    assert (room.size(100), room.max_bytes(10**9)) == (15, 6_000)
