"""Writes the sample invocation payloads under events/:

- events/apigw/*.json: API Gateway HTTP API (payload v2) requests for every route and every
  bad-input case, plus manifest.json (file, function, expected status and error code) in the
  order the test replays them;
- events/dynamodb/stream-batch.json: a DynamoDB Streams batch as Lambda delivers it to the
  projector, publisher and snapshotter (three events of one account, one stored as Deposited
  v1, and an idempotency record the handlers skip);
- events/kinesis/batch.json: a Kinesis batch as the activity consumer receives it;
- events/kinesis/orders-batch.json: a Kinesis batch as the reactor receives it: one published
  `orders` OrderPlaced (order ord-2, of the skus the apigw payloads restock);
- events/eventbridge/schedule.json: the EventBridge scheduled event that starts the archiver
  (the archiver does not read it).

Run from the repository root after changing them:  python3 scripts/gen_events.py
"""

import base64
import hashlib
import json
import os
from urllib.parse import parse_qsl

OUT = "events/apigw"
ACCOUNT = "123456789012"


def request(method, path, query="", body=None, headers=None, route=None):
    headers = {"accept": "application/json", "host": "api.example.com", "user-agent": "curl/8.5.0", **(headers or {})}
    if body is not None:
        headers.setdefault("content-type", "application/json")
    if route is None:
        if path.endswith("/commands"):
            route = "POST /{aggregate_type}/{id}/commands"
        elif path.endswith("/events"):
            route = "GET /{aggregate_type}/{id}/events"
        elif path == "/health":
            route = "GET /health"
        elif path.count("/") == 2:
            route = "GET /{aggregate_type}/{id}"
        else:
            route = "GET /{aggregate_type}"
    ev = {
        "version": "2.0",
        "routeKey": route,
        "rawPath": path,
        "rawQueryString": query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT,
            "apiId": "chronicle",
            "domainName": "api.example.com",
            "domainPrefix": "api",
            "http": {"method": method, "path": path, "protocol": "HTTP/1.1", "sourceIp": "192.0.2.10", "userAgent": "curl/8.5.0"},
            "requestId": "req-" + hashlib.sha256(f"{method} {path}?{query}".encode()).hexdigest()[:12],
            "routeKey": route,
            "stage": "$default",
            "time": "26/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1795694400000,
        },
        "isBase64Encoded": False,
    }
    if query:
        ev["queryStringParameters"] = dict(parse_qsl(query, keep_blank_values=True))
    if body is not None:
        ev["body"] = body if isinstance(body, str) else json.dumps(body)
    return ev


CASES = []


def case(name, function, status, code, ev):
    CASES.append((name, function, status, code, ev))


cmd = lambda i, body, **kw: request("POST", f"/accounts/{i}/commands", body=body, **kw)
get = lambda path, query="": request("GET", path, query)

# The happy path first: these set up the state the bad inputs must leave unchanged.
case("health", "query", 200, None, get("/health"))
case("open", "command", 200, None, cmd("acc-1", {"type": "Open", "owner": "alice"}))
case("deposit", "command", 200, None, cmd("acc-1", {"type": "Deposit", "amount": 100}, headers={"if-match": "1", "idempotency-key": "dep-1", "x-correlation-id": "corr-1"}))
case("deposit-repeat", "command", 200, None, cmd("acc-1", {"type": "Deposit", "amount": 100}, headers={"if-match": "1", "idempotency-key": "dep-1"}))
case("withdraw", "command", 200, None, cmd("acc-1", {"type": "Withdraw", "amount": 30}))
case("state-consistent", "query", 200, None, get("/accounts/acc-1", "consistent=true"))
case("state-at-version", "query", 200, None, get("/accounts/acc-1", "version=2"))
case("history", "query", 200, None, get("/accounts/acc-1/events", "from_version=1&limit=100"))
case("history-raw", "query", 200, None, get("/accounts/acc-1/events", "raw=true"))
case("by-owner", "query", 200, None, get("/accounts", "owner=alice"))
case("close-other", "command", 200, None, cmd("acc-closed", {"type": "Open", "owner": "carol"}))
case("close", "command", 200, None, cmd("acc-closed", {"type": "Close"}))

