//! Reading a table's DynamoDB stream with the SDK: an HTTP client for the DynamoDB Streams
//! client that lets the SDK decode every `GetRecords` answer a DynamoDB engine sends.
//!
//! DynamoDB writes an attribute holding an empty map as `{"M":{}}`, in stream records as
//! everywhere else (an `AttributeValue` has exactly one member, its type: "M: An attribute of
//! type Map", in the DynamoDB Streams API reference's `AttributeValue`). DynamoDB Local 3.3 (the
//! engine of the test command's second pass) writes it as a bare `{}` in the `Keys`,
//! `NewImage` and `OldImage` of `GetRecords`, at any depth, though `GetItem` answers `{"M":{}}`
//! for the same item. The SDK refuses a bare `{}` ("Union did not contain a valid variant")
//! and with it the whole answer, so a reader would stop at that record for good. This client
//! turns such a `{}` into `{"M":{}}`, the one value it can stand for (every other type has a
//! tag), and passes every other answer on untouched: on DynamoDB it changes nothing.

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::byte_stream::ByteStream;
use serde_json::{json, Value};

const GET_RECORDS: &str = "DynamoDBStreams_20120810.GetRecords";

/// The HTTP client for a DynamoDB Streams client made from `sdk`: `sdk`'s own (a test's fault
/// injector, say), or the SDK's default one, with `GetRecords` answers repaired as above.
pub fn http_client(sdk: &aws_config::SdkConfig) -> SharedHttpClient {
    let inner = sdk
        .http_client()
        .unwrap_or_else(crate::config::https_client);
    SharedHttpClient::new(RepairingClient { inner })
}

#[derive(Debug)]
struct RepairingClient {
    inner: SharedHttpClient,
}

impl HttpClient for RepairingClient {
    fn http_connector(
        &self,
        settings: &HttpConnectorSettings,
        components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(RepairingConnector {
            inner: self.inner.http_connector(settings, components),
        })
    }
}

#[derive(Debug)]
struct RepairingConnector {
    inner: SharedHttpConnector,
}

impl HttpConnector for RepairingConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let get_records = request.headers().get("x-amz-target") == Some(GET_RECORDS);
        let inner = self.inner.clone();
        HttpConnectorFuture::new(async move {
            let mut response = inner.call(request).await?;
            if !get_records || !response.status().is_success() {
                return Ok(response);
            }
            // The SDK reads a `GetRecords` answer whole before decoding it anyway.
            let body = ByteStream::new(response.take_body())
                .collect()
                .await
                .map_err(|e| ConnectorError::io(e.into()))?
                .into_bytes();
            match repair_get_records(&body) {
                Some(repaired) => {
                    // The length and the CRC32 DynamoDB sends were the original body's.
                    response.headers_mut().remove("content-length");
                    response.headers_mut().remove("x-amz-crc32");
                    *response.body_mut() = SdkBody::from(repaired);
                }
                None => *response.body_mut() = SdkBody::from(body),
            }
            Ok(response)
        })
    }
}

/// A `GetRecords` answer with every untyped `{}` attribute value of its records' `Keys`,
/// `NewImage` and `OldImage` written as `{"M":{}}`; `None` when there is none (or the body is
/// not a `GetRecords` answer at all: the SDK then says what is wrong with it).
pub fn repair_get_records(body: &[u8]) -> Option<Vec<u8>> {
    // No `{}` anywhere: nothing to repair, and no need to parse.
    if !body.windows(2).any(|w| w == b"{}") {
        return None;
    }
    let mut doc: Value = serde_json::from_slice(body).ok()?;
    let mut changed = false;
    for record in doc.get_mut("Records")?.as_array_mut()? {
        let Some(change) = record.get_mut("dynamodb") else {
            continue;
        };
        for image in ["Keys", "NewImage", "OldImage"] {
            if let Some(Value::Object(attributes)) = change.get_mut(image) {
                for value in attributes.values_mut() {
                    changed |= repair_value(value);
                }
            }
        }
    }
    if !changed {
        return None;
    }
    serde_json::to_vec(&doc).ok()
}

/// Repairs one attribute value and the values inside it (of a map or a list).
fn repair_value(value: &mut Value) -> bool {
    let Value::Object(typed) = value else {
        return false;
    };
    if typed.is_empty() {
        *value = json!({ "M": {} });
        return true;
    }
    let mut changed = false;
    if let Some(Value::Object(map)) = typed.get_mut("M") {
        for v in map.values_mut() {
            changed |= repair_value(v);
        }
    }
    if let Some(Value::Array(list)) = typed.get_mut("L") {
        for v in list {
            changed |= repair_value(v);
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `GetRecords` answer of DynamoDB Local 3.3.1 (shortened) for an item holding empty maps
    /// at the top, inside a map and inside a list, and an empty list.
    const LOCAL: &str = r#"{"Records":[{"eventID":"e1","eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"ddblocal","dynamodb":{"ApproximateCreationDateTime":1796480400.000,"Keys":{"pk":{"S":"a"}},"NewImage":{"pk":{"S":"a"},"m":{},"l":{"L":[]},"data":{"S":"{}"},"nested":{"M":{"inner":{},"list":{"L":[{},{"L":[]}]}}}},"OldImage":{"pk":{"S":"a"},"metadata":{}},"SequenceNumber":"000000000000000000510","SizeBytes":62,"StreamViewType":"NEW_AND_OLD_IMAGES"}}],"NextShardIterator":"it"}"#;

    #[test]
    fn empty_maps_get_their_type() {
        let repaired: Value =
            serde_json::from_slice(&repair_get_records(LOCAL.as_bytes()).expect("repaired"))
                .expect("JSON");
        let change = &repaired["Records"][0]["dynamodb"];
        assert_eq!(change["NewImage"]["m"], json!({"M": {}}));
        assert_eq!(
            change["NewImage"]["l"],
            json!({"L": []}),
            "lists are typed already"
        );
        assert_eq!(
            change["NewImage"]["data"],
            json!({"S": "{}"}),
            "text is text"
        );
        assert_eq!(
            change["NewImage"]["nested"],
            json!({"M": {"inner": {"M": {}}, "list": {"L": [{"M": {}}, {"L": []}]}}})
        );
        assert_eq!(change["OldImage"]["metadata"], json!({"M": {}}));
        assert_eq!(change["SequenceNumber"], json!("000000000000000000510"));
        assert_eq!(repaired["NextShardIterator"], json!("it"));
    }

    #[test]
    fn answers_dynamodb_sends_pass_untouched() {
        let typed = LOCAL
            .replace(r#""m":{}"#, r#""m":{"M":{}}"#)
            .replace(r#""inner":{}"#, r#""inner":{"M":{}}"#)
            .replace(r#"{"L":[{},"#, r#"{"L":[{"M":{}},"#)
            .replace(r#""metadata":{}"#, r#""metadata":{"M":{}}"#);
        assert_eq!(repair_get_records(typed.as_bytes()), None);
        assert_eq!(repair_get_records(br#"{"Records":[]}"#), None);
        assert_eq!(
            repair_get_records(b"{}"),
            None,
            "no records: not ours to judge"
        );
        assert_eq!(repair_get_records(b"not json {}"), None);
    }
}
