//! Personal data and its erasure by crypto-shredding.
//!
//! A domain declares, per event type, which fields are personal data and whose (the data
//! subject: a field of the event, or the aggregate id) — [`crate::EventSchema::personal`]. The
//! command handler encrypts those fields with the subject's key (XChaCha20-Poly1305, a fresh
//! random nonce per field) before anything is stored, so events, snapshots, read models,
//! archive segments, the publish log and Kinesis records only ever hold a token:
//!
//! ```text
//! "email": "pii:v1:ZGFuYQ:<base64url of nonce || ciphertext || tag>"
//! ```
//!
//! The hash chain covers the token, so destroying a key ([`crate::Chronicle::forget`]) changes
//! no stored event and every chain still verifies. Tokens are opened only at the read edges
//! (the HTTP API's answers, the CLI's output) by [`reveal`]: with the key the plaintext comes
//! back; once the subject is forgotten the field reads `null` and the object holding it lists it
//! under `"erased"`.

pub(crate) mod subjects;

use crate::error::{Error, StoreError};
use crate::ports::{DataKey, KeyStore, SubjectKey};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet, HashMap};

pub use subjects::{SUBJECTS_TYPE, SUBJECT_FORGOTTEN};

/// What every token starts with.
pub const TOKEN_PREFIX: &str = "pii:v1:";
/// The key an object lists its erased fields under, in what [`reveal`] returns.
pub const ERASED: &str = "erased";
/// Bound into every ciphertext: a token is only ever opened as one of Chronicle's.
const AAD: &[u8] = b"chronicle personal field v1";
const NONCE_LEN: usize = 24;

/// Whose personal data an event type's fields are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubjectOf {
    /// The subject id is this (top-level, string) field of the event.
    Field(String),
    /// The subject id is the aggregate's id (a `customers/{id}` stream, say).
    AggregateId,
}

impl SubjectOf {
    pub fn field(name: &str) -> Self {
        Self::Field(name.to_owned())
    }
}

/// One event type's personal fields (top-level fields of its data) and their subject.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonalFields {
    pub subject: SubjectOf,
    pub fields: Vec<String>,
}

/// Seals `value` with `key` into a token naming `subject`.
pub fn seal(key: &DataKey, subject: &str, value: &Value) -> Result<String, Error> {
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
    let plain = serde_json::to_vec(value).map_err(|e| Error::Decode(e.to_string()))?;
    let sealed = cipher
        .encrypt(
            &nonce,
            Payload {
                msg: &plain,
                aad: AAD,
            },
        )
        .map_err(|_| Error::Store(StoreError::Backend("encryption failed".into())))?;
    let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
    bytes.extend_from_slice(&nonce);
    bytes.extend_from_slice(&sealed);
    Ok(format!(
        "{TOKEN_PREFIX}{}:{}",
        B64.encode(subject.as_bytes()),
        B64.encode(bytes)
    ))
}

/// A token's subject and sealed bytes; `None` for any other string.
pub fn parse_token(s: &str) -> Option<(String, Vec<u8>)> {
    let rest = s.strip_prefix(TOKEN_PREFIX)?;
    let (subject, sealed) = rest.split_once(':')?;
    let subject = String::from_utf8(B64.decode(subject).ok()?).ok()?;
    let sealed = B64.decode(sealed).ok()?;
    (sealed.len() > NONCE_LEN).then_some((subject, sealed))
}

/// The value sealed in `sealed` (from [`parse_token`]); `None` if `key` is not the one it was
/// sealed with or the bytes were altered.
pub fn open(key: &DataKey, sealed: &[u8]) -> Option<Value> {
    let cipher = XChaCha20Poly1305::new(key.bytes().into());
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let plain = cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: body,
                aad: AAD,
            },
        )
        .ok()?;
    serde_json::from_slice(&plain).ok()
}

/// A data subject id: what [`crate::validate_id`] accepts (it names the subject's erasure
/// record, `_subjects/{id}`).
pub fn validate_subject(subject: &str) -> Result<(), Error> {
    crate::validate_id(subject).map_err(|e| {
        Error::invalid(
            "invalid_subject",
            format!(
                "a data subject id {}",
                e.to_string().trim_start_matches("an id ")
            ),
        )
    })
}

