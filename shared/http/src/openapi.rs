//! `GET /openapi.json`: an OpenAPI 3.1 document of the API as registered. Every aggregate type
//! gets its own paths, with its commands' and views' JSON Schemas taken from the domain's types
//! (schemars), its list read model's query fields, and the error body, codes and headers the
//! router answers with.

use crate::{Routes, DEFAULT_PAGE, MAX_BODY_BYTES, MAX_IDEMPOTENCY_KEY, MAX_PAGE};
use chronicle_kernel::{Chronicle, CommandResult, EventEnvelope};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

/// The pattern every aggregate id matches ([`chronicle_kernel::validate_id`]).
pub const ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,128}$";

/// Error codes the router itself answers with, by status.
const CODES: &[(u16, &[&str])] = &[
    (
        400,
        &[
            "malformed_json",
            "invalid_command",
            "invalid_id",
            "invalid_header",
            "invalid_query",
            "invalid_path",
            "invalid_version",
        ],
    ),
    (
        404,
        &[
            "not_found",
            "version_not_found",
            "unknown_aggregate_type",
            "unknown_projection",
            "route_not_found",
            "no_list_model",
        ],
    ),
    (405, &["method_not_allowed"]),
    (
        409,
        &[
            "version_conflict",
            "rebuild_in_progress",
            "rebuild_unavailable",
        ],
    ),
    (413, &["payload_too_large"]),
    (422, &["idempotency_key_reused", "too_many_events"]),
    (500, &["schema_error", "decode_error", "store_corrupt"]),
    (503, &["store_busy", "store_unavailable"]),
];

fn codes(status: u16) -> &'static [&'static str] {
    CODES
        .iter()
        .find(|(s, _)| *s == status)
        .map_or(&[], |(_, c)| *c)
}

/// The document for a router serving `routes` over `chronicle`'s registration. `Routes::All`
/// (the local server) adds the operators' routes; `Routes::Commands` and `Routes::Reads` (the
/// two functions behind one API on AWS) describe the whole public API.
pub fn document(chronicle: &Chronicle, routes: Routes) -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let mut paths = Map::new();
    paths.insert("/health".into(), health());
    paths.insert("/openapi.json".into(), openapi());
    paths.insert("/audit/events".into(), audit());
    let result = generator.subschema_for::<CommandResult>();
    let envelope = generator.subschema_for::<EventEnvelope>();
    for t in chronicle.aggregate_types() {
        let Some(svc) = chronicle.aggregate(t) else {
            continue;
        };
        let api = svc.describe(&mut generator);
        let personal = svc.schema().personal_data().next().is_some();
        if accepts_client_commands(&api.command) {
            paths.insert(
                format!("/{t}/{{id}}/commands"),
                command(t, &api, result.clone(), personal),
            );
        }
        paths.insert(format!("/{t}/{{id}}"), state(t, api.view.clone()));
        paths.insert(format!("/{t}/{{id}}/events"), history(t, envelope.clone()));
        if let Some(list) = chronicle.list_projection(t) {
            let doc = list
                .document_schema(&mut generator)
                .map_or_else(|| json!({"type": "object"}), |s| s.to_value());
            paths.insert(format!("/{t}"), list_route(t, list.indexes(), doc));
        }
    }
    if routes == Routes::All {
        let forgotten = generator.subschema_for::<chronicle_kernel::Forgotten>();
        admin(&mut paths, forgotten.to_value());
    }
    let mut schemas = generator.take_definitions(true);
    schemas.insert("Error".into(), error_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Chronicle",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "An event store's HTTP API: commands append events to an aggregate's stream \
                (optimistic concurrency on its version, idempotency keys), reads fold them into \
                state (now, at a version, at a time), history and the audit feed show them as \
                stored, and read models answer lists. Errors are JSON \
                {\"error\":{\"code\",\"message\"}}; a refused request stores nothing.",
        },
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "paths": paths,
        "components": {
            "schemas": schemas,
            "headers": headers(),
            "parameters": parameters(),
        },
    })
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "description": "Stable and machine-readable."},
                    "message": {"type": "string", "description": "For people."},
                    "expected_version": {"type": "integer", "minimum": 0, "description": "version_conflict: the version the command expected."},
                    "actual_version": {"type": "integer", "minimum": 0, "description": "version_conflict: the stream's version."},
                },
            },
        },
    })
}

