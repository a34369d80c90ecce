//! The `snapshotter` Lambda function; the handler lives in `chronicle-lambda`, the domain
//! it serves (the samples) in `chronicle-samples`.

#[tokio::main]
async fn main() -> Result<(), chronicle_lambda::Error> {
    chronicle_lambda::run_snapshotter(chronicle_samples::domain()).await
}
