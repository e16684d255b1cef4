"""Every benchmark scenario by name: ``bench/run.py --scenarios NAME,...`` picks from here."""

from __future__ import annotations

from redis_scenario import RedisGetScenario, RedisSetScenario
from scenarios import DubboScenario, Scenario, ThriftScenario, TinyRpcScenario

SCENARIOS: dict[str, type[Scenario]] = {
    s.name: s for s in (TinyRpcScenario, ThriftScenario, DubboScenario, RedisGetScenario, RedisSetScenario)
}
