//! The `archiver` Lambda function (a daily schedule); the handler lives in `chronicle-lambda`, the domain
//! it serves (the samples) in `chronicle-samples`.

#[tokio::main]
async fn main() -> Result<(), chronicle_lambda::Error> {
    chronicle_lambda::run_archiver(chronicle_samples::domain()).await
}
