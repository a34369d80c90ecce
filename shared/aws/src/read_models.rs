//! Read models on DynamoDB. One item per document, keyed `d#{projection}#{generation}#{key}`;
//! every write is conditional on the stored version being lower, so a duplicated or replayed
//! stream record changes nothing. Lookups by field go through two sparse GSIs (`by_ix1`,
//! `by_ix2`), so a document can be found by up to two fields.

use crate::backend;
use async_trait::async_trait;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::types::{
    AttributeValue, DeleteRequest, ReturnValuesOnConditionCheckFailure, WriteRequest,
};
use aws_sdk_dynamodb::Client;
use chronicle_kernel::{Doc, DocWrite, ModelRef, ReadModelStore, StoreError};
use std::collections::HashMap;

pub const PK: &str = "pk";
/// The GSIs `find` queries: partition `ixN` = `{projection}#{generation}#{field}#{value}`,
/// sort `key`.
pub const INDEXES: [(&str, &str); 2] = [("by_ix1", "ix1"), ("by_ix2", "ix2")];
const MAX_INDEX_FIELDS: usize = INDEXES.len();

type Item = HashMap<String, AttributeValue>;

/// The attribute holding each document write's mark (see `write`).
const WRITE_ID: &str = "wid";

#[derive(Clone, Debug)]

pub struct DynamoReadModelStore {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn pk(v: String) -> Item {
    HashMap::from([(PK.to_owned(), s(v))])
}

fn doc_pk(projection: &str, generation: u64, key: &str) -> String {
    format!("d#{projection}#{generation}#{key}")
}

fn index_value(projection: &str, generation: u64, field: &str, value: &str) -> String {
    format!("{projection}#{generation}#{field}#{value}")
}

fn num(item: &Item, attr: &str) -> Result<u64, StoreError> {
    match item.get(attr) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| StoreError::Corrupt(format!("read model `{attr}` is `{v}`"))),
        other => Err(StoreError::Corrupt(format!(
            "read model `{attr}` is {other:?}, not a number"
        ))),
    }
}

fn str_attr<'a>(item: &'a Item, attr: &str) -> Result<&'a str, StoreError> {
    match item.get(attr) {
        Some(AttributeValue::S(v)) => Ok(v),
        other => Err(StoreError::Corrupt(format!(
            "read model `{attr}` is {other:?}, not a string"
        ))),
    }
}

fn to_doc(item: &Item) -> Result<Doc, StoreError> {
    Ok(Doc {
        key: str_attr(item, "key")?.to_owned(),
        version: num(item, "version")?,
        body: serde_json::from_str(str_attr(item, "body")?)
            .map_err(|e| StoreError::Corrupt(format!("read model body: {e}")))?,
    })
}

