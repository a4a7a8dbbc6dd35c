"""Prometheus metrics, one registry per app (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.inbound = Counter(
            "gateway_inbound_events_total", "Inbound provider events by channel and result",
            ["channel", "result"], registry=self.registry,
        )
        self.webhook_rejected = Counter(
            "gateway_webhook_rejected_total", "Webhook requests refused, by route and reason",
            ["route", "reason"], registry=self.registry,
        )
        self.outbound = Counter(
            "gateway_outbound_total", "Outbound sends by channel and outcome",
            ["channel", "outcome"], registry=self.registry,
        )
        self.bundles = Counter(
            "gateway_context_bundles_total", "Context bundle fetches by result",
            ["result"], registry=self.registry,
        )
        self.calls = Counter(
            "gateway_calls_total", "Calls routed by the SIP edge or Twilio Voice, by outcome",
            ["edge", "outcome"], registry=self.registry,
        )
        self.pin_attempts = Counter(
            "gateway_pin_attempts_total",
            "Escalation PIN attempts by edge and outcome (right, wrong, limited-source, "
            "limited-global)", ["edge", "outcome"], registry=self.registry,
        )
        self.step_ups = Counter(
            "gateway_step_up_checks_total",
            "Codes agents entered for a caller (POST …/verifications/{id}/check), by outcome",
            ["outcome"], registry=self.registry,
        )
        self.http_refused = Counter(
            "gateway_http_refused_total",
            "HTTP requests refused at the edge, by reason (header-timeout, nested-json)",
            ["reason"], registry=self.registry,
        )
        self.sip_messages = Counter(
            "gateway_sip_messages_total", "SIP messages received, by kind",
            ["kind"], registry=self.registry,
        )
        self.dialogs = Gauge(
            "gateway_sip_dialogs", "Live SIP dialogs", registry=self.registry,
        )
        self.http_latency = Histogram(
            "gateway_http_request_seconds", "HTTP request handling time by route",
            ["route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
