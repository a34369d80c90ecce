//! What Chronicle's calls cost on DynamoDB: an SDK interceptor that sees every attempt a client
//! makes (request and answer, as sent on the wire) and converts it to the request units AWS
//! bills for on-demand tables, by AWS's published rules:
//!
//! - a write: 1 write unit per KB of the item (rounded up, at least 1); a conditional write
//!   whose condition fails is billed too; each global secondary index the item is written to,
//!   1 more per KB; in `TransactWriteItems` every action (a `ConditionCheck` included) costs
//!   twice, the index writes once;
//! - a read: 1 read unit per 4 KB read (per item for `GetItem`, for the items a `Query` or `Scan`
//!   read together), half for an eventually consistent read; transactions read at twice;
//! - a throttled or refused request: nothing.
//!
//! Item sizes follow AWS's rules: names and values in UTF-8, numbers one byte per two
//! significant digits plus one, 3 bytes per list or map plus 1 per element. The sizes of items
//! read are those in the answer (a `ProjectionExpression` makes them smaller than what DynamoDB
//! bills; where Chronicle projects, the items are small enough that it does not change a unit).
//! S3, Kinesis and DynamoDB Streams calls are counted by operation, not priced in units.

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeTransmitInterceptorContextRef, FinalizerInterceptorContextRef,
};
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::{ConfigBag, Storable, StoreReplace};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

/// US East (N. Virginia) on-demand prices, per million request units, as AWS has published them
/// since 2024-11-01 (when on-demand throughput was halved in price): write, read.
pub const PRICE_PER_MILLION_WRITE_UNITS: f64 = 0.625;
pub const PRICE_PER_MILLION_READ_UNITS: f64 = 0.125;
/// The date of those prices.
pub const PRICES_AS_OF: &str = "2024-11-01 (us-east-1, on-demand)";

/// What a set of calls cost: units by table, requests by service and operation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    pub write_units: f64,
    pub read_units: f64,
    /// `Service.Operation` → attempts that reached the service (throttled ones included).
    pub requests: BTreeMap<String, u64>,
    /// Items written (puts, deletes, updates, checks), of every table.
    pub items_written: u64,
}

impl Usage {
    /// What happened between `earlier` and this.
    pub fn since(&self, earlier: &Usage) -> Usage {
        let mut requests = self.requests.clone();
        for (k, n) in &earlier.requests {
            if let Some(v) = requests.get_mut(k) {
                *v -= n;
            }
        }
        requests.retain(|_, n| *n > 0);
        Usage {
            write_units: self.write_units - earlier.write_units,
            read_units: self.read_units - earlier.read_units,
            requests,
            items_written: self.items_written - earlier.items_written,
        }
    }

    /// Dollars at [`PRICE_PER_MILLION_WRITE_UNITS`] and [`PRICE_PER_MILLION_READ_UNITS`].
    pub fn dollars(&self) -> f64 {
        (self.write_units * PRICE_PER_MILLION_WRITE_UNITS
            + self.read_units * PRICE_PER_MILLION_READ_UNITS)
            / 1e6
    }
}

/// Counts every attempt of the clients it is added to ([`Meter::clients`]).
#[derive(Debug, Default)]
pub struct Meter {
    usage: Mutex<Usage>,
    /// Table name → the key attributes of each of its global secondary indexes.
    indexes: Mutex<HashMap<String, Vec<Vec<String>>>>,
}

impl Meter {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Tells the meter a table's global secondary indexes (their key attributes), so a write
    /// counts its index writes too.
    pub fn index(&self, table: &str, keys: Vec<Vec<String>>) {
        self.lock_indexes().insert(table.to_owned(), keys);
    }

