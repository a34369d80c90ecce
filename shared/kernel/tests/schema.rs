//! `EventSchema`: chained upcasters over a synthetic event type with three schema versions,
//! and every way an upcast can fail.

use chronicle_kernel::{Error, EventEnvelope, EventSchema, Metadata, UpcastError};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

/// `ItemAdded`, three versions:
/// - v1 `{"name": "apple", "qty": 3}`
/// - v2 `{"sku": "apple", "qty": 3}` (`name` renamed to `sku`)
/// - v3 `{"sku": "apple", "quantity": {"value": 3, "unit": "pcs"}}` (quantity with its unit)
///
/// `ItemRemoved` is at v1, with no upcasters.
const ITEM_ADDED: &str = "ItemAdded";
const ITEM_REMOVED: &str = "ItemRemoved";

fn v1_to_v2(mut data: Value) -> Result<Value, String> {
    let obj = data.as_object_mut().ok_or("v1 data is not an object")?;
    let name = obj.remove("name").ok_or("v1 has no `name`")?;
    obj.insert("sku".into(), name);
    Ok(data)
}

fn v2_to_v3(mut data: Value) -> Result<Value, String> {
    let obj = data.as_object_mut().ok_or("v2 data is not an object")?;
    let qty = obj
        .remove("qty")
        .and_then(|q| q.as_u64())
        .ok_or("v2 has no integer `qty`")?;
    obj.insert("quantity".into(), json!({"value": qty, "unit": "pcs"}));
    Ok(data)
}

fn schema() -> EventSchema {
    EventSchema::new()
        .event(ITEM_ADDED, 3)
        .event(ITEM_REMOVED, 1)
        // Registered out of order on purpose: the chain follows versions, not registration.
        .upcaster(ITEM_ADDED, 2, v2_to_v3)
        .upcaster(ITEM_ADDED, 1, v1_to_v2)
}

fn envelope(event_type: &str, schema_version: u32, data: Value) -> EventEnvelope {
    EventEnvelope {
        event_id: Uuid::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0042),
        aggregate_type: "carts".into(),
        aggregate_id: "cart-9".into(),
        version: 7,
        event_type: event_type.into(),
        schema_version,
        data,
        metadata: Metadata {
            correlation_id: Some("corr".into()),
            ..Metadata::default()
        },
        recorded_at: chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        hash: String::new(),
    }
}

fn v3_data() -> Value {
    json!({"sku": "apple", "quantity": {"value": 3, "unit": "pcs"}})
}

#[test]
fn current_versions_are_declared() {
    let s = schema();
    assert_eq!(s.current_version(ITEM_ADDED), Some(3));
    assert_eq!(s.current_version(ITEM_REMOVED), Some(1));
    assert_eq!(s.current_version("ItemRenamed"), None);
    assert_eq!(EventSchema::new().current_version(ITEM_ADDED), None);
    // Declaring a type again replaces its current version.
    assert_eq!(
        EventSchema::new()
            .event(ITEM_ADDED, 1)
            .event(ITEM_ADDED, 2)
            .current_version(ITEM_ADDED),
        Some(2)
    );
}

#[test]
fn v1_is_upcast_through_v2_to_v3() {
    let v1 = envelope(ITEM_ADDED, 1, json!({"name": "apple", "qty": 3}));
    let up = schema().upcast(v1.clone()).unwrap();
    assert_eq!(up.schema_version, 3);
    assert_eq!(up.data, v3_data());
    // Only the data and schema version change.
    let expected = EventEnvelope {
        schema_version: 3,
        data: v3_data(),
        ..v1
    };
    assert_eq!(up, expected);
}

#[test]
fn v2_takes_only_the_last_step() {
    let v2 = envelope(ITEM_ADDED, 2, json!({"sku": "apple", "qty": 3}));
    let up = schema().upcast(v2).unwrap();
    assert_eq!(up.schema_version, 3);
    assert_eq!(up.data, v3_data());
}

#[test]
fn the_current_version_is_unchanged() {
    let v3 = envelope(ITEM_ADDED, 3, v3_data());
    assert_eq!(schema().upcast(v3.clone()).unwrap(), v3);
    let removed = envelope(ITEM_REMOVED, 1, json!({"sku": "apple"}));
    assert_eq!(schema().upcast(removed.clone()).unwrap(), removed);
}

#[test]
fn upcasters_run_in_version_order_once_each() {
    let calls: Arc<Mutex<Vec<u32>>> = Arc::default();
    let step = |from: u32| {
        let calls = calls.clone();
        move |mut data: Value| {
            calls.lock().unwrap().push(from);
            let trail = data["trail"].as_array_mut().ok_or("no trail")?;
            trail.push(json!(from));
            Ok(data)
        }
    };
    let s = EventSchema::new()
        .event("Traced", 4)
        .upcaster("Traced", 3, step(3))
        .upcaster("Traced", 1, step(1))
        .upcaster("Traced", 2, step(2));
    let up = s
        .upcast(envelope("Traced", 1, json!({"trail": []})))
        .unwrap();
    assert_eq!(up.data, json!({"trail": [1, 2, 3]}));
    assert_eq!(up.schema_version, 4);
    assert_eq!(*calls.lock().unwrap(), [1, 2, 3]);

    calls.lock().unwrap().clear();
    let up = s
        .upcast(envelope("Traced", 3, json!({"trail": []})))
        .unwrap();
    assert_eq!(up.data, json!({"trail": [3]}));
    assert_eq!(*calls.lock().unwrap(), [3]);

    calls.lock().unwrap().clear();
    s.upcast(envelope("Traced", 4, json!({"trail": []})))
        .unwrap();
    assert!(calls.lock().unwrap().is_empty());
}

