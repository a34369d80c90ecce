//! The `anchorer` Lambda function (an EventBridge schedule): every stream's head anchored in
//! the anchor bucket; the handler lives in `chronicle-lambda`, the domain it serves (the
//! samples) in `chronicle-samples`.

#[tokio::main]
async fn main() -> Result<(), chronicle_lambda::Error> {
    chronicle_lambda::run_anchorer(chronicle_samples::domain()).await
}
