//! Data subjects' keys on DynamoDB: one item per subject in a table of its own
//! (`CHRONICLE_KEY_TABLE`: no stream, no point-in-time recovery, so no copy of a key outlives
//! its item), apart from the events so a key can be destroyed while the events stay.
//!
//! An item is `subject` (the hash key), `key` (binary, removed when the subject is forgotten),
//! `created_at`, `forgotten_at` once forgotten, and `wrapped_by` when the key is wrapped:
//! with `CHRONICLE_KEY_KMS_KEY` set, `key` holds the KMS ciphertext of the data key (bound to
//! its subject by the encryption context `chronicle:subject`), and reading it takes a KMS
//! `Decrypt` and the permission for it. Keys stored unwrapped stay readable after wrapping is
//! turned on (they have no `wrapped_by`).

use crate::backend;
use crate::config::{Clients, Settings};
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, KeysAndAttributes, ReturnValue, ReturnValuesOnConditionCheckFailure,
};
use aws_sdk_dynamodb::Client;
use aws_smithy_types::Blob;
use chronicle_kernel::{DataKey, Forgetting, KeyStore, StoreError, SubjectKey};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::stream::{self as fstream, StreamExt, TryStreamExt};
use std::collections::{HashMap, HashSet};
use std::time::Duration;
use zeroize::Zeroizing;

/// The key table's hash key.
pub const SUBJECT: &str = "subject";
/// The key, or its KMS ciphertext. `key` is a DynamoDB reserved word: expressions name it
/// through `#k`.
pub const KEY: &str = "key";
/// The KMS key that wrapped `key` (its ARN, as KMS answered); absent when stored unwrapped.
pub const WRAPPED_BY: &str = "wrapped_by";
pub const CREATED_AT: &str = "created_at";
pub const FORGOTTEN_AT: &str = "forgotten_at";
/// The encryption context every wrapped key is bound to: its subject, so a ciphertext copied
/// to another subject's item does not decrypt.
pub const KMS_CONTEXT: &str = "chronicle:subject";

/// `BatchGetItem` takes at most 100 keys.
const BATCH: usize = 100;
/// Rounds of `UnprocessedKeys` resent before a read gives up as unavailable.
const BATCH_ATTEMPTS: u32 = 10;
/// KMS `Decrypt`s one `keys` call keeps in flight.
const KMS_CONCURRENCY: usize = 16;

type Item = HashMap<String, AttributeValue>;

#[derive(Clone, Debug)]
struct Wrapping {
    client: aws_sdk_kms::Client,
    key_id: String,
}

/// Data subjects' keys in a DynamoDB table, optionally wrapped with a KMS key.
#[derive(Clone, Debug)]
pub struct DynamoKeyStore {
    client: Client,
    table: String,
    /// KMS: new keys are wrapped with it, wrapped ones unwrapped.
    kms: Option<Wrapping>,
}

fn stamp(at: DateTime<Utc>) -> AttributeValue {
    // Nanoseconds kept: a time given to `forget` reads back equal.
    AttributeValue::S(at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

fn subject_key(subject: &str) -> Item {
    HashMap::from([(SUBJECT.to_owned(), AttributeValue::S(subject.to_owned()))])
}

fn corrupt(subject: &str, what: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("key table: {subject:?}: {what}"))
}

fn time(subject: &str, item: &Item, attr: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    match item.get(attr) {
        None => Ok(None),
        Some(AttributeValue::S(text)) => DateTime::parse_from_rfc3339(text)
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|e| corrupt(subject, format!("`{attr}` is `{text}`: {e}"))),
        Some(other) => Err(corrupt(subject, format!("`{attr}` is {other:?}"))),
    }
}

