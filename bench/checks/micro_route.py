"""Time of one routing decision: key extraction from a 20-turn chat body, then the ring walk.

    python -m bench.checks.micro_route [--decisions N]

Prints microseconds per decision at 4, 64 and 1024 replicas, and a last line of JSON whose
`us_per_decision` is the routing step alone (key extraction excluded: it does not depend on the
number of replicas and is reported on its own).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections.abc import Callable
from typing import Any

from router.core.keys import KeyExtractor, opens_conversation
from router.core.loads import Loads
from router.core.policies import SessionPolicy, Turn

REPLICA_COUNTS = (4, 64, 1024)


def chat_body(session: int, turns: int = 20) -> dict[str, Any]:
    """A realistic agent conversation: long system prompt, a pasted file, 20 turns."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a careful senior engineer. " * 200},
        {"role": "user", "content": f"Session {session}: review this file.\n" + "x = 1\n" * 800},
    ]
    for turn in range(turns - 1):
        messages.append({"role": "assistant", "content": "Here is what I found. " * 40})
        messages.append({"role": "user", "content": f"Follow-up {turn}: and the next function?"})
    return {"model": "llama", "stream": True, "messages": messages}


def per_call_us(fn: Callable[[int], object], calls: int, repeats: int = 5) -> float:
    """Best of `repeats` runs, so that another process on the machine does not inflate it."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decisions", type=int, default=20_000, help="decisions per timing run")
    args = parser.parse_args()
    rng = random.Random(0)
    extractor = KeyExtractor()
    bodies = [chat_body(s) for s in range(64)]
    many_keys = [extractor.extract({"x-session-id": f"s-{i}"}, {}) for i in range(4096)]

    extract_us = per_call_us(lambda i: extractor.extract({}, bodies[i % 64]), args.decisions // 4)
    print(f"key extraction (20-turn chat, prefix fallback): {extract_us:8.2f} us")
    print(f"{'replicas':>8} {'route us':>9} {'extract+route us':>17}")
    results: dict[str, float] = {}
    for count in REPLICA_COUNTS:
        replicas = [f"http://10.{count}.{i // 256}.{i % 256}:8000" for i in range(count)]
        policy = SessionPolicy()
        policy.set_replicas(dict.fromkeys(replicas, 1.0))
        loads = Loads()
        loads.set_members(replicas)
        for replica in replicas:
            loads.set_healthy(replica, True)
            for _ in range(rng.randrange(0, 8)):
                loads.start(replica, rng.uniform(0, 4000))

        def route(i: int, policy: SessionPolicy = policy, loads: Loads = loads) -> object:
            return policy.route(Turn(many_keys[i % 4096], 3000.0), loads, float(i), 3)

        def extract_and_route(
            i: int, policy: SessionPolicy = policy, loads: Loads = loads
        ) -> object:
            body = bodies[i % 64]
            turn = Turn(extractor.extract({}, body), 3000.0, opens_conversation(body))
            return policy.route(turn, loads, float(i), 3)

        route_us = per_call_us(route, args.decisions)
        both_us = per_call_us(extract_and_route, args.decisions // 4)
        results[str(count)] = round(route_us, 2)
        print(f"{count:>8} {route_us:>9.2f} {both_us:>17.2f}")
    print(json.dumps({"us_per_decision": results, "key_extraction_us": round(extract_us, 2)}))


if __name__ == "__main__":
    main()