    /// Learns the indexes of `table` from `DescribeTable`.
    pub async fn learn(
        &self,
        dynamodb: &aws_sdk_dynamodb::Client,
        table: &str,
    ) -> Result<(), aws_sdk_dynamodb::Error> {
        let out = dynamodb.describe_table().table_name(table).send().await?;
        let keys = out
            .table()
            .map(|t| {
                t.global_secondary_indexes()
                    .iter()
                    .map(|g| {
                        g.key_schema()
                            .iter()
                            .map(|k| k.attribute_name().to_owned())
                            .collect()
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.index(table, keys);
        Ok(())
    }

    /// The same clients, each call counted by this meter.
    pub fn clients(self: &Arc<Self>, base: &crate::Clients) -> crate::Clients {
        let interceptor = Counting(self.clone());
        crate::Clients {
            dynamodb: aws_sdk_dynamodb::Client::from_conf(
                base.dynamodb
                    .config()
                    .to_builder()
                    .interceptor(interceptor.clone())
                    .build(),
            ),
            s3: aws_sdk_s3::Client::from_conf(
                base.s3
                    .config()
                    .to_builder()
                    .interceptor(interceptor.clone())
                    .build(),
            ),
            kinesis: aws_sdk_kinesis::Client::from_conf(
                base.kinesis
                    .config()
                    .to_builder()
                    .interceptor(interceptor)
                    .build(),
            ),
            // KMS calls are priced per request, not in DynamoDB's units: not counted here.
            kms: base.kms.clone(),
            sdk: base.sdk.clone(),
        }
    }

    /// Everything counted so far.
    pub fn usage(&self) -> Usage {
        self.usage.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn lock_indexes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Vec<String>>>> {
        self.indexes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one attempt: its operation, and for DynamoDB the units it cost.
    pub fn count(
        &self,
        target: Option<&str>,
        method: &str,
        request: &[u8],
        status: u16,
        response: &[u8],
    ) {
        let op = match target {
            Some(t) => t
                .replace("DynamoDB_20120810.", "DynamoDB.")
                .replace("DynamoDBStreams_20120810.", "DynamoDBStreams.")
                .replace("Kinesis_20131202.", "Kinesis."),
            // S3 is REST: the method names the kind of request.
            None => format!("S3.{method}"),
        };
        let units = match op.strip_prefix("DynamoDB.") {
            Some(name) => {
                let request: Value = serde_json::from_slice(request).unwrap_or(Value::Null);
                let response: Value = serde_json::from_slice(response).unwrap_or(Value::Null);
                let indexes = self.lock_indexes().clone();
                dynamodb_units(name, &request, status, &response, &indexes)
            }
            None => Units::default(),
        };
        let mut usage = self.usage.lock().unwrap_or_else(|p| p.into_inner());
        *usage.requests.entry(op).or_default() += 1;
        usage.write_units += units.write;
        usage.read_units += units.read;
        usage.items_written += units.items_written;
    }
}

#[derive(Clone, Debug)]
struct Counting(Arc<Meter>);

/// An attempt's request, kept until its answer comes (the request itself is gone by then).
#[derive(Clone, Debug)]
struct Sent {
    target: Option<String>,
    method: String,
    body: Vec<u8>,
}

impl Storable for Sent {
    type Storer = StoreReplace<Self>;
}

impl Intercept for Counting {
    fn name(&self) -> &'static str {
        "chronicle-metering"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        cfg.interceptor_state().store_put(Sent {
            target: request.headers().get("x-amz-target").map(str::to_owned),
            method: request.method().to_owned(),
            body: request.body().bytes().unwrap_or_default().to_vec(),
        });
        Ok(())
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        // An attempt that never got an answer (a timeout, a dropped connection) is not known
        // to have reached the service: not counted.
        let (Some(sent), Some(response)) = (cfg.load::<Sent>(), context.response()) else {
            return Ok(());
        };
        self.0.count(
            sent.target.as_deref(),
            &sent.method,
            &sent.body,
            response.status().as_u16(),
            response.body().bytes().unwrap_or_default(),
        );
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Units {
    write: f64,
    read: f64,
    items_written: u64,
}

/// Write units of an item of `bytes`: 1 per KB, at least 1.
fn write_units(bytes: u64) -> f64 {
    bytes.div_ceil(1024).max(1) as f64
}

/// Read units of `bytes` read together: 1 per 4 KB, at least 1; half if eventually consistent.
fn read_units(bytes: u64, consistent: bool) -> f64 {
    let units = bytes.div_ceil(4096).max(1) as f64;
    if consistent {
        units
    } else {
        units / 2.0
    }
}

/// Index writes of putting `item` into `table`: one per index whose keys the item has.
fn index_units(
    table: &str,
    item: &Value,
    size: u64,
    indexes: &HashMap<String, Vec<Vec<String>>>,
) -> f64 {
    indexes
        .get(table)
        .into_iter()
        .flatten()
        .filter(|keys| keys.iter().all(|k| item.get(k).is_some()))
        .map(|_| write_units(size))
        .sum()
}

fn dynamodb_units(
    op: &str,
    request: &Value,
    status: u16,
    response: &Value,
    indexes: &HashMap<String, Vec<Vec<String>>>,
) -> Units {
    let error = response
        .get("__type")
        .and_then(Value::as_str)
        .map(|t| t.rsplit('#').next().unwrap_or(t))
        .unwrap_or_default();
    // A conditional write whose condition fails still consumed its write; a cancelled
    // transaction its actions. Throttled and other refused requests cost nothing.
    let condition_failed = matches!(
        error,
        "ConditionalCheckFailedException" | "TransactionCanceledException"
    );
    if status != 200 && !condition_failed {
        return Units::default();
    }
    let table = request
        .get("TableName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let consistent = request
        .get("ConsistentRead")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    match op {
        "PutItem" => {
            let item = &request["Item"];
            let size = item_size(item);
            let index = if status == 200 {
                index_units(table, item, size, indexes)
            } else {
                0.0
            };
            Units {
                write: write_units(size) + index,
                read: 0.0,
                items_written: 1,
            }
        }
        // The size of the item changed is not in the request: at least one unit, as for the
        // small items Chronicle updates (an expiry) and deletes (a released claim).
        "UpdateItem" | "DeleteItem" => Units {
            write: 1.0,
            read: 0.0,
            items_written: 1,
        },
        "GetItem" => Units {
            read: read_units(item_size(&response["Item"]), consistent),
            ..Units::default()
        },
        "Query" | "Scan" => {
            let bytes: u64 = response["Items"]
                .as_array()
                .into_iter()
                .flatten()
                .map(item_size)
                .sum();
            Units {
                read: read_units(bytes, consistent),
                ..Units::default()
            }
        }
        "BatchWriteItem" => {
            let mut units = Units::default();
            for (t, writes) in request["RequestItems"].as_object().into_iter().flatten() {
                for w in writes.as_array().into_iter().flatten() {
                    let item = &w["PutRequest"]["Item"];
                    let size = item_size(item);
                    units.write += write_units(size) + index_units(t, item, size, indexes);
                    units.items_written += 1;
                }
            }
            units
        }
        "TransactWriteItems" => {
            let mut units = Units::default();
            for action in request["TransactItems"].as_array().into_iter().flatten() {
                units.items_written += 1;
                if let Some(put) = action.get("Put") {
                    let item = &put["Item"];
                    let size = item_size(item);
                    let t = put["TableName"].as_str().unwrap_or_default();
                    units.write += 2.0 * write_units(size);
                    if status == 200 {
                        units.write += index_units(t, item, size, indexes);
                    }
                } else {
                    // ConditionCheck, Update, Delete: at least one (small) item each.
                    units.write += 2.0;
                }
            }
            units
        }
        "TransactGetItems" => {
            let bytes: u64 = response["Responses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| item_size(&r["Item"]))
                .sum();
            Units {
                read: 2.0 * read_units(bytes, true),
                ..Units::default()
            }
        }
        _ => Units::default(),
    }
}

/// The size DynamoDB bills for an item (a map of attribute name to typed value, as on the wire).
pub fn item_size(item: &Value) -> u64 {
    item.as_object()
        .into_iter()
        .flatten()
        .map(|(name, value)| name.len() as u64 + value_size(value))
        .sum()
}

fn value_size(value: &Value) -> u64 {
    let Some((kind, v)) = value.as_object().and_then(|m| m.iter().next()) else {
        return 0;
    };
    match kind.as_str() {
        "S" => v.as_str().map_or(0, |s| s.len() as u64),
        "N" => v.as_str().map_or(0, number_size),
        "B" => v.as_str().map_or(0, |s| (s.len() as u64 * 3) / 4),
        "BOOL" | "NULL" => 1,
        "SS" => v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| s.len() as u64)
            .sum(),
        "NS" => v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(number_size)
            .sum(),
        "BS" => v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|s| (s.len() as u64 * 3) / 4)
            .sum(),
        "L" => {
            3 + v
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| 1 + value_size(e))
                .sum::<u64>()
        }
        "M" => {
            3 + v
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, e)| 1 + k.len() as u64 + value_size(e))
                .sum::<u64>()
        }
        _ => 0,
    }
}

/// A number: one byte per two significant digits, plus one.
fn number_size(n: &str) -> u64 {
    let digits: String = n
        .trim_start_matches('-')
        .split(['e', 'E'])
        .next()
        .unwrap_or_default()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0');
    (significant.len() as u64).div_ceil(2) + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn item_sizes_follow_aws_rules() {
        // Name plus UTF-8 value; "é" is two bytes.
        assert_eq!(item_size(&json!({"ab": {"S": "cdé"}})), 2 + 4);
        // 12345 → 5 significant digits → 3 bytes, plus 1.
        assert_eq!(item_size(&json!({"n": {"N": "12345"}})), 1 + 4);
        assert_eq!(item_size(&json!({"n": {"N": "100"}})), 1 + 2);
        assert_eq!(
            item_size(&json!({"b": {"BOOL": true}, "z": {"NULL": true}})),
            4
        );
        // A map: 3 bytes, and each element 1 + its name + its value.
        assert_eq!(
            item_size(&json!({"m": {"M": {"k": {"S": "v"}}}})),
            1 + 3 + 1 + 1 + 1
        );
        assert_eq!(
            item_size(&json!({"l": {"L": [{"S": "ab"}, {"N": "7"}]}})),
            1 + 3 + 3 + 3
        );
        assert_eq!(item_size(&json!({"e": {"M": {}}})), 1 + 3);
    }

    #[test]
    fn units_follow_aws_rules() {
        let indexes =
            HashMap::from([("t".to_owned(), vec![vec!["tb".to_owned(), "ts".to_owned()]])]);
        let small = json!({"TableName": "t", "Item": {"k": {"S": "x"}, "tb": {"S": "a"}, "ts": {"S": "b"}}});
        let put = dynamodb_units("PutItem", &small, 200, &json!({}), &indexes);
        assert_eq!(put.write, 2.0, "1 for the item, 1 for the index");
        // A 2.5 KB item without index keys: 3 units.
        let big = json!({"TableName": "t", "Item": {"k": {"S": "x".repeat(2500)}}});
        assert_eq!(
            dynamodb_units("PutItem", &big, 200, &json!({}), &indexes).write,
            3.0
        );
        // A failed condition still costs the write, not the index's.
        let failed =
            json!({"__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException"});
        assert_eq!(
            dynamodb_units("PutItem", &small, 400, &failed, &indexes).write,
            1.0
        );
        // Throttled: nothing.
        let throttled = json!({"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException"});
        assert_eq!(
            dynamodb_units("PutItem", &small, 400, &throttled, &indexes).write,
            0.0
        );
        // A transaction of a put and a check: 2 + 2, plus the put's index write.
        let tx = json!({"TransactItems": [
            {"Put": {"TableName": "t", "Item": {"k": {"S": "x"}, "tb": {"S": "a"}, "ts": {"S": "b"}}}},
            {"ConditionCheck": {"TableName": "t", "Key": {"k": {"S": "y"}}}}
        ]});
        assert_eq!(
            dynamodb_units("TransactWriteItems", &tx, 200, &json!({}), &indexes).write,
            5.0
        );
        // Reads: per 4 KB, half when eventually consistent.
        let got = json!({"Item": {"k": {"S": "x".repeat(5000)}}});
        let strong = json!({"TableName": "t", "ConsistentRead": true});
        assert_eq!(
            dynamodb_units("GetItem", &strong, 200, &got, &indexes).read,
            2.0
        );
        assert_eq!(
            dynamodb_units("GetItem", &json!({}), 200, &got, &indexes).read,
            1.0
        );
        let missing = dynamodb_units("GetItem", &strong, 200, &json!({}), &indexes);
        assert_eq!(missing.read, 1.0, "a miss costs the minimum");
        let query =
            json!({"Items": [{"k": {"S": "x".repeat(3000)}}, {"k": {"S": "x".repeat(3000)}}]});
        assert_eq!(
            dynamodb_units("Query", &strong, 200, &query, &indexes).read,
            2.0
        );
    }
}