/// An error answer with `status`: its codes (the router's and `extra`) in the description.
fn error(status: u16, what: &str, extra: &[&str]) -> Value {
    let all: Vec<String> = codes(status)
        .iter()
        .chain(extra)
        .map(|c| format!("`{c}`"))
        .collect();
    let mut r = json!({
        "description": format!("{what}. Codes: {}.", all.join(", ")),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    });
    if status == 503 {
        r["headers"] = json!({"Retry-After": {"$ref": "#/components/headers/Retry-After"}});
    }
    if status == 413 || status == 405 || status == 404 || status == 400 {
        // Refusals before the body was read may ask the client to close the connection.
        r["headers"] = json!({"Connection": {"schema": {"type": "string"}}});
    }
    r
}

/// The errors every route can answer with.
fn common_errors(responses: &mut Map<String, Value>) {
    responses.insert("400".into(), error(400, "Malformed or invalid input", &[]));
    responses.insert(
        "404".into(),
        error(404, "Unknown aggregate, version or route", &[]),
    );
    responses.insert(
        "405".into(),
        error(405, "The route does not take this method", &[]),
    );
    responses.insert(
        "500".into(),
        error(
            500,
            "A stored event that cannot be upcast or decoded (never skipped silently)",
            &[],
        ),
    );
    responses.insert(
        "503".into(),
        error(
            503,
            "The store is throttling, did not answer in time, or failed; retry after Retry-After seconds",
            &[],
        ),
    );
}

fn ok(description: &str, schema: Value) -> Value {
    json!({
        "description": description,
        "content": {"application/json": {"schema": schema}},
    })
}

fn operation(id: &str, summary: &str, tags: &[&str], ok: Value, params: Vec<Value>) -> Value {
    let mut responses = Map::new();
    responses.insert("200".into(), ok);
    common_errors(&mut responses);
    json!({
        "operationId": id,
        "summary": summary,
        "tags": tags,
        "parameters": params,
        "responses": responses,
    })
}

fn id_param(t: &str) -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "description": format!("The {t} aggregate's id: 1 to 128 characters from A-Z, a-z, 0-9, '.', '_', ':' and '-'."),
        "schema": {"type": "string", "pattern": ID_PATTERN},
    })
}