#[test]
fn upcasters_are_per_event_type() {
    // An upcaster of another type at the same version is not used.
    let s = EventSchema::new()
        .event("A", 2)
        .event("B", 2)
        .upcaster("B", 1, |_| Ok(json!({"from": "B"})));
    assert_eq!(
        s.upcast(envelope("A", 1, json!({}))),
        Err(UpcastError::MissingUpcaster {
            event_type: "A".into(),
            from: 1,
        })
    );
    assert_eq!(
        s.upcast(envelope("B", 1, json!({}))).unwrap().data,
        json!({"from": "B"})
    );
}

#[test]
fn a_missing_step_in_the_chain_is_reported() {
    // v1 -> v2 exists but v2 -> v3 doesn't.
    let s = EventSchema::new()
        .event(ITEM_ADDED, 3)
        .upcaster(ITEM_ADDED, 1, v1_to_v2);
    let err = s
        .upcast(envelope(ITEM_ADDED, 1, json!({"name": "apple", "qty": 3})))
        .unwrap_err();
    assert_eq!(
        err,
        UpcastError::MissingUpcaster {
            event_type: ITEM_ADDED.into(),
            from: 2,
        }
    );
    assert_eq!(
        err.to_string(),
        "no upcaster for `ItemAdded` from schema version 2"
    );
    // The first step missing.
    let s = EventSchema::new()
        .event(ITEM_ADDED, 3)
        .upcaster(ITEM_ADDED, 2, v2_to_v3);
    assert_eq!(
        s.upcast(envelope(ITEM_ADDED, 1, json!({"name": "apple", "qty": 3}))),
        Err(UpcastError::MissingUpcaster {
            event_type: ITEM_ADDED.into(),
            from: 1,
        })
    );
    // ...while a v2 still upcasts fine.
    assert_eq!(
        s.upcast(envelope(ITEM_ADDED, 2, json!({"sku": "apple", "qty": 3})))
            .unwrap()
            .data,
        v3_data()
    );
}

#[test]
fn a_failing_upcaster_is_reported_with_its_step_and_reason() {
    // The first step fails: no `name`.
    let err = schema()
        .upcast(envelope(ITEM_ADDED, 1, json!({"qty": 3})))
        .unwrap_err();
    assert_eq!(
        err,
        UpcastError::Failed {
            event_type: ITEM_ADDED.into(),
            from: 1,
            reason: "v1 has no `name`".into(),
        }
    );
    assert_eq!(
        err.to_string(),
        "upcasting `ItemAdded` from schema version 1 failed: v1 has no `name`"
    );
    // The second step fails after the first succeeded.
    assert_eq!(
        schema().upcast(envelope(
            ITEM_ADDED,
            1,
            json!({"name": "apple", "qty": "three"})
        )),
        Err(UpcastError::Failed {
            event_type: ITEM_ADDED.into(),
            from: 2,
            reason: "v2 has no integer `qty`".into(),
        })
    );
    assert_eq!(
        schema().upcast(envelope(ITEM_ADDED, 2, json!("not an object"))),
        Err(UpcastError::Failed {
            event_type: ITEM_ADDED.into(),
            from: 2,
            reason: "v2 data is not an object".into(),
        })
    );
}

#[test]
fn an_unknown_event_type_is_refused() {
    let err = schema()
        .upcast(envelope("ItemRenamed", 1, json!({})))
        .unwrap_err();
    assert_eq!(
        err,
        UpcastError::UnknownEventType {
            event_type: "ItemRenamed".into(),
            stream: "carts/cart-9".into(),
            version: 7,
        }
    );
    assert_eq!(
        err.to_string(),
        "unknown event type `ItemRenamed` (stored as carts/cart-9 v7)"
    );
    // Event types are case-sensitive.
    assert!(matches!(
        schema().upcast(envelope("itemadded", 3, v3_data())),
        Err(UpcastError::UnknownEventType { .. })
    ));
    // An empty schema knows nothing.
    assert!(matches!(
        EventSchema::new().upcast(envelope(ITEM_ADDED, 1, json!({}))),
        Err(UpcastError::UnknownEventType { .. })
    ));
}

#[test]
fn a_newer_schema_version_is_refused() {
    let err = schema()
        .upcast(envelope(ITEM_ADDED, 4, json!({"sku": "apple"})))
        .unwrap_err();
    assert_eq!(
        err,
        UpcastError::NewerSchemaVersion {
            event_type: ITEM_ADDED.into(),
            found: 4,
            current: 3,
            stream: "carts/cart-9".into(),
            version: 7,
        }
    );
    assert_eq!(
        err.to_string(),
        "event `ItemAdded` has schema version 4, newer than the 3 this build knows \
         (stored as carts/cart-9 v7)"
    );
    assert!(matches!(
        schema().upcast(envelope(ITEM_REMOVED, 2, json!({}))),
        Err(UpcastError::NewerSchemaVersion {
            found: 2,
            current: 1,
            ..
        })
    ));
}

#[test]
fn upcast_errors_are_schema_errors_for_callers() {
    let err: Error = schema()
        .upcast(envelope("ItemRenamed", 1, json!({})))
        .unwrap_err()
        .into();
    assert_eq!(err.code(), "schema_error");
    assert!(matches!(
        err,
        Error::Schema(UpcastError::UnknownEventType { .. })
    ));
}

#[test]
fn a_cloned_schema_shares_its_upcasters() {
    let s = schema();
    let c = s.clone();
    drop(s);
    assert_eq!(
        c.upcast(envelope(ITEM_ADDED, 1, json!({"name": "apple", "qty": 3})))
            .unwrap()
            .data,
        v3_data()
    );
    let debug = format!("{c:?}");
    assert!(debug.contains("ItemAdded"), "{debug}");
}
