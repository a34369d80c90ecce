//! The `reactor` Lambda function (Kinesis): the domain's reactions; the handler lives in
//! `chronicle-lambda`, the domain it serves (the samples) in `chronicle-samples`.

#[tokio::main]
async fn main() -> Result<(), chronicle_lambda::Error> {
    chronicle_lambda::run_reactor(chronicle_samples::domain()).await
}