impl DynamoKeyStore {
    /// Keys stored as they are (no KMS): `CHRONICLE_KEY_KMS_KEY` unset.
    pub fn new(client: Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
            kms: None,
        }
    }

    /// New keys wrapped with the KMS key `key_id` (an id, ARN or alias), and wrapped keys
    /// unwrapped with KMS.
    pub fn with_kms(mut self, kms: aws_sdk_kms::Client, key_id: &str) -> Self {
        self.kms = Some(Wrapping {
            client: kms,
            key_id: key_id.to_owned(),
        });
        self
    }

    /// As the settings say: `key_table`, wrapped with `key_kms_key` when it is set.
    pub fn from_settings(clients: &Clients, settings: &Settings) -> Self {
        let store = Self::new(clients.dynamodb.clone(), &settings.key_table);
        match &settings.key_kms_key {
            Some(key_id) => store.with_kms(clients.kms.clone(), key_id),
            None => store,
        }
    }

    /// The subject's item, read consistently.
    async fn get(&self, subject: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(subject_key(subject)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| backend("GetItem (key table)", e))?;
        Ok(out.item.filter(|it| !it.is_empty()))
    }

    /// The bytes to store for `key`, and the KMS key that wrapped them (if any).
    async fn wrap(
        &self,
        subject: &str,
        key: &DataKey,
    ) -> Result<(Vec<u8>, Option<String>), StoreError> {
        let Some(kms) = &self.kms else {
            return Ok((key.bytes().to_vec(), None));
        };
        let out = kms
            .client
            .encrypt()
            .key_id(&kms.key_id)
            .plaintext(Blob::new(key.bytes().to_vec()))
            .encryption_context(KMS_CONTEXT, subject)
            .send()
            .await
            .map_err(|e| backend("KMS Encrypt (a data key)", e))?;
        let blob = out
            .ciphertext_blob
            .ok_or_else(|| StoreError::Backend("KMS Encrypt answered no ciphertext".into()))?;
        // KMS names the key by its ARN: what Decrypt is then told to expect, even when the
        // setting is an alias that is later pointed elsewhere.
        let by = out.key_id.unwrap_or_else(|| kms.key_id.clone());
        Ok((blob.into_inner(), Some(by)))
    }

    /// What an item says of its subject's key, unwrapping it with KMS if it was wrapped.
    async fn decode(&self, subject: &str, item: &Item) -> Result<SubjectKey, StoreError> {
        if let Some(at) = time(subject, item, FORGOTTEN_AT)? {
            return Ok(SubjectKey::Forgotten { at });
        }
        let stored = match item.get(KEY) {
            Some(AttributeValue::B(b)) => b.as_ref(),
            other => {
                return Err(corrupt(
                    subject,
                    format!("no key and not forgotten ({other:?})"),
                ))
            }
        };
        let by = match item.get(WRAPPED_BY) {
            None => return key_of(subject, stored).map(SubjectKey::Live),
            Some(AttributeValue::S(by)) => by,
            Some(other) => return Err(corrupt(subject, format!("`{WRAPPED_BY}` is {other:?}"))),
        };
        let Some(kms) = &self.kms else {
            return Err(StoreError::Backend(format!(
                "the key of {subject:?} is wrapped with the KMS key {by}, and no KMS key is \
                 configured (CHRONICLE_KEY_KMS_KEY)"
            )));
        };
        let out = kms
            .client
            .decrypt()
            .ciphertext_blob(Blob::new(stored.to_vec()))
            .key_id(by)
            .encryption_context(KMS_CONTEXT, subject)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e)
                if e.as_service_error()
                    .is_some_and(|s| s.is_invalid_ciphertext_exception()) =>
            {
                return Err(corrupt(
                    subject,
                    "the wrapped key does not decrypt for this subject",
                ))
            }
            Err(e) => return Err(backend("KMS Decrypt (a data key)", e)),
        };
        let bytes = Zeroizing::new(out.plaintext.map(Blob::into_inner).unwrap_or_default());
        key_of(subject, &bytes).map(SubjectKey::Live)
    }
}

fn key_of(subject: &str, bytes: &[u8]) -> Result<DataKey, StoreError> {
    DataKey::from_bytes(bytes)
        .ok_or_else(|| corrupt(subject, format!("the key is {} bytes, not 32", bytes.len())))
}

