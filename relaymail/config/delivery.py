"""The ``delivery`` section: the relay's outbound sessions, batches, retries and bounces."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relaymail.config.check import Check


@dataclass(frozen=True)
class DeliveryConfig:
    """The ``delivery`` section, validated (durations in seconds)."""

    concurrency: int
    per_destination_concurrency: int
    batch_size: int
    batch_delay: float
    retry_schedule: tuple[float, ...]
    max_queue_lifetime: float
    bounces: bool
    connect_timeout: float
    command_timeout: float
    paused: bool = False  # start with delivery paused (relaymail.relay.pause)


def validate_delivery(c: Check, d: dict[str, Any]) -> DeliveryConfig:
    """``d`` is the section merged over its defaults; an empty retry schedule means 300 s."""
    schedule = c.array(d["retry_schedule"], "delivery.retry_schedule")
    return DeliveryConfig(
        concurrency=c.integer(d["concurrency"], "delivery.concurrency", 1),
        per_destination_concurrency=c.integer(d["per_destination_concurrency"],
                                              "delivery.per_destination_concurrency", 1),
        batch_size=c.integer(d["batch_size"], "delivery.batch_size", 1),
        batch_delay=c.number(d["batch_delay"], "delivery.batch_delay"),
        retry_schedule=tuple(c.number(x, f"delivery.retry_schedule[{i}]", 1)
                             for i, x in enumerate(schedule)) or (300.0,),
        max_queue_lifetime=c.number(d["max_queue_lifetime"], "delivery.max_queue_lifetime", 60),
        bounces=c.boolean(d["bounces"], "delivery.bounces"),
        connect_timeout=c.number(d["connect_timeout"], "delivery.connect_timeout", 1),
        command_timeout=c.number(d["command_timeout"], "delivery.command_timeout", 1),
        paused=c.boolean(d["paused"], "delivery.paused"),
    )