/// One event's data to seal: its personal values, by field, and their subject.
struct Pending<'a> {
    data: &'a mut Value,
    subject: String,
    fields: Vec<String>,
}

/// Seals the personal fields of each `(declaration, aggregate id, data)`, one key lookup per
/// subject. Refuses (422 `subject_forgotten`) personal data for a forgotten subject, and
/// (400 `invalid_command`) personal data whose subject is missing or not an id; data without
/// personal values (all absent or null) needs no key.
pub async fn seal_events(
    keys: Option<&dyn KeyStore>,
    events: Vec<(&PersonalFields, &str, &mut Value)>,
) -> Result<(), Error> {
    let mut pending = Vec::new();
    for (decl, aggregate_id, data) in events {
        let present: Vec<String> = decl
            .fields
            .iter()
            .filter(|f| data.get(f.as_str()).is_some_and(|v| !v.is_null()))
            .cloned()
            .collect();
        if present.is_empty() {
            continue;
        }
        let subject = match &decl.subject {
            SubjectOf::AggregateId => aggregate_id.to_owned(),
            SubjectOf::Field(f) => match data.get(f.as_str()).and_then(Value::as_str) {
                Some(s) => s.to_owned(),
                None => {
                    return Err(Error::invalid(
                        "invalid_command",
                        format!(
                            "`{}` is personal data of the subject named by `{f}`, which is missing",
                            present.join("`, `")
                        ),
                    ))
                }
            },
        };
        validate_subject(&subject).map_err(|e| {
            Error::invalid(
                "invalid_command",
                format!("the subject of `{}`: {e}", present.join("`, `")),
            )
        })?;
        pending.push(Pending {
            data,
            subject,
            fields: present,
        });
    }
    if pending.is_empty() {
        return Ok(());
    }
    let Some(keys) = keys else {
        return Err(Error::Store(StoreError::Backend(
            "the domain declares personal data but this registry has no key store".into(),
        )));
    };
    let mut by_subject: BTreeMap<String, DataKey> = BTreeMap::new();
    for p in &pending {
        if by_subject.contains_key(&p.subject) {
            continue;
        }
        match keys
            .key_for_writing(&p.subject, DataKey::generate())
            .await?
        {
            SubjectKey::Live(key) => {
                by_subject.insert(p.subject.clone(), key);
            }
            SubjectKey::Forgotten { at } => {
                return Err(Error::Rejected {
                    code: "subject_forgotten",
                    message: format!(
                        "data subject `{}` was forgotten at {}: personal data (`{}`) for it is no longer accepted",
                        p.subject,
                        crate::envelope::format_timestamp(&at),
                        p.fields.join("`, `")
                    ),
                });
            }
        }
    }
    for p in pending {
        let key = &by_subject[&p.subject];
        for f in &p.fields {
            if let Some(v) = p.data.get_mut(f.as_str()) {
                *v = Value::String(seal(key, &p.subject, v)?);
            }
        }
    }
    Ok(())
}

/// The subjects of the tokens anywhere in `value`.
fn token_subjects(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::String(s) if s.starts_with(TOKEN_PREFIX) => {
            if let Some((subject, _)) = parse_token(s) {
                out.insert(subject);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| token_subjects(v, out)),
        Value::Object(map) => map.values().for_each(|v| token_subjects(v, out)),
        _ => {}
    }
}

/// Opens every token in `value` (see the module docs); returns how many fields were erased.
/// Tokens of subjects the key store does not know, or that their key does not open, are left
/// as they are.
pub async fn reveal(keys: Option<&dyn KeyStore>, value: &mut Value) -> Result<usize, Error> {
    let mut subjects = BTreeSet::new();
    token_subjects(value, &mut subjects);
    if subjects.is_empty() {
        return Ok(0);
    }
    let Some(keys) = keys else {
        return Ok(0);
    };
    let names: Vec<&str> = subjects.iter().map(String::as_str).collect();
    let found = keys.keys(&names).await?;
    let mut erased = 0;
    open_all(value, &found, &mut erased);
    Ok(erased)
}

