//! The HTTP functions: the local server's router, behind `lambda_http`.

use crate::App;
use chronicle_http::Routes;

/// The router a function serves: the same handlers, status codes and JSON as `chronicle serve`.
pub fn router(app: &App, routes: Routes) -> axum::Router {
    chronicle_http::router_for(app.chronicle.clone(), routes)
}