# Bad input: each refused with its status and code, storing nothing.
case("bad-json", "command", 400, "malformed_json", cmd("acc-1", '{"type": "Deposit", "amount": 1'))
case("empty-body", "command", 400, "malformed_json", cmd("acc-1", ""))
case("unknown-command", "command", 400, "invalid_command", cmd("acc-1", {"type": "Transfer", "amount": 1}))
case("missing-type", "command", 400, "invalid_command", cmd("acc-1", {"amount": 1}))
case("zero-amount", "command", 400, "invalid_command", cmd("acc-1", {"type": "Deposit", "amount": 0}))
case("negative-amount", "command", 400, "invalid_command", cmd("acc-1", {"type": "Deposit", "amount": -5}))
case("fractional-amount", "command", 400, "invalid_command", cmd("acc-1", {"type": "Deposit", "amount": 1.5}))
case("string-amount", "command", 400, "invalid_command", cmd("acc-1", {"type": "Deposit", "amount": "100"}))
case("huge-amount", "command", 400, "invalid_command", cmd("acc-1", '{"type":"Deposit","amount":18446744073709551616}'))
case("unknown-field", "command", 400, "invalid_command", cmd("acc-1", {"type": "Deposit", "amount": 1, "memo": "x"}))
case("repeated-key", "command", 400, "invalid_command", cmd("acc-1", '{"type":"Deposit","amount":1,"amount":2}'))
case("id-too-long", "command", 400, "invalid_id", cmd("a" * 129, {"type": "Open", "owner": "x"}))
case("id-bad-chars", "command", 400, "invalid_id", cmd("acc%241", {"type": "Open", "owner": "x"}))
case("bad-if-match", "command", 400, "invalid_header", cmd("acc-1", {"type": "Deposit", "amount": 1}, headers={"if-match": "two"}))
case("long-idempotency-key", "command", 400, "invalid_header", cmd("acc-1", {"type": "Deposit", "amount": 1}, headers={"idempotency-key": "k" * 256}))
case("unknown-aggregate-type", "command", 404, "unknown_aggregate_type", request("POST", "/ledgers/l-1/commands", body={"type": "Open"}))
case("unopened-account", "command", 404, "account_not_found", cmd("ghost", {"type": "Deposit", "amount": 1}))
case("conflict", "command", 409, "version_conflict", cmd("acc-1", {"type": "Deposit", "amount": 1}, headers={"if-match": "1"}))
case("key-reused", "command", 422, "idempotency_key_reused", cmd("acc-1", {"type": "Deposit", "amount": 999}, headers={"idempotency-key": "dep-1"}))
case("insufficient-funds", "command", 422, "insufficient_funds", cmd("acc-1", {"type": "Withdraw", "amount": 1000000}))
case("second-open", "command", 422, "account_already_open", cmd("acc-1", {"type": "Open", "owner": "mallory"}))
case("closed-account", "command", 422, "account_closed", cmd("acc-closed", {"type": "Deposit", "amount": 1}))
case("body-over-256-kib", "command", 413, "payload_too_large", cmd("acc-1", json.dumps({"type": "Deposit", "amount": 1, "pad": "x" * (300 * 1024)})))
case("state-unknown", "query", 404, "not_found", get("/accounts/ghost", "consistent=true"))
case("state-version-zero", "query", 400, "invalid_version", get("/accounts/acc-1", "version=0"))
case("state-version-beyond", "query", 404, "version_not_found", get("/accounts/acc-1", "version=99"))
case("history-bad-limit", "query", 400, "invalid_query", get("/accounts/acc-1/events", "limit=100000"))
case("history-unknown-param", "query", 400, "invalid_query", get("/accounts/acc-1/events", "form_version=1"))
case("list-unknown-field", "query", 400, "invalid_query", get("/accounts", "colour=red"))
case("unknown-route", "query", 404, "route_not_found", get("/accounts/acc-1/events/extra"))
case("commands-on-query-function", "query", 404, "route_not_found", cmd("acc-1", {"type": "Deposit", "amount": 1}))
case("reads-on-command-function", "command", 404, "route_not_found", get("/accounts/acc-1"))

# Audit reads: history filters and state as of a time.
case("history-to-version", "query", 200, None, get("/accounts/acc-1/events", "from_version=2&to_version=3"))
case("history-event-type", "query", 200, None, get("/accounts/acc-1/events", "event_type=Deposited&limit=10"))
case("history-time-range", "query", 200, None, get("/accounts/acc-1/events", "from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z"))
case("history-bad-time", "query", 400, "invalid_query", get("/accounts/acc-1/events", "from=yesterday"))
case("history-inverted-versions", "query", 400, "invalid_query", get("/accounts/acc-1/events", "from_version=3&to_version=2"))
case("state-at-now", "query", 200, None, get("/accounts/acc-1", "at=2100-01-01T00:00:00Z"))
case("state-before-first-event", "query", 404, "version_not_found", get("/accounts/acc-1", "at=2000-01-01T00:00:00Z"))
case("state-at-and-version", "query", 400, "invalid_query", get("/accounts/acc-1", "at=2100-01-01T00:00:00Z&version=1"))

