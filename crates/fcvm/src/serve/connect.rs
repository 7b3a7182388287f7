//! The Connect RPC wire format envd speaks (connectrpc.com/docs/protocol), as far as the E2B
//! SDK uses it: HTTP/1.1 or h2c, the JSON and protobuf codecs, unary calls, server streams and
//! client streams.
//!
//! - Unary: the request body is the message (`application/json` or `application/proto`); a
//!   success is `200` with the reply in the same codec, an error is a non-200 status with the
//!   JSON `{"code": "not_found", "message": …}` (JSON whatever the codec, as Connect has it).
//! - Streams (`application/connect+json` or `application/connect+proto`): the body is a
//!   sequence of envelopes, each a flags byte, a big-endian u32 length and the message. The
//!   server's last envelope carries flag [`FLAG_END`] and a JSON end-of-stream message: `{}`
//!   on success, `{"error": {…}}` else. The HTTP status of a stream is always 200, since its
//!   error arrives only at its end.
//!
//! A message type of either codec is a [`Wire`] (requests) or a [`Reply`]: the handlers work
//! on the JSON mapping's types ([`super::pb`], [`super::fspb`]); [`super::wire`] converts to
//! and from the protobuf messages ([`super::envdpb`]). Compressed requests and other content
//! types get `415 Unsupported Media Type`.

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The message is compressed (never set by this server; refused in requests).
pub const FLAG_COMPRESSED: u8 = 0x01;
/// The end-of-stream message.
pub const FLAG_END: u8 = 0x02;
/// Largest request message accepted (envd's requests are small; file data goes over /files).
pub const MAX_MESSAGE: usize = 4 << 20;

pub const STREAM_JSON: &str = "application/connect+json";
pub const UNARY_JSON: &str = "application/json";
pub const STREAM_PROTO: &str = "application/connect+proto";
pub const UNARY_PROTO: &str = "application/proto";

/// The codec of a call, from its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Json,
    Proto,
}

impl Codec {
    /// The content type of a reply of this codec.
    pub fn content_type(self, streaming: bool) -> &'static str {
        match (self, streaming) {
            (Codec::Json, false) => UNARY_JSON,
            (Codec::Json, true) => STREAM_JSON,
            (Codec::Proto, false) => UNARY_PROTO,
            (Codec::Proto, true) => STREAM_PROTO,
        }
    }
}

/// A request message: decodes from either codec.
pub trait Wire: Sized {
    fn from_json(json: &[u8]) -> Result<Self, RpcError>;
    fn from_proto(bytes: &[u8]) -> Result<Self, RpcError>;
}

/// A reply message: encodes to either codec.
pub trait Reply {
    fn to_json(&self) -> Vec<u8>;
    fn to_proto(&self) -> Vec<u8>;
}

impl<T: Reply> Reply for &T {
    fn to_json(&self) -> Vec<u8> {
        (*self).to_json()
    }
    fn to_proto(&self) -> Vec<u8> {
        (*self).to_proto()
    }
}

/// Decodes a JSON message (unknown fields are ignored, as protobuf's JSON mapping allows).
pub fn from_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, RpcError> {
    let json = if json.is_empty() {
        b"{}" as &[u8]
    } else {
        json
    };
    serde_json::from_slice(json)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad request message: {e}")))
}

/// Decodes a protobuf message (unknown fields are skipped).
pub fn from_proto<T: prost::Message + Default>(bytes: &[u8]) -> Result<T, RpcError> {
    T::decode(bytes)
        .map_err(|e| RpcError::new(Code::InvalidArgument, format!("bad request message: {e}")))
}

/// A message's bytes in `codec`.
pub fn encode<T: Reply>(codec: Codec, msg: &T) -> Vec<u8> {
    match codec {
        Codec::Json => msg.to_json(),
        Codec::Proto => msg.to_proto(),
    }
}

/// Connect's error codes (the gRPC set, spelled in snake case on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Canceled,
    Unknown,
    InvalidArgument,
    DeadlineExceeded,
    NotFound,
    AlreadyExists,
    PermissionDenied,
    ResourceExhausted,
    FailedPrecondition,
    Aborted,
    OutOfRange,
    Unimplemented,
    Internal,
    Unavailable,
    DataLoss,
    Unauthenticated,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Aborted => "aborted",
            Code::OutOfRange => "out_of_range",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::DataLoss => "data_loss",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a unary error with this code (the protocol's table).
    pub fn http_status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).expect("499 is a valid status"),
            Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }
}

/// An RPC's failure as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_str())]
pub struct RpcError {
    pub code: Code,
    pub message: String,
}

impl RpcError {
    pub fn new(code: Code, message: impl Into<String>) -> RpcError {
        RpcError {
            code,
            message: message.into(),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({"code": self.code.as_str(), "message": self.message})
    }
}

/// A unary error: the code's HTTP status and the JSON error body.
impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.json()).expect("JSON value serialises");
        (
            self.code.http_status(),
            [(header::CONTENT_TYPE, HeaderValue::from_static(UNARY_JSON))],
            body,
        )
            .into_response()
    }
}

/// A successful unary reply.
pub fn unary_ok<T: Reply>(codec: Codec, msg: &T) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(codec.content_type(false)),
        )],
        encode(codec, msg),
    )
        .into_response()
}