#[async_trait]
impl KeyStore for DynamoKeyStore {
    async fn key_for_writing(
        &self,
        subject: &str,
        fresh: DataKey,
    ) -> Result<SubjectKey, StoreError> {
        // Read first: most writes are for subjects that have a key, and a consistent read
        // costs less than a refused conditional write (and, wrapped, a wasted KMS Encrypt).
        if let Some(item) = self.get(subject).await? {
            return self.decode(subject, &item).await;
        }
        let (stored, wrapped_by) = self.wrap(subject, &fresh).await?;
        let mut item = subject_key(subject);
        item.insert(KEY.to_owned(), AttributeValue::B(Blob::new(stored)));
        item.insert(CREATED_AT.to_owned(), stamp(Utc::now()));
        if let Some(by) = wrapped_by {
            item.insert(WRAPPED_BY.to_owned(), AttributeValue::S(by));
        }
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            // A tombstone is an item too: a forgotten subject gets no key.
            .condition_expression("attribute_not_exists(#s)")
            .expression_attribute_names("#s", SUBJECT)
            // The winner of a race comes back with the refusal: no second read.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(SubjectKey::Live(fresh)),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(refused)) => {
                    let there = match refused.item().filter(|it| !it.is_empty()) {
                        Some(it) => it.clone(),
                        // An endpoint that does not return it: read it.
                        None => self.get(subject).await?.ok_or_else(|| {
                            corrupt(subject, "refused as present, then not found")
                        })?,
                    };
                    self.decode(subject, &there).await
                }
                _ => Err(backend("PutItem (key table)", e)),
            },
        }
    }

    async fn keys(&self, subjects: &[&str]) -> Result<HashMap<String, SubjectKey>, StoreError> {
        let mut seen = HashSet::new();
        // BatchGetItem refuses a key named twice.
        let unique: Vec<&str> = subjects
            .iter()
            .copied()
            .filter(|s| seen.insert(*s))
            .collect();
        let mut items = Vec::with_capacity(unique.len());
        for chunk in unique.chunks(BATCH) {
            let mut pending = Some(
                KeysAndAttributes::builder()
                    .set_keys(Some(chunk.iter().map(|s| subject_key(s)).collect()))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| StoreError::Invalid(e.to_string()))?,
            );
            let mut attempt = 0;
            while let Some(request) = pending.take() {
                if attempt == BATCH_ATTEMPTS {
                    return Err(StoreError::Unavailable(format!(
                        "BatchGetItem (key table): keys still unprocessed after {BATCH_ATTEMPTS} rounds"
                    )));
                }
                if attempt > 0 {
                    // Unprocessed keys mean throttling: back off before resending them.
                    tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
                }
                attempt += 1;
                let out = self
                    .client
                    .batch_get_item()
                    .request_items(&self.table, request)
                    .send()
                    .await
                    .map_err(|e| backend("BatchGetItem (key table)", e))?;
                if let Some(mut got) = out.responses {
                    items.extend(got.remove(&self.table).unwrap_or_default());
                }
                pending = out
                    .unprocessed_keys
                    .and_then(|mut m| m.remove(&self.table))
                    .filter(|k| !k.keys().is_empty());
            }
        }
        fstream::iter(items)
            .map(|item| async move {
                let subject = match item.get(SUBJECT) {
                    Some(AttributeValue::S(s)) => s.clone(),
                    other => {
                        return Err(StoreError::Corrupt(format!(
                            "key table: an item's `{SUBJECT}` is {other:?}"
                        )))
                    }
                };
                let key = self.decode(&subject, &item).await?;
                Ok((subject, key))
            })
            .buffer_unordered(KMS_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn forget(&self, subject: &str, at: DateTime<Utc>) -> Result<Forgetting, StoreError> {
        // One atomic update: the key goes, the first forgetting's time stays, and a subject
        // with no item gets a tombstone.
        let out = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(subject_key(subject)))
            .update_expression(
                "REMOVE #k, #w SET #f = if_not_exists(#f, :at), #c = if_not_exists(#c, :now)",
            )
            .expression_attribute_names("#k", KEY)
            .expression_attribute_names("#w", WRAPPED_BY)
            .expression_attribute_names("#f", FORGOTTEN_AT)
            .expression_attribute_names("#c", CREATED_AT)
            .expression_attribute_values(":at", stamp(at))
            .expression_attribute_values(":now", stamp(Utc::now()))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| backend("UpdateItem (forget a key)", e))?;
        let old = out.attributes.unwrap_or_default();
        if let Some(first) = time(subject, &old, FORGOTTEN_AT)? {
            return Ok(Forgetting {
                destroyed: false,
                at: first,
            });
        }
        Ok(Forgetting {
            destroyed: old.contains_key(KEY),
            at,
        })
    }
}