fn query(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn time(description: &str) -> Value {
    json!({"type": "string", "format": "date-time", "description": description})
}

/// A flag: `true`, `1` or empty (`?raw`) turn it on, `false` or `0` off.
fn boolean() -> Value {
    json!({"type": "string", "enum": ["true", "false", "1", "0", ""]})
}

fn limit(default: usize) -> Value {
    json!({"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": default})
}

/// False when every command of the type is internal (Chronicle's own `_subjects`): the route
/// then refuses every client command, and a schema with no variant left describes nothing.
fn accepts_client_commands(command: &schemars::Schema) -> bool {
    !["oneOf", "anyOf"].iter().any(|k| {
        command
            .get(*k)
            .and_then(Value::as_array)
            .is_some_and(Vec::is_empty)
    })
}

fn command(
    t: &str,
    api: &chronicle_kernel::AggregateApi,
    result: schemars::Schema,
    personal: bool,
) -> Value {
    let mut op = operation(
        &format!("{t}_command"),
        &format!("Run a command on a {t} aggregate"),
        &[t],
        json!({
            "description": "The events the command appended (none when it changed nothing), and the version after them.",
            "headers": {
                "ETag": {"$ref": "#/components/headers/ETag"},
                "Idempotent-Replayed": {"$ref": "#/components/headers/Idempotent-Replayed"},
            },
            "content": {"application/json": {"schema": result.to_value()}},
        }),
        vec![
            id_param(t),
            json!({"$ref": "#/components/parameters/If-Match"}),
            json!({"$ref": "#/components/parameters/Idempotency-Key"}),
            json!({"$ref": "#/components/parameters/X-Correlation-Id"}),
            json!({"$ref": "#/components/parameters/X-Causation-Id"}),
        ],
    );
    let mut description = format!(
        "Validates the command (400 names the field), decides it against the aggregate's current \
         state and appends the events, atomically and only at the expected version. The body is at \
         most {MAX_BODY_BYTES} bytes."
    );
    if !api.internal.is_empty() {
        description.push_str(&format!(
            " Commands only the domain's reactions issue are refused (400 invalid_command): {}.",
            api.internal.join(", ")
        ));
    }
    op["description"] = json!(description);
    op["requestBody"] = json!({
        "required": true,
        "description": "The command, tagged by `type`.",
        "content": {"application/json": {"schema": api.command.clone().to_value()}},
    });
    let responses = op["responses"].as_object_mut().expect("an object");
    responses.insert(
        "404".into(),
        error(
            404,
            "Unknown aggregate type or route, or the domain says the aggregate does not exist",
            api.refusals,
        ),
    );
    responses.insert(
        "409".into(),
        error(
            409,
            "If-Match named another version than the stream's (nothing stored)",
            &[],
        ),
    );
    responses.insert("413".into(), error(413, "The body is over the limit", &[]));
    let mut refusals = api.refusals.to_vec();
    if personal {
        refusals.push("subject_forgotten");
    }
    responses.insert(
        "422".into(),
        error(
            422,
            "A domain rule refused the command, the idempotency key was used with another command, or the command carries personal data of a forgotten subject (nothing stored)",
            &refusals,
        ),
    );
    json!({"post": op})
}

fn state(t: &str, view: schemars::Schema) -> Value {
    let op = operation(
        &format!("{t}_state"),
        &format!("A {t} aggregate's state"),
        &[t],
        json!({
            "description": "The state from the read model (eventually consistent), or folded from the store with `consistent`, `version` or `at`.",
            "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
            "content": {"application/json": {"schema": view.to_value()}},
        }),
        vec![
            id_param(t),
            query("consistent", "Fold the state from the store now instead of reading the read model.", boolean()),
            query("version", "The state as of this version (not with `at`).", json!({"type": "integer", "minimum": 1})),
            query("at", "The state as of this time: the newest version recorded at or before it (not with `version`).", time("RFC 3339")),
        ],
    );
    json!({"get": op})
}

fn history(t: &str, envelope: schemars::Schema) -> Value {
    let op = operation(
        &format!("{t}_history"),
        &format!("A {t} aggregate's events"),
        &[t],
        ok(
            "A page of events in version order; `next_from_version` continues it (null on the last page).",
            json!({
                "type": "object",
                "required": ["aggregate_id", "events", "next_from_version"],
                "properties": {
                    "aggregate_id": {"type": "string"},
                    "events": {"type": "array", "items": envelope.to_value()},
                    "next_from_version": {"type": ["integer", "null"], "minimum": 1},
                },
            }),
        ),
        vec![
            id_param(t),
            query("from_version", "First version (default 1).", json!({"type": "integer", "minimum": 1})),
            query("to_version", "Last version, not below `from_version`.", json!({"type": "integer", "minimum": 1})),
            query("from", "Only events recorded at or after this time.", time("RFC 3339")),
            query("to", "Only events recorded at or before this time.", time("RFC 3339")),
            query("event_type", "Only events of this type.", json!({"type": "string"})),
            query("limit", "Events per page.", limit(DEFAULT_PAGE)),
            query("raw", "Events as stored, before upcasting.", boolean()),
        ],
    );
    json!({"get": op})
}

fn list_route(t: &str, fields: &[&'static str], doc: Value) -> Value {
    let mut params: Vec<Value> = fields
        .iter()
        .map(|f| {
            json!({
                "name": f, "in": "query",
                // With one field it is the one to give; with several, exactly one of them.
                "required": fields.len() == 1,
                "description": format!("List the {t} whose `{f}` is this value (exactly one field per request)."),
                "schema": {"type": "string"},
            })
        })
        .collect();
    params.push(query("limit", "At most this many.", limit(DEFAULT_PAGE)));
    let op = operation(
        &format!("{t}_list"),
        &format!("List {t} by {}", fields.join(" or ")),
        &[t],
        ok(
            "The read model's documents (eventually consistent).",
            json!({
                "type": "object",
                "required": [t],
                "properties": {t: {"type": "array", "items": doc}},
            }),
        ),
        params,
    );
    json!({"get": op})
}

fn audit() -> Value {
    let envelope = json!({"$ref": "#/components/schemas/EventEnvelope"});
    let mut op = operation(
        "audit_events",
        "Every event recorded in a time range, across aggregates",
        &["audit"],
        ok(
            "A page in recorded order; pass `next` as `after` for the next page (null after the last).",
            json!({
                "type": "object",
                "required": ["events", "next"],
                "properties": {
                    "events": {"type": "array", "items": envelope},
                    "next": {"type": ["string", "null"]},
                },
            }),
        ),
        vec![
            json!({"name": "from", "in": "query", "required": true, "description": "Start, inclusive.", "schema": time("RFC 3339")}),
            json!({"name": "to", "in": "query", "required": true, "description": "End, inclusive.", "schema": time("RFC 3339")}),
            query("limit", "Events per page.", json!({"type": "integer", "minimum": 1, "maximum": chronicle_kernel::audit::AUDIT_MAX_LIMIT, "default": chronicle_kernel::audit::AUDIT_DEFAULT_LIMIT})),
            query("after", "The `next` of the page before (anything else is 400).", json!({"type": "string", "pattern": "^[0-9a-f]+$"})),
            query("raw", "Events as stored, before upcasting.", boolean()),
        ],
    );
    op["description"] = json!("The order, and when a range is complete: docs/audit-feed.md.");
    json!({"get": op})
}

fn health() -> Value {
    json!({"get": operation(
        "health", "Liveness", &["operations"],
        ok("Serving.", json!({"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})),
        vec![],
    )})
}

fn openapi() -> Value {
    json!({"get": operation(
        "openapi", "This document", &["operations"],
        ok("OpenAPI 3.1.", json!({"type": "object"})),
        vec![],
    )})
}

/// The operators' routes of the local server.
fn admin(paths: &mut Map<String, Value>, forgotten: Value) {
    paths.insert(
        "/admin/projections".into(),
        json!({"get": operation(
            "admin_projections", "Every projection's state, checkpoint, lag and last rebuild", &["operations"],
            ok("Statuses.", json!({"type": "object", "required": ["projections"], "properties": {"projections": {"type": "array", "items": {"type": "object"}}}})),
            vec![],
        )}),
    );
    paths.insert(
        "/admin/reactions".into(),
        json!({"get": operation(
            "admin_reactions", "Every reaction's state, checkpoint, lag and refused commands", &["operations"],
            ok("Statuses.", json!({"type": "object", "required": ["reactions"], "properties": {"reactions": {"type": "array", "items": {"type": "object"}}}})),
            vec![],
        )}),
    );
    let mut rebuild = operation(
        "admin_rebuild",
        "Rebuild a projection in the background",
        &["operations"],
        ok("Unused.", json!({"type": "object"})),
        vec![json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}})],
    );
    let responses = rebuild["responses"].as_object_mut().expect("an object");
    responses.remove("200");
    responses.insert(
        "202".into(),
        json!({
            "description": "Started (or resumed); GET /admin/projections shows its progress.",
            "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["projection", "state", "status"],
                "properties": {"projection": {"type": "string"}, "state": {"type": "string"}, "status": {"type": "string"}},
            }}},
        }),
    );
    responses.insert(
        "409".into(),
        error(
            409,
            "A rebuild of it is running, or this store has no feed to rebuild from",
            &[],
        ),
    );
    paths.insert(
        "/admin/projections/{name}/rebuild".into(),
        json!({ "post": rebuild }),
    );
    let mut forget = operation(
        "admin_forget_subject",
        "Forget a data subject: destroy its key, record the erasure",
        &["operations"],
        ok(
            "Forgotten (repeats answer the same, with `key_destroyed` and `recorded` false). Its personal fields now read null, listed under `erased`; commands carrying personal data for it are refused with 422 subject_forgotten.",
            forgotten,
        ),
        vec![json!({
            "name": "subject", "in": "path", "required": true,
            "description": "The data subject's id (what the domain's personal fields name as their subject).",
            "schema": {"type": "string", "pattern": ID_PATTERN},
        })],
    );
    forget["description"] = json!("Crypto-shredding: docs/erasure.md.");
    paths.insert(
        "/admin/subjects/{subject}/forget".into(),
        json!({ "post": forget }),
    );
}

