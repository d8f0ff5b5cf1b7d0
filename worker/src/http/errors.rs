//! The short answers the proxy itself gives.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    BadRequest,
    RequestTimeout,
    PayloadTooLarge,
    HeaderFieldsTooLarge,
    InternalServerError,
    BadGateway,
    GatewayTimeout,
}

impl Status {
    pub fn code(self) -> u16 {
        match self {
            Status::BadRequest => 400,
            Status::RequestTimeout => 408,
            Status::PayloadTooLarge => 413,
            Status::HeaderFieldsTooLarge => 431,
            Status::InternalServerError => 500,
            Status::BadGateway => 502,
            Status::GatewayTimeout => 504,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Status::BadRequest => "Bad Request",
            Status::RequestTimeout => "Request Timeout",
            Status::PayloadTooLarge => "Payload Too Large",
            Status::HeaderFieldsTooLarge => "Request Header Fields Too Large",
            Status::InternalServerError => "Internal Server Error",
            Status::BadGateway => "Bad Gateway",
            Status::GatewayTimeout => "Gateway Timeout",
        }
    }

    /// A complete response that closes the connection: after an error the framing of what
    /// follows on the connection is not to be trusted.
    pub fn response(self) -> Vec<u8> {
        let body = format!("{} {}\n", self.code(), self.reason());
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.code(),
            self.reason(),
            body.len()
        )
        .into_bytes()
    }
}

/// Answer to plain HTTP sent to the TLS port.
pub fn plaintext_on_tls_port() -> &'static [u8] {
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nContent-Length: 44\r\nConnection: close\r\n\r\nThis port speaks HTTPS: use https:// to it.\n"
}