/// A stream's response: status 200, the codec's stream content type, `body`.
pub fn stream_response(codec: Codec, body: impl Into<axum::body::Body>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(codec.content_type(true)),
        )],
        body.into(),
    )
        .into_response()
}

/// One envelope: flags, big-endian length, message.
pub fn envelope(flags: u8, message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(5 + message.len());
    v.push(flags);
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// A stream message as an envelope.
pub fn stream_message<T: Reply>(codec: Codec, msg: &T) -> Vec<u8> {
    envelope(0, &encode(codec, msg))
}

/// The end-of-stream envelope: `{}`, or `{"error": …}`.
pub fn end_stream(error: Option<&RpcError>) -> Vec<u8> {
    let body = match error {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({"error": e.json()}),
    };
    envelope(
        FLAG_END,
        &serde_json::to_vec(&body).expect("JSON value serialises"),
    )
}

/// Splits a request body into its envelopes' messages. Compressed and oversized messages, and
/// a body that ends inside an envelope, are the client's error.
pub fn split(mut body: &[u8]) -> Result<Vec<&[u8]>, RpcError> {
    let bad =
        |why: &str| RpcError::new(Code::InvalidArgument, format!("malformed envelope: {why}"));
    let mut out = Vec::new();
    while !body.is_empty() {
        if body.len() < 5 {
            return Err(bad("truncated prefix"));
        }
        let flags = body[0];
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if flags & FLAG_COMPRESSED != 0 {
            return Err(bad("compressed messages are not accepted"));
        }
        if len > MAX_MESSAGE {
            return Err(RpcError::new(
                Code::ResourceExhausted,
                format!("message of {len} bytes exceeds {MAX_MESSAGE}"),
            ));
        }
        let rest = &body[5..];
        if rest.len() < len {
            return Err(bad("truncated message"));
        }
        out.push(&rest[..len]);
        body = &rest[len..];
    }
    Ok(out)
}

/// Envelopes of a request body that arrives piece by piece (client streams): feed bytes, take
/// whole messages. At most one message is buffered.
#[derive(Default)]
pub struct Reader {
    buf: Vec<u8>,
}

impl Reader {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message, None until one is complete; an error ends the stream.
    pub fn take(&mut self) -> Option<Result<Vec<u8>, RpcError>> {
        if self.buf.len() < 5 {
            return None;
        }
        let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]) as usize;
        if len > MAX_MESSAGE || self.buf[0] & FLAG_COMPRESSED != 0 {
            return Some(split(&self.buf[..5]).map(|_| vec![]));
        }
        if self.buf.len() < 5 + len {
            return None;
        }
        let msg = self.buf[5..5 + len].to_vec();
        self.buf.drain(..5 + len);
        Some(Ok(msg))
    }

    /// Whether the body ended between envelopes.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// Parses the one request message of a server-streaming call.
pub fn single_message<T: Wire>(codec: Codec, body: &[u8]) -> Result<T, RpcError> {
    match split(body)?.as_slice() {
        [one] => decode(codec, one),
        more => Err(RpcError::new(
            Code::InvalidArgument,
            format!("expected one request message, got {}", more.len()),
        )),
    }
}

/// Decodes a request message of `codec`.
pub fn decode<T: Wire>(codec: Codec, bytes: &[u8]) -> Result<T, RpcError> {
    match codec {
        Codec::Json => T::from_json(bytes),
        Codec::Proto => T::from_proto(bytes),
    }
}

/// A request in a codec this server does not speak: 415, naming the JSON one.
#[derive(Debug)]
pub struct Unsupported(&'static str);

impl IntoResponse for Unsupported {
    fn into_response(self) -> Response {
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            [(
                header::HeaderName::from_static("accept-post"),
                HeaderValue::from_static(self.0),
            )],
        )
            .into_response()
    }
}

/// The codec of a request: JSON or protobuf of the call's kind; anything else (compression,
/// another codec, a stream content type on a unary call) is refused with 415.
pub fn check_codec(headers: &HeaderMap, streaming: bool) -> Result<Codec, Unsupported> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let ct = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let want = Codec::Json.content_type(streaming);
    let codec = if ct == want {
        Codec::Json
    } else if ct == Codec::Proto.content_type(streaming) {
        Codec::Proto
    } else {
        return Err(Unsupported(want));
    };
    let encoding = if streaming {
        "connect-content-encoding"
    } else {
        "content-encoding"
    };
    let compressed = headers
        .get(encoding)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|e| !e.eq_ignore_ascii_case("identity"));
    if compressed {
        return Err(Unsupported(want));
    }
    Ok(codec)
}

/// The Connect error of an agent file request's error (files and watches).
pub fn rpc_fs_error(e: crate::session::fs::FsError) -> RpcError {
    let code = match e.kind() {
        Some(fcvm_proto::FsErrorKind::NotFound) => Code::NotFound,
        Some(fcvm_proto::FsErrorKind::Exists) => Code::AlreadyExists,
        Some(fcvm_proto::FsErrorKind::PermissionDenied) => Code::PermissionDenied,
        Some(fcvm_proto::FsErrorKind::Failed) => Code::Internal,
        Some(fcvm_proto::FsErrorKind::NoContainer) | None => Code::Unavailable,
        Some(_) => Code::InvalidArgument,
    };
    RpcError::new(code, e.to_string())
}

#[cfg(test)]
mod tests;
