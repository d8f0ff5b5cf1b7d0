//! HTTP/1.1 framing: request heads, chunked bodies, backend response heads, error answers.

pub mod chunked;
pub mod errors;
pub mod fuzz;
pub mod request;
pub mod response;
