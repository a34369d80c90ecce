//! The `archiver` Lambda function (a daily schedule); the handler lives in `chronicle-lambda`.

#[tokio::main]
async fn main() -> Result<(), chronicle_lambda::Error> {
    chronicle_lambda::run_archiver().await
}
