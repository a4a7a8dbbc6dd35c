"""The agent API's OpenAPI 3.1 description, served at /api/v1/openapi.json."""

from __future__ import annotations

from typing import Any

_ERROR = {"$ref": "#/components/schemas/Error"}


def _resp(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    content = {"application/json": {"schema": schema or {"type": "object"}}}
    return {"description": description, "content": content}


_ERRORS = {
    "400": _resp("bad request", _ERROR),
    "401": _resp("missing or wrong bearer token", _ERROR),
    "404": _resp("not found", _ERROR),
    "409": _resp("not possible in the current state", _ERROR),
}
_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "Continuity gateway agent API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Error": {"type": "object", "required": ["error"],
                      "properties": {"error": {"type": "string"}}},
            "Customer": {
                "type": "object", "required": ["id", "addresses", "conversations"],
                "properties": {
                    "id": {"type": "string"},
                    "addresses": {"type": "array", "items": {
                        "type": "object", "required": ["address", "evidence"],
                        "properties": {"address": {"type": "string"},
                                       "evidence": {"type": "string", "enum": [
                                           "proved", "attested", "same-number", "claimed",
                                           "agent"]}}}},
                    "conversations": {"type": "array", "items": {"type": "object"}},
                },
            },
            "Conversation": {
                "type": "object",
                "required": ["id", "customer_id", "status", "legs", "transcript"],
                "properties": {
                    "id": {"type": "string"}, "customer_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["open", "closed"]},
                    "legs": {"type": "array", "items": {"type": "object"}},
                    "transcript": {"type": "array", "items": {
                        "type": "object",
                        "required": ["id", "at", "channel", "direction", "author", "text"]}},
                },
            },
            "ContextBundle": {
                "type": "object",
                "required": ["conversation_id", "customer", "verification",
                             "verification_reason", "transcript", "legs", "expires_at"],
                "properties": {
                    "conversation_id": {"type": "string"},
                    "customer": {"$ref": "#/components/schemas/Customer"},
                    "verification": {"type": ["object", "null"]},
                    "verification_reason": {"type": "string"},
                    "transcript": {"type": "array", "items": {"type": "object"}},
                    "legs": {"type": "array", "items": {"type": "object"}},
                    "expires_at": {"type": "string"},
                },
            },
        },
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/v1/customers": {"get": {
            "summary": "Find a customer by one of their addresses",
            "parameters": [{"name": "address", "in": "query", "required": True,
                            "schema": {"type": "string"},
                            "example": "whatsapp:+14155550100"}],
            "responses": {"200": _resp("the customer", {"$ref": "#/components/schemas/Customer"}),
                          **_ERRORS}}},
        "/api/v1/customers/merges": {"post": {
            "summary": "Merge two customers (an agent's decision; can be undone)",
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["survivor_id", "merged_id"],
                "properties": {"survivor_id": {"type": "string"},
                               "merged_id": {"type": "string"},
                               "agent": {"type": "string"}}}}}},
            "responses": {"201": _resp("merged"), **_ERRORS}}},
        "/api/v1/customers/merges/{merge_id}": {"delete": {
            "summary": "Undo a merge",
            "parameters": [{"name": "merge_id", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _resp("undone"), **_ERRORS}}},
        "/api/v1/conversations/{id}": {"get": {
            "summary": "A conversation with its legs and transcript (oldest first)",
            "parameters": [_ID],
            "responses": {"200": _resp("the conversation",
                                       {"$ref": "#/components/schemas/Conversation"}),
                          **_ERRORS}}},
        "/api/v1/conversations/{id}/messages": {"post": {
            "summary": "Reply on the customer's active messaging leg (through the outbox)",
            "parameters": [_ID],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["text"],
                "properties": {"text": {"type": "string"}, "agent": {"type": "string"}}}}}},
            "responses": {"202": _resp("queued for sending"), **_ERRORS}}},
        "/api/v1/conversations/{id}/verifications": {"post": {
            "summary": "Send the customer a one-time code (to an address of theirs)",
            "parameters": [_ID],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "properties": {"address": {"type": "string"}}}}}},
            "responses": {"202": _resp("code queued for sending"), **_ERRORS}}},
        "/api/v1/conversations/{id}/verifications/{challenge_id}/check": {"post": {
            "summary": "Step-up on a call: the code the caller read out; a right one "
                       "verifies that leg (its context link then returns the full bundle)",
            "parameters": [_ID, {"name": "challenge_id", "in": "path", "required": True,
                                 "schema": {"type": "string"}}],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["code", "leg_id"],
                "properties": {"code": {"type": "string"}, "leg_id": {"type": "string"}}}}}},
            "responses": {"200": _resp("outcome: passed | wrong | locked | expired"),
                          **_ERRORS}}},
        "/api/v1/conversations/{id}/escalations": {"post": {
            "summary": "Move the customer to a call: a dial-in PIN or a callback",
            "parameters": [_ID],
            "requestBody": {"content": {"application/json": {"schema": {
                "type": "object", "required": ["channel", "mode"],
                "properties": {"channel": {"type": "string", "enum": ["voice"]},
                               "mode": {"type": "string",
                                        "enum": ["callback", "dial-in"]}}}}}},
            "responses": {"201": _resp("escalation issued"), **_ERRORS}}},
        "/api/v1/conversations/{id}/close": {"post": {
            "summary": "Close the conversation", "parameters": [_ID],
            "responses": {"200": _resp("closed"), **_ERRORS}}},
        "/api/v1/outbox/{id}": {"get": {
            "summary": "The state of an outbound message", "parameters": [_ID],
            "responses": {"200": _resp("the message"), **_ERRORS}}},
        "/api/v1/contexts/{token}": {"get": {
            "summary": "The context bundle of one leg; the token is the capability",
            "security": [],
            "parameters": [{"name": "token", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _resp("the bundle",
                                       {"$ref": "#/components/schemas/ContextBundle"}),
                          "404": _resp("unknown or expired token", _ERROR)}}},
    },
}