impl DynamoReadModelStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        Self {
            client,
            table: table.into(),
        }
    }

    async fn resolve(&self, model: &ModelRef) -> Result<u64, StoreError> {
        match model.generation {
            Some(g) => Ok(g),
            None => self.active_generation(&model.projection).await,
        }
    }

    async fn get_item(&self, key: String) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .consistent_read(true)
            .set_key(Some(pk(key)))
            .send()
            .await
            .map_err(|e| backend("GetItem", e))?;
        Ok(out.item)
    }

    /// One conditional put; false when the stored document is as new or newer.
    async fn write(
        &self,
        projection: &str,
        generation: u64,
        w: DocWrite,
    ) -> Result<bool, StoreError> {
        if w.index.len() > MAX_INDEX_FIELDS {
            return Err(StoreError::Invalid(format!(
                "a document can be indexed by at most {MAX_INDEX_FIELDS} fields on DynamoDB, `{}` has {}",
                w.key,
                w.index.len()
            )));
        }
        let body =
            serde_json::to_string(&w.body).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let mut item = pk(doc_pk(projection, generation, &w.key));
        item.insert("key".into(), s(&w.key));
        item.insert("version".into(), n(w.version));
        item.insert("body".into(), s(body));
        for ((_, attr), (field, value)) in INDEXES.iter().zip(&w.index) {
            item.insert(
                (*attr).into(),
                s(index_value(projection, generation, field, value)),
            );
        }
        // This call's mark: a retried attempt tells its own stored write from another's.
        let ours = s(uuid::Uuid::new_v4().simple().to_string());
        item.insert(WRITE_ID.into(), ours.clone());
        let put = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(#pk) OR #v < :v")
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#v", "version")
            .expression_attribute_values(":v", n(w.version))
            // What refused us: a retried attempt whose first try stored but lost its answer
            // finds its own write there (its mark), which counts as applied.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match put {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(PutItemError::ConditionalCheckFailedException(refused)) => Ok(refused
                    .item()
                    .is_some_and(|there| there.get(WRITE_ID) == Some(&ours))),
                _ => Err(backend("PutItem", e)),
            },
        }
    }

    async fn query_index(
        &self,
        index: &str,
        attr: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Doc>, StoreError> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(index)
                .key_condition_expression("#ix = :ix")
                .expression_attribute_names("#ix", attr)
                .expression_attribute_values(":ix", s(value))
                .limit(i32::try_from(limit - out.len()).unwrap_or(i32::MAX))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Query", e))?;
            for it in page.items() {
                out.push(to_doc(it)?);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() && out.len() < limit => start = Some(k),
                _ => break,
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl ReadModelStore for DynamoReadModelStore {
    async fn active_generation(&self, projection: &str) -> Result<u64, StoreError> {
        match self.get_item(format!("g#{projection}")).await? {
            None => Ok(1),
            Some(item) => num(&item, "active"),
        }
    }

    async fn get(&self, model: &ModelRef, key: &str) -> Result<Option<Doc>, StoreError> {
        let generation = self.resolve(model).await?;
        match self
            .get_item(doc_pk(&model.projection, generation, key))
            .await?
        {
            None => Ok(None),
            Some(item) => to_doc(&item).map(Some),
        }
    }

    async fn find(
        &self,
        model: &ModelRef,
        field: &str,
        value: &str,
        limit: usize,
    ) -> Result<Vec<Doc>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let generation = self.resolve(model).await?;
        let ix = index_value(&model.projection, generation, field, value);
        // A field sits in whichever slot its document put it: ask both, merge by key.
        let mut docs = Vec::new();
        for (index, attr) in INDEXES {
            docs.extend(self.query_index(index, attr, &ix, limit).await?);
        }
        docs.sort_by(|a, b| a.key.cmp(&b.key));
        docs.dedup_by(|a, b| a.key == b.key);
        docs.truncate(limit);
        Ok(docs)
    }

    async fn apply(
        &self,
        model: &ModelRef,
        writes: Vec<DocWrite>,
        checkpoint: Option<u64>,
    ) -> Result<usize, StoreError> {
        let generation = self.resolve(model).await?;
        let mut applied = 0;
        // Not one transaction (100-item limit, 2x the cost): each write is idempotent on its
        // own, and the checkpoint moves only after all of them.
        for w in writes {
            if self.write(&model.projection, generation, w).await? {
                applied += 1;
            }
        }
        if let Some(position) = checkpoint {
            let mut item = pk(format!("c#{}#{generation}", model.projection));
            item.insert("position".into(), n(position));
            let put = self
                .client
                .put_item()
                .table_name(&self.table)
                .set_item(Some(item))
                .condition_expression("attribute_not_exists(#pk) OR #p < :p")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_names("#p", "position")
                .expression_attribute_values(":p", n(position))
                .send()
                .await;
            match put {
                // Checkpoints never move backwards.
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|s| s.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(backend("PutItem", e)),
                Ok(_) => {}
            }
        }
        Ok(applied)
    }

    async fn checkpoint(&self, model: &ModelRef) -> Result<u64, StoreError> {
        let generation = self.resolve(model).await?;
        match self
            .get_item(format!("c#{}#{generation}", model.projection))
            .await?
        {
            None => Ok(0),
            Some(item) => num(&item, "position"),
        }
    }

    async fn activate(&self, projection: &str, generation: u64) -> Result<(), StoreError> {
        let mut item = pk(format!("g#{projection}"));
        item.insert("active".into(), n(generation));
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| backend("PutItem", e))?;
        Ok(())
    }

    async fn drop_generation(&self, projection: &str, generation: u64) -> Result<(), StoreError> {
        if self.active_generation(projection).await? == generation {
            return Err(StoreError::Invalid(format!(
                "generation {generation} of {projection} is active and can't be dropped"
            )));
        }
        // An admin operation after a rebuild: a filtered scan is acceptable here, and keeps
        // the hot write path free of a per-generation partition.
        let prefix = format!("d#{projection}#{generation}#");
        let mut keys = vec![format!("c#{projection}#{generation}")];
        let mut start: Option<Item> = None;
        loop {
            let page = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .filter_expression("begins_with(#pk, :p)")
                .expression_attribute_names("#pk", PK)
                .expression_attribute_values(":p", s(&prefix))
                .projection_expression("#pk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| backend("Scan", e))?;
            for it in page.items() {
                keys.push(str_attr(it, PK)?.to_owned());
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        for chunk in keys.chunks(25) {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|k| {
                    DeleteRequest::builder()
                        .set_key(Some(pk(k.clone())))
                        .build()
                        .map(|d| WriteRequest::builder().delete_request(d).build())
                        .map_err(|e| StoreError::Invalid(e.to_string()))
                })
                .collect::<Result<_, _>>()?;
            // BatchWriteItem may leave some unprocessed under throttling: resend those.
            for attempt in 0..10u32 {
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(&self.table, requests)
                    .send()
                    .await
                    .map_err(|e| backend("BatchWriteItem", e))?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut m| m.remove(&self.table))
                    .unwrap_or_default();
                if requests.is_empty() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempt.min(5))).await;
            }
            if !requests.is_empty() {
                return Err(StoreError::Backend(format!(
                    "dropping {projection} generation {generation}: {} deletes left unprocessed",
                    requests.len()
                )));
            }
        }
        Ok(())
    }
}
