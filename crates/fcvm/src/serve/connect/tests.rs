//! Envelopes, end-of-stream, errors and the codec of a content type.

use super::*;

#[test]
fn envelopes_round_trip() {
    let mut body = envelope(0, br#"{"a":1}"#);
    body.extend(envelope(0, b""));
    assert_eq!(&body[..5], &[0, 0, 0, 0, 7]);
    let msgs = split(&body).unwrap();
    assert_eq!(msgs, vec![br#"{"a":1}"# as &[u8], b""]);
    let v: super::super::fspb::WatcherRequest =
        single_message(Codec::Json, &envelope(0, br#"{"watcherId":"y"}"#)).unwrap();
    assert_eq!(v.watcher_id, "y");
}

#[test]
fn a_reader_takes_messages_across_pieces() {
    let body = [envelope(0, b"{\"a\":1}"), envelope(0, b"{}")].concat();
    let mut r = Reader::default();
    for piece in body.chunks(3) {
        r.feed(piece);
    }
    assert_eq!(r.take().unwrap().unwrap(), b"{\"a\":1}");
    assert_eq!(r.take().unwrap().unwrap(), b"{}");
    assert!(r.take().is_none() && r.is_empty());
    r.feed(&[0, 0, 0]);
    assert!(r.take().is_none() && !r.is_empty());
    let mut r = Reader::default();
    r.feed(&envelope(FLAG_COMPRESSED, b"x"));
    assert_eq!(r.take().unwrap().unwrap_err().code, Code::InvalidArgument);
    let mut r = Reader::default();
    r.feed(&[0, 0xff, 0xff, 0xff, 0xff]);
    assert_eq!(r.take().unwrap().unwrap_err().code, Code::ResourceExhausted);
}

#[test]
fn end_of_stream_carries_the_error() {
    let ok = end_stream(None);
    assert_eq!(ok[0], FLAG_END);
    assert_eq!(&ok[5..], b"{}");
    let e = end_stream(Some(&RpcError::new(Code::NotFound, "no such process")));
    let v: serde_json::Value = serde_json::from_slice(&e[5..]).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(v["error"]["message"], "no such process");
    assert_eq!(
        u32::from_be_bytes([e[1], e[2], e[3], e[4]]) as usize,
        e.len() - 5
    );
}

#[test]
fn malformed_bodies_are_refused() {
    assert_eq!(split(&[0, 0, 0]).unwrap_err().code, Code::InvalidArgument);
    assert_eq!(
        split(&[0, 0, 0, 0, 9, 1]).unwrap_err().code,
        Code::InvalidArgument
    );
    assert_eq!(
        split(&envelope(FLAG_COMPRESSED, b"x")).unwrap_err().code,
        Code::InvalidArgument
    );
    let huge = [0, 0xff, 0xff, 0xff, 0xff];
    assert_eq!(split(&huge).unwrap_err().code, Code::ResourceExhausted);
    let two = [envelope(0, b"{}"), envelope(0, b"{}")].concat();
    type W = super::super::fspb::WatcherRequest;
    assert!(single_message::<W>(Codec::Json, &two).is_err());
    assert!(decode::<W>(Codec::Json, b"{").is_err());
    assert!(decode::<W>(Codec::Proto, b"\x0a\x05ab").is_err());
}

#[test]
fn codes_map_to_the_protocols_statuses() {
    assert_eq!(Code::NotFound.http_status(), StatusCode::NOT_FOUND);
    assert_eq!(
        Code::Unauthenticated.http_status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(Code::Canceled.http_status().as_u16(), 499);
    let r = RpcError::new(Code::InvalidArgument, "bad").into_response();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert_eq!(r.headers()[header::CONTENT_TYPE], UNARY_JSON);
}

#[test]
fn the_json_and_proto_codecs_are_accepted() {
    let mut h = HeaderMap::new();
    let mut ct = |v: &'static str| {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
        (check_codec(&h, true).ok(), check_codec(&h, false).ok())
    };
    assert_eq!(ct("application/connect+json"), (Some(Codec::Json), None));
    assert_eq!(ct("application/connect+proto"), (Some(Codec::Proto), None));
    assert_eq!(ct("application/proto"), (None, Some(Codec::Proto)));
    assert_eq!(
        ct("application/json; charset=utf-8"),
        (None, Some(Codec::Json))
    );
    assert_eq!(ct("application/connect+thrift"), (None, None));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    let r = check_codec(&h, false).unwrap_err().into_response();
    assert_eq!(r.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("content-encoding", HeaderValue::from_static("gzip"));
    assert!(check_codec(&h, false).is_err());
}