fn headers() -> Value {
    json!({
        "ETag": {
            "description": "The aggregate's version the answer reflects, quoted.",
            "required": true,
            "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"},
        },
        "Idempotent-Replayed": {
            "description": "`true` when the answer is the stored result of an earlier command with the same Idempotency-Key (nothing was appended).",
            "schema": {"type": "string", "enum": ["true"]},
        },
        "Retry-After": {
            "description": "Seconds to wait before retrying.",
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        },
    })
}

fn parameters() -> Value {
    json!({
        "If-Match": {
            "name": "If-Match", "in": "header", "required": false,
            "description": "Run only if the aggregate is at this version (3, \"3\" or W/\"3\"); else 409 version_conflict and nothing stored.",
            "schema": {"type": "string", "pattern": "^(W/)?\"?[0-9]{1,19}\"?$"},
        },
        "Idempotency-Key": {
            "name": "Idempotency-Key", "in": "header", "required": false,
            "description": "Retries with the same key and command get the first answer and store nothing; the key with another command is 422 idempotency_key_reused.",
            "schema": {"type": "string", "minLength": 1, "maxLength": MAX_IDEMPOTENCY_KEY},
        },
        "X-Correlation-Id": {
            "name": "X-Correlation-Id", "in": "header", "required": false,
            "description": "Stored in the events' metadata.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
        },
        "X-Causation-Id": {
            "name": "X-Causation-Id", "in": "header", "required": false,
            "description": "Stored in the events' metadata.",
            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use chronicle_kernel::validate_id;

    #[test]
    fn the_id_pattern_is_validate_ids() {
        assert!(validate_id(&"a".repeat(128)).is_ok());
        assert!(validate_id(&"a".repeat(129)).is_err());
        assert_eq!(ID_PATTERN, "^[A-Za-z0-9._:-]{1,128}$");
    }
}
