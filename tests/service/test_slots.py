"""The inference slots on their own: a request waits for a free one, else gets a 503."""

from __future__ import annotations

import time

import anyio
import pytest

from service.engine import InferenceSlots
from service.errors import Busy


def test_slots_wait_then_answer_busy() -> None:
    async def scenario() -> None:
        slots = InferenceSlots(1, wait_s=0.3, retry_after_s=2)
        async with slots.hold():
            start = time.perf_counter()
            with pytest.raises(Busy) as busy:
                async with slots.hold():
                    pass
            assert time.perf_counter() - start >= 0.25 and busy.value.headers == {"Retry-After": "2"}
        async with anyio.create_task_group() as group:  # a slot freed within the wait is taken
            group.start_soon(_hold_for, slots, 0.1)
            await anyio.sleep(0.02)
            assert slots.in_use == 1
            async with slots.hold():
                assert slots.in_use == 1
        assert slots.in_use == 0

    anyio.run(scenario)


async def _hold_for(slots: InferenceSlots, seconds: float) -> None:
    async with slots.hold():
        await anyio.sleep(seconds)


def test_no_wait_answers_busy_at_once() -> None:
    async def scenario() -> None:
        slots = InferenceSlots(2, wait_s=0.0, retry_after_s=1)
        async with slots.hold(), slots.hold():
            assert slots.in_use == 2
            with pytest.raises(Busy):
                async with slots.hold():
                    pass
        assert slots.in_use == 0
        with pytest.raises(Busy):
            async with InferenceSlots(0, 5.0, 1).hold():
                pass

    anyio.run(scenario)