/// Opens the tokens in `value`; true if `value` itself was erased (so its holder lists it).
fn open_all(value: &mut Value, keys: &HashMap<String, SubjectKey>, erased: &mut usize) -> bool {
    match value {
        Value::String(s) if s.starts_with(TOKEN_PREFIX) => {
            let Some((subject, sealed)) = parse_token(s) else {
                return false;
            };
            match keys.get(&subject) {
                Some(SubjectKey::Live(key)) => {
                    if let Some(plain) = open(key, &sealed) {
                        *value = plain;
                    }
                    false
                }
                Some(SubjectKey::Forgotten { .. }) => {
                    *value = Value::Null;
                    *erased += 1;
                    true
                }
                None => false,
            }
        }
        Value::Array(items) => {
            let mut any = false;
            for item in items {
                any |= open_all(item, keys, erased);
            }
            any
        }
        Value::Object(map) => {
            let mut names = Vec::new();
            for (name, v) in map.iter_mut() {
                if open_all(v, keys, erased) {
                    names.push(name.clone());
                }
            }
            if !names.is_empty() {
                mark_erased(map, names);
            }
            false
        }
        _ => false,
    }
}

/// Adds `names` to the object's `"erased"` list (sorted, once each).
fn mark_erased(map: &mut Map<String, Value>, names: Vec<String>) {
    let mut all: BTreeSet<String> = match map.get(ERASED) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        _ => BTreeSet::new(),
    };
    all.extend(names);
    map.insert(
        ERASED.to_owned(),
        Value::Array(all.into_iter().map(Value::String).collect()),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ports::Forgetting;
    use chrono::{DateTime, Utc};
    use serde_json::json;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Keys(Mutex<HashMap<String, SubjectKey>>);

    #[async_trait::async_trait]
    impl KeyStore for Keys {
        async fn key_for_writing(
            &self,
            subject: &str,
            fresh: DataKey,
        ) -> Result<SubjectKey, StoreError> {
            let mut all = self.0.lock().expect("lock");
            Ok(all
                .entry(subject.to_owned())
                .or_insert(SubjectKey::Live(fresh))
                .clone())
        }
        async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
            let all = self.0.lock().expect("lock");
            Ok(subjects
                .iter()
                .filter_map(|s| all.get(*s).map(|k| ((*s).to_owned(), k.clone())))
                .collect())
        }
        async fn forget(&self, subject: &str, at: DateTime<Utc>) -> Result<Forgetting, StoreError> {
            let mut all = self.0.lock().expect("lock");
            let before = all.insert(subject.to_owned(), SubjectKey::Forgotten { at });
            Ok(match before {
                Some(SubjectKey::Forgotten { at: first }) => {
                    all.insert(subject.to_owned(), SubjectKey::Forgotten { at: first });
                    Forgetting {
                        destroyed: false,
                        at: first,
                    }
                }
                Some(SubjectKey::Live(_)) => Forgetting {
                    destroyed: true,
                    at,
                },
                None => Forgetting {
                    destroyed: false,
                    at,
                },
            })
        }
    }

    fn declared() -> PersonalFields {
        PersonalFields {
            subject: SubjectOf::field("owner"),
            fields: vec!["name".into(), "email".into()],
        }
    }

    #[tokio::test]
    async fn personal_fields_are_sealed_revealed_and_erased() {
        let keys = Keys::default();
        let decl = declared();
        let mut a =
            json!({"owner": "dana", "name": "Dana Scully", "email": "dana@example.com", "n": 1});
        let mut b = json!({"owner": "fox", "name": "Fox Mulder", "email": null});
        let mut c = json!({"owner": "dana", "n": 2});
        seal_events(
            Some(&keys),
            vec![
                (&decl, "a-1", &mut a),
                (&decl, "a-2", &mut b),
                (&decl, "a-3", &mut c),
            ],
        )
        .await
        .expect("sealed");
        let stored = json!([a.clone(), b.clone(), c.clone()]).to_string();
        for plain in ["Dana Scully", "dana@example.com", "Fox Mulder"] {
            assert!(!stored.contains(plain), "{plain} in {stored}");
        }
        assert_eq!(a["owner"], "dana");
        assert_eq!(b["email"], Value::Null);
        assert_eq!(c, json!({"owner": "dana", "n": 2}));

        // With the keys: the plaintext, wherever the tokens were copied to.
        let mut answer =
            json!({"events": [{"data": a.clone()}, {"data": b.clone()}], "copy": a["name"]});
        assert_eq!(reveal(Some(&keys), &mut answer).await.expect("revealed"), 0);
        assert_eq!(answer["events"][0]["data"]["name"], "Dana Scully");
        assert_eq!(answer["events"][1]["data"]["name"], "Fox Mulder");
        assert_eq!(answer["copy"], "Dana Scully");

        // Dana forgotten: her fields read null, listed under `erased`; Fox's still open.
        keys.forget("dana", crate::envelope::now())
            .await
            .expect("forgot");
        let mut answer =
            json!({"events": [{"data": a.clone()}, {"data": b}], "copies": [a["email"]]});
        assert_eq!(reveal(Some(&keys), &mut answer).await.expect("revealed"), 3);
        let data = &answer["events"][0]["data"];
        assert_eq!(data["name"], Value::Null);
        assert_eq!(data["email"], Value::Null);
        assert_eq!(data["erased"], json!(["email", "name"]));
        assert_eq!(data["owner"], "dana");
        assert_eq!(answer["events"][1]["data"]["name"], "Fox Mulder");
        assert_eq!(answer["copies"], json!([null]));
        assert_eq!(answer["erased"], json!(["copies"]));

        // And nothing new is written for her.
        let mut again = json!({"owner": "dana", "name": "Dana Scully"});
        let err = seal_events(Some(&keys), vec![(&decl, "a-4", &mut again)])
            .await
            .expect_err("refused");
        assert_eq!(err.code(), "subject_forgotten");
        assert_eq!(again["name"], "Dana Scully", "nothing was sealed");
        // Data without personal values needs no key, even hers.
        let mut plain = json!({"owner": "dana", "name": null});
        seal_events(Some(&keys), vec![(&decl, "a-5", &mut plain)])
            .await
            .expect("no personal data");
    }

    #[tokio::test]
    async fn personal_data_without_a_valid_subject_is_refused() {
        let keys = Keys::default();
        let decl = declared();
        for data in [
            json!({"name": "x"}),
            json!({"owner": 7, "name": "x"}),
            json!({"owner": "Dana Scully", "name": "x"}),
        ] {
            let mut data = data;
            let err = seal_events(Some(&keys), vec![(&decl, "a-1", &mut data)])
                .await
                .expect_err("refused");
            assert_eq!(err.code(), "invalid_command", "{data}");
        }
        let by_id = PersonalFields {
            subject: SubjectOf::AggregateId,
            fields: vec!["name".into()],
        };
        let mut data = json!({"name": "x"});
        seal_events(Some(&keys), vec![(&by_id, "cust-1", &mut data)])
            .await
            .expect("sealed");
        let (subject, _) = parse_token(data["name"].as_str().expect("a token")).expect("token");
        assert_eq!(subject, "cust-1");
        // Without a key store personal data can't be stored at all.
        let mut data = json!({"owner": "dana", "name": "x"});
        assert!(seal_events(None, vec![(&decl, "a-1", &mut data)])
            .await
            .is_err());
    }

    #[test]
    fn a_token_opens_with_its_key_only_and_names_its_subject() {
        let key = DataKey::generate();
        let other = DataKey::generate();
        let token = seal(&key, "dana", &json!("dana@example.com")).expect("sealed");
        assert!(token.starts_with(TOKEN_PREFIX));
        assert!(!token.contains("example"));
        let (subject, sealed) = parse_token(&token).expect("a token");
        assert_eq!(subject, "dana");
        assert_eq!(open(&key, &sealed), Some(json!("dana@example.com")));
        assert_eq!(open(&other, &sealed), None);
        // A fresh nonce each time: the same value never seals the same way twice.
        let again = seal(&key, "dana", &json!("dana@example.com")).expect("sealed");
        assert_ne!(token, again);
        // An altered byte fails authentication.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(open(&key, &bad), None);
        assert_eq!(parse_token("pii:v1:not base64:x"), None);
        assert_eq!(parse_token("hello"), None);
    }
}
