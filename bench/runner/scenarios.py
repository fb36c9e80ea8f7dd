"""The benchmark's scenarios: a workload and replica set each, and the targets that matter there.

`default` is the everyday case (four replicas, every session alike); `skewed` is the hard case for
placement (two replicas with tight caches, a quarter of the sessions hot), where the naive choices
fail: a count-bounded hash spills turns off their cache, a plain hash piles hot sessions on one
replica, and a second router instance does not know where the first put a conversation;
`no_header` is that workload from agents that send no session id and open every session alike,
so that the prompt anchor is one key for all of them. Engine truth (the `*_events` targets) is
measured against its absence in both.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.runner.sizes import FULL, NO_HEADER, QUICK, SKEWED, Size


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    size: Size
    policies: str  # targets measured unless --policies says otherwise


SCENARIOS: dict[str, Scenario] = {
    "default": Scenario(
        "default",
        "Default workload: 4 replicas, 96 users, every session alike",
        FULL,
        "session,prefix,consistent_hash,round_robin,least_loaded",
    ),
    "skewed": Scenario(
        "skewed",
        "Skewed workload: 2 replicas with tight caches, 32 users, a quarter of the sessions hot",
        SKEWED,
        "session,session_events,consistent_hash,plain_hash,session_2x,session_2x_events",
    ),
    "no_header": Scenario(
        "no_header",
        "No session id, every session opening alike (an agent's fixed preamble): the skewed "
        "workload with one prompt anchor for all",
        NO_HEADER,
        "prefix,prefix_events,prefix_2x_events,round_robin",
    ),
}
QUICK_SCENARIO = Scenario("quick", "Smoke size: 2 replicas, 8 users", QUICK, "session,round_robin")
DEFAULT_SCENARIOS = "default,skewed,no_header"
