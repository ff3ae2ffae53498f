"""When jobs look: schedule strings as triggers, and the Scheduler on an injected clock."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from acexport.config import JobSettings, parse_duration
from acexport.scheduler import Look, Scheduler
from acexport.triggers import next_looks, parse_schedule

BERLIN = ZoneInfo("Europe/Berlin")


def test_cron_fires_at_local_times_across_a_dst_change() -> None:
    """ "30 2 * * *" in Berlin: local 02:30 each day; on the spring-forward day, once."""
    trigger = parse_schedule("30 2 * * *", BERLIN, parse_duration)
    looks = next_looks(trigger, datetime(2022, 3, 25, tzinfo=UTC), 4)
    local = [look.astimezone(BERLIN) for look in looks]
    assert [look.day for look in local] == [25, 26, 27, 28]
    assert {(look.hour, look.minute) for look in local if look.day != 27} == {(2, 30)}
    assert len(set(looks)) == 4


def test_every_is_anchored_at_local_midnight() -> None:
    """ "every 6h" looks at 00, 06, 12, 18 local (winter) time, whenever the daemon started.

    The interval is elapsed time from a winter midnight, so in summer the looks land an
    hour later locally (01, 07, ...): pinned here so a change to that is deliberate.
    """
    trigger = parse_schedule("every 6h", BERLIN, parse_duration)
    looks = next_looks(trigger, datetime(2022, 1, 10, 7, 13, tzinfo=BERLIN), 3)
    assert [look.astimezone(BERLIN).hour for look in looks] == [12, 18, 0]
    summer = next_looks(trigger, datetime(2022, 6, 1, 7, 13, tzinfo=BERLIN), 1)
    assert summer[0].astimezone(BERLIN).hour == 13


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("every 50ms", "shorter than 100ms"),
        ("61 * * * *", "not a 5-field cron"),
        ("* * * *", "not a 5-field cron"),
    ],
)
def test_bad_schedules_say_what_is_wrong(text: str, message: str) -> None:
    """Each unusable schedule is a ValueError naming the problem."""
    with pytest.raises(ValueError, match=message):
        parse_schedule(text, BERLIN, parse_duration)


class FakeTime:
    """A clock that moves only when the scheduler sleeps on it."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.slept: list[float] = []

    def clock(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += timedelta(seconds=seconds)
        await asyncio.sleep(0)  # let the test and other tasks run


def hourly(name: str = "pages") -> JobSettings:
    return JobSettings(name=name, workspace="acme", types=["page"], schedule="0 * * * *")


@asynccontextmanager
async def scheduling(look: Look, time: FakeTime) -> AsyncIterator[Scheduler]:
    """A Scheduler on ``time`` running the hourly job; stopped on exit."""
    async with AsyncExitStack() as stack:
        scheduler = Scheduler(look, time.clock, time.sleep)
        scheduler.start(stack)
        scheduler.set_jobs([(hourly(), ZoneInfo("UTC"))])
        yield scheduler


async def test_a_job_looks_at_start_then_at_each_scheduled_time() -> None:
    """One look at start (catch-up), then one per fire time, each at that time."""
    time = FakeTime(datetime(2022, 6, 1, 10, 20, tzinfo=UTC))
    looked: list[datetime] = []
    enough = asyncio.Event()

    async def look(job: JobSettings) -> None:
        looked.append(time.now)
        if len(looked) == 4:
            enough.set()

    async with scheduling(look, time), asyncio.timeout(5):
        await enough.wait()
    assert [t.strftime("%H:%M") for t in looked] == ["10:20", "11:00", "12:00", "13:00"]
    assert time.slept[0] == 40 * 60


async def test_a_failed_look_keeps_the_schedule_and_a_removed_job_stops() -> None:
    """A look that raises is logged and the next fire time still comes; set_jobs([])
    cancels the job's task."""
    time = FakeTime(datetime(2022, 6, 1, 10, 0, tzinfo=UTC))
    calls = 0
    third = asyncio.Event()

    async def look(job: JobSettings) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            third.set()
        raise RuntimeError("the ledger hiccuped")

    async with scheduling(look, time) as scheduler:
        async with asyncio.timeout(5):
            await third.wait()
        scheduler.set_jobs([])
        stopped_at = calls
        await asyncio.sleep(0)
        assert calls == stopped_at


async def test_an_unchanged_job_keeps_its_timing_on_set_jobs() -> None:
    """Setting the same jobs again (a reload) does not look again; a changed job does."""
    time = FakeTime(datetime(2022, 6, 1, 10, 0, tzinfo=UTC))
    looks: list[str] = []
    never = asyncio.Event()

    async def look(job: JobSettings) -> None:
        looks.append(job.schedule)
        await never.wait()  # hold the look: no sleeping, no further looks

    async with scheduling(look, time) as scheduler:
        await asyncio.sleep(0)
        scheduler.set_jobs([(hourly(), ZoneInfo("UTC"))])
        await asyncio.sleep(0)
        assert looks == ["0 * * * *"]
        changed = hourly().model_copy(update={"schedule": "30 * * * *"})
        scheduler.set_jobs([(changed, ZoneInfo("UTC"))])
        await asyncio.sleep(0)
        assert looks == ["0 * * * *", "30 * * * *"]
