#!/usr/bin/env python3
"""Produces schema-v1 Attune events to a Kafka topic with a third-party client (PyPI's
confluent-kafka), keyed by user, and optionally consumes them back to check every one arrived
intact.

It is the "third-party producer" of the Kafka checks and the load generator of the Kafka
Streams comparison. Run it with the venv the bootstrap makes:

    cargo xtask bootstrap --kafka
    target/kafka-venv/bin/python lab/kafka/produce.py --bootstrap 127.0.0.1:PORT --count 1000 --verify

The last line printed is one JSON object (produced, consumed, timings); the exit status is 0
only if every event was acknowledged by the broker and, with --verify, read back once, under
its user's key, byte for byte.
"""

import argparse
import json
import random
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

# The kinds of schema v1 with a rough storefront mix. `search` names no item.
KINDS = [
    ("view", 60),
    ("click", 15),
    ("add_to_cart", 9),
    ("remove_from_cart", 3),
    ("purchase", 5),
    ("search", 4),
    ("impression", 4),
]


def make_events(run_id, count, users, items, seed, start_ts, span_ms):
    """`count` events of `users` users over `items` items, timestamps spread evenly over
    `span_ms` from `start_ts`. Deterministic for a given seed (apart from the run id)."""
    rng = random.Random(seed)
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    step = span_ms / max(count, 1)
    for i in range(count):
        user = f"u{rng.randrange(users):06d}"
        kind = rng.choices(kinds, weights)[0]
        event = {
            "v": 1,
            "event_id": f"{run_id}-{i:09d}",
            "user": user,
            "ts": start_ts + int(i * step),
            "kind": kind,
        }
        if kind == "search":
            event["props"] = {"q": f"query {rng.randrange(100)}"}
        else:
            event["item"] = f"I{rng.randrange(items):05d}"
            if kind in ("add_to_cart", "purchase"):
                event["props"] = {"qty": rng.randint(1, 3)}
        yield user, json.dumps(event, separators=(",", ":")).encode()


def ensure_topic(bootstrap, topic, partitions):
    """Creates the topic with `partitions` partitions unless it exists; returns its partition
    count."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    meta = admin.list_topics(timeout=30)
    if topic not in meta.topics:
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
        try:
            futures[topic].result(30)
        except KafkaException as err:
            if err.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
        meta = admin.list_topics(topic=topic, timeout=30)
    return len(meta.topics[topic].partitions)


def end_offsets(bootstrap, topic, timeout_s=30.0):
    """The topic's current end offset per partition. A topic created a moment ago may have no
    leaders yet: retried until `timeout_s`."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "attune-produce-offsets"})
    deadline = time.monotonic() + timeout_s
    try:
        meta = consumer.list_topics(topic, timeout=30)
        ends = {}
        for p in meta.topics[topic].partitions:
            while True:
                try:
                    _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                    break
                except KafkaException as err:
                    if not err.args[0].retriable() and err.args[0].code() not in (
                        KafkaError.NOT_LEADER_FOR_PARTITION,
                        KafkaError.LEADER_NOT_AVAILABLE,
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                    ):
                        raise
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)
            ends[p] = high
        return ends
    finally:
        consumer.close()


def produce(bootstrap, topic, events):
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            # What Attune's own Kafka-mode ingest uses: no duplicates on retry, every replica.
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "batch.size": 256 * 1024,
            "compression.type": "lz4",
        }
    )
    failures = []
    acknowledged = [0]

    def on_delivery(err, msg):
        if err is not None:
            failures.append(str(err))
        else:
            acknowledged[0] += 1

    sent = {}
    for user, value in events:
        while True:
            try:
                producer.produce(topic, key=user.encode(), value=value, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        sent[json.loads(value)["event_id"]] = (user, value)
        producer.poll(0)
    remaining = producer.flush(60)
    if remaining:
        failures.append(f"{remaining} messages not acknowledged within 60 s")
    return sent, acknowledged[0], failures


def verify(bootstrap, topic, sent, start_offsets, timeout_s):
    """Reads the topic from where it ended before this run and checks that every sent event
    comes back exactly once, under its user's key, with the same bytes."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"attune-produce-verify-{uuid.uuid4().hex[:12]}",
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
        }
    )
    consumer.assign([TopicPartition(topic, p, off) for p, off in start_offsets.items()])
    seen = {}
    problems = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(seen) < len(sent) and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        problems.append(str(msg.error()))
                    continue
                event_id = json.loads(msg.value())["event_id"]
                if event_id not in sent:
                    continue  # another producer's event
                user, value = sent[event_id]
                if event_id in seen:
                    problems.append(f"{event_id} read twice")
                if msg.key() != user.encode():
                    problems.append(f"{event_id} keyed {msg.key()!r}, sent under {user!r}")
                if msg.value() != value:
                    problems.append(f"{event_id} came back changed")
                seen[event_id] = msg.partition()
    finally:
        consumer.close()
    missing = len(sent) - len(seen)
    if missing:
        problems.append(f"{missing} events not read back within {timeout_s} s")
    # Keyed by user: one user's events all land on one partition.
    partitions_of_user = {}
    for event_id, partition in seen.items():
        partitions_of_user.setdefault(sent[event_id][0], set()).add(partition)
    split = [u for u, ps in partitions_of_user.items() if len(ps) > 1]
    if split:
        problems.append(f"{len(split)} users' events spread over several partitions")
    return len(seen), problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bootstrap", required=True, help="bootstrap.servers, e.g. 127.0.0.1:9092")
    ap.add_argument("--topic", default="attune.events")
    ap.add_argument("--partitions", type=int, default=4, help="when the topic is created")
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--users", type=int, default=100)
    ap.add_argument("--items", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start-ts", type=int, default=None, help="first event's ts (ms); default: now - 1 h")
    ap.add_argument("--span-ms", type=int, default=3_600_000, help="timestamps spread over this span")
    ap.add_argument("--verify", action="store_true", help="consume the events back and check them")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for --verify")
    ap.add_argument("--events-out", default=None, help="also write the events as JSONL here (the same bytes as produced)")
    args = ap.parse_args()

    start_ts = args.start_ts if args.start_ts is not None else int(time.time() * 1000) - args.span_ms
    run_id = uuid.uuid4().hex[:12]
    partitions = ensure_topic(args.bootstrap, args.topic, args.partitions)
    before = end_offsets(args.bootstrap, args.topic)

    t0 = time.monotonic()
    events = make_events(run_id, args.count, args.users, args.items, args.seed, start_ts, args.span_ms)
    if args.events_out:
        events = list(events)
        with open(args.events_out, "wb") as out:
            for _, value in events:
                out.write(value)
                out.write(b"\n")
    sent, acknowledged, failures = produce(args.bootstrap, args.topic, events)
    produce_s = time.monotonic() - t0
    summary = {
        "topic": args.topic,
        "partitions": partitions,
        "run_id": run_id,
        "produced": acknowledged,
        "produce_s": round(produce_s, 3),
        "produce_events_per_s": round(len(sent) / produce_s) if produce_s > 0 else None,
    }
    problems = list(failures)
    if args.verify and not failures:
        t1 = time.monotonic()
        consumed, verify_problems = verify(args.bootstrap, args.topic, sent, before, args.timeout)
        summary["consumed"] = consumed
        summary["consume_s"] = round(time.monotonic() - t1, 3)
        problems.extend(verify_problems)
    summary["ok"] = not problems
    if problems:
        summary["problems"] = problems[:20]
    print(json.dumps(summary))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
