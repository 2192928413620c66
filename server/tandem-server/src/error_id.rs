//! The `error_id` of a server-side failure: a random token in the 5xx JSON body and in the
//! one log line about it, so that an operator finds the line a user reports
//! (`protocol-spec/http.md`). Its own module because both the HTTP layer and the accept loop
//! (whose connection-cap 503s never reach the router) hand them out.

/// Random bytes of an `error_id`, written as twice as many hex digits.
const ERROR_ID_BYTES: usize = 8;

/// A fresh `error_id`: 16 random hex digits, enough that two failures never share one.
pub(crate) fn new() -> String {
    let bytes: [u8; ERROR_ID_BYTES] = rand::random();
    hex::encode(bytes)
}
