//! The `activity` Lambda function; the handler lives in `chronicle-lambda`.

#[tokio::main]
async fn main() -> Result<(), chronicle_lambda::Error> {
    chronicle_lambda::run_activity().await
}