# The global audit feed, a route of the query function (appended: scripts/lambda-smoke.sh names
# earlier files by their number). A fixed day: the test replays these for their status, then
# asks for the hours its events were recorded in.
audit = lambda query: request("GET", "/audit/events", query, route="GET /audit/events")
DAY = "from=2026-11-26T00:00:00Z&to=2026-11-26T23:59:59.999999Z"
case("audit-feed", "query", 200, None, audit(DAY))
case("audit-feed-page", "query", 200, None, audit(DAY + "&limit=2"))
case("audit-feed-raw", "query", 200, None, audit(DAY + "&raw=true"))
case("audit-no-from", "query", 400, "invalid_query", audit("to=2026-11-26T23:59:59Z"))
case("audit-inverted-range", "query", 400, "invalid_query", audit("from=2026-11-26T12:00:00Z&to=2026-11-26T11:00:00Z"))
case("audit-bad-limit", "query", 400, "invalid_query", audit(DAY + "&limit=1001"))
case("audit-bad-cursor", "query", 400, "invalid_query", audit(DAY + "&after=zz"))
case("audit-unknown-param", "query", 400, "invalid_query", audit(DAY + "&event_type=Deposited"))
case("audit-on-command-function", "command", 404, "route_not_found", audit(DAY))

# The orders sample (appended too). No reaction runs where these are replayed alone (the
# reactor is fed by Kinesis): ord-1 stays placed, the stock unreserved.
# events/kinesis/orders-batch.json orders ord-2 of the skus restocked here.
inventory_cmd = lambda sku, body: request("POST", f"/inventory/{sku}/commands", body=body)
order_cmd = lambda i, body: request("POST", f"/orders/{i}/commands", body=body)
case("restock", "command", 200, None, inventory_cmd("sku-1", {"type": "Restock", "quantity": 10}))
case("restock-other", "command", 200, None, inventory_cmd("sku-2", {"type": "Restock", "quantity": 5}))
case("place", "command", 200, None, order_cmd("ord-1", {"type": "Place", "customer": "c-1", "lines": [{"sku": "sku-1", "quantity": 2}, {"sku": "sku-2", "quantity": 1}]}))
case("place-no-lines", "command", 400, "invalid_command", order_cmd("ord-bad", {"type": "Place", "customer": "c-1", "lines": []}))
# Confirming is the fulfilment reaction's command, refused to clients.
case("client-confirm", "command", 400, "invalid_command", order_cmd("ord-1", {"type": "Confirm"}))
case("order-state", "query", 200, None, get("/orders/ord-1", "consistent=true"))
case("inventory-state", "query", 200, None, get("/inventory/sku-1", "consistent=true"))
case("openapi", "query", 200, None, request("GET", "/openapi.json", route="GET /openapi.json"))


STREAM_ARN = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/chronicle-events/stream/2026-11-26T00:00:00.000"
ACCT = "acc-stream-1"
ENVELOPES = [
    # (version, event_type, schema_version, data, event_id)
    (1, "AccountOpened", 1, {"owner": "erin", "currency": "EUR"}, "019ac0de-0000-7000-8000-000000000001"),
    (2, "Deposited", 1, {"amount": 250}, "019ac0de-0000-7000-8000-000000000002"),
    (3, "Withdrawn", 1, {"amount": 50}, "019ac0de-0000-7000-8000-000000000003"),
]


def envelope(v, t, sv, data, eid):
    return {
        "event_id": eid,
        "aggregate_type": "accounts",
        "aggregate_id": ACCT,
        "version": v,
        "event_type": t,
        "schema_version": sv,
        "data": data,
        "metadata": {"command_id": "019ac0de-0000-7000-9000-00000000000" + str(v)},
        "recorded_at": f"2026-11-26T12:00:0{v}.000000Z",
    }


def stream_record(seq, keys, image):
    return {
        "eventID": f"evt-{seq}",
        "eventName": "INSERT",
        "eventVersion": "1.1",
        "eventSource": "aws:dynamodb",
        "awsRegion": "us-east-1",
        "dynamodb": {
            "ApproximateCreationDateTime": 1795694400,
            "Keys": keys,
            "NewImage": image,
            "SequenceNumber": f"{seq:021d}",
            "SizeBytes": 320,
            "StreamViewType": "NEW_IMAGE",
        },
        "eventSourceARN": STREAM_ARN,
    }


def dynamodb_batch():
    records = []
    for i, (v, t, sv, data, eid) in enumerate(ENVELOPES):
        e = envelope(v, t, sv, data, eid)
        keys = {"stream": {"S": f"accounts#{ACCT}"}, "version": {"N": str(v)}}
        image = {
            **keys,
            "event_id": {"S": e["event_id"]},
            "aggregate_type": {"S": "accounts"},
            "aggregate_id": {"S": ACCT},
            "event_type": {"S": t},
            "schema_version": {"N": str(sv)},
            "data": {"S": json.dumps(data, separators=(",", ":"))},
            "metadata": {"M": {"command_id": {"S": e["metadata"]["command_id"]}}},
            "recorded_at": {"S": e["recorded_at"]},
        }
        records.append(stream_record(100 + i * 10, keys, image))
        if v == 2:
            # The command's idempotency record, written in the same transaction.
            ikeys = {"stream": {"S": "idempotency#deposit-250"}, "version": {"N": "0"}}
            records.append(stream_record(101 + i * 10, ikeys, {
                **ikeys,
                "key": {"S": "deposit-250"},
                "fingerprint": {"S": "0" * 64},
                "aggregate_type": {"S": "accounts"},
                "aggregate_id": {"S": ACCT},
                "response": {"S": "{}"},
                "recorded_at": {"S": e["recorded_at"]},
            }))
    return {"Records": records}


def kinesis_batch():
    records = []
    for i, (v, t, sv, data, eid) in enumerate(ENVELOPES):
        e = envelope(v, t, sv, data, eid)
        if t == "Deposited":  # the publisher sends events upcast to the current schema
            e["schema_version"] = 2
            e["data"] = {**data, "currency": "EUR"}
        records.append({
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "partitionKey": ACCT,
                "sequenceNumber": f"4959000000000000000000000000000000000000000000000000{i}",
                "data": base64.b64encode(json.dumps(e).encode()).decode(),
                "approximateArrivalTimestamp": 1795694400.5,
            },
            "eventSource": "aws:kinesis",
            "eventVersion": "1.0",
            "eventID": f"shardId-000000000000:4959{i}",
            "eventName": "aws:kinesis:record",
            "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/chronicle-activity",
            "awsRegion": "us-east-1",
            "eventSourceARN": f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/chronicle-events",
        })
    return {"Records": records}


# The published OrderPlaced of ord-2 (3 of sku-1, 1 of sku-2), as the publisher puts it on
# Kinesis: the envelope, keyed by the order's id.
ORDER_PLACED = {
    "event_id": "019ac0de-0000-7000-8000-000000000201",
    "aggregate_type": "orders",
    "aggregate_id": "ord-2",
    "version": 1,
    "event_type": "OrderPlaced",
    "schema_version": 1,
    "data": {"customer": "c-2", "lines": [{"sku": "sku-1", "quantity": 3}, {"sku": "sku-2", "quantity": 1}]},
    "metadata": {"command_id": "019ac0de-0000-7000-9000-000000000201"},
    "recorded_at": "2026-11-26T12:00:10.000000Z",
}


def orders_batch():
    e = ORDER_PLACED
    return {"Records": [{
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "partitionKey": e["aggregate_id"],
            "sequenceNumber": "49590000000000000000000000000000000000000000000000010",
            "data": base64.b64encode(json.dumps(e).encode()).decode(),
            "approximateArrivalTimestamp": 1795694410.5,
        },
        "eventSource": "aws:kinesis",
        "eventVersion": "1.0",
        "eventID": "shardId-000000000000:495910",
        "eventName": "aws:kinesis:record",
        "invokeIdentityArn": f"arn:aws:iam::{ACCOUNT}:role/chronicle-reactor",
        "awsRegion": "us-east-1",
        "eventSourceARN": f"arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/chronicle-events",
    }]}


def schedule_event():
    return {
        "version": "0",
        "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT,
        "time": "2026-11-26T03:00:00Z",
        "region": "us-east-1",
        "resources": [f"arn:aws:events:us-east-1:{ACCOUNT}:rule/chronicle-archiver-daily"],
        "detail": {},
    }


def write(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as fh:
        json.dump(value, fh, indent=2)
        fh.write("\n")


def main():
    write("events/dynamodb/stream-batch.json", dynamodb_batch())
    write("events/kinesis/batch.json", kinesis_batch())
    write("events/kinesis/orders-batch.json", orders_batch())
    write("events/eventbridge/schedule.json", schedule_event())
    for f in os.listdir(OUT):
        if f.endswith(".json"):
            os.remove(os.path.join(OUT, f))
    manifest = []
    for i, (name, function, status, code, ev) in enumerate(CASES):
        file = f"{i:02d}-{name}.json"
        with open(os.path.join(OUT, file), "w") as fh:
            json.dump(ev, fh, indent=2)
            fh.write("\n")
        manifest.append({"file": file, "function": function, "status": status, "code": code})
    with open(os.path.join(OUT, "manifest.json"), "w") as fh:
        json.dump(manifest, fh, indent=2)
        fh.write("\n")
    print(f"wrote {len(manifest)} requests to {OUT}")


if __name__ == "__main__":
    main()
