//! A `multipart/form-data` body split into its parts (what `files.write` sends): the
//! boundary from the Content-Type, each part's filename from its Content-Disposition.
//! The whole body is in memory already (bounded by the route's body limit).

/// One part: its filename (if any) and its bytes.
pub struct Part<'a> {
    pub filename: Option<String>,
    pub data: &'a [u8],
}

/// The parts of `body`, or why it is not a multipart body.
pub fn parse<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, String> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty())
        .ok_or("multipart body without a boundary")?;
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    let mut parts = Vec::new();
    let mut rest = match find(body, delim) {
        Some(i) => &body[i + delim.len()..],
        None => return Err("no multipart boundary in the body".into()),
    };
    loop {
        if rest.starts_with(b"--") {
            return Ok(parts);
        }
        rest = rest
            .strip_prefix(b"\r\n")
            .ok_or("malformed multipart body")?;
        let head_end = find(rest, b"\r\n\r\n").ok_or("malformed multipart part")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        let content = &rest[head_end + 4..];
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(delim);
        let end = find(content, &end_delim).ok_or("multipart part without an end")?;
        parts.push(Part {
            filename: filename(&head),
            data: &content[..end],
        });
        rest = &content[end + end_delim.len()..];
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// `filename="…"` of a part's Content-Disposition header.
fn filename(head: &str) -> Option<String> {
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))?;
    let i = line.find("filename=")?;
    let v = &line[i + "filename=".len()..];
    let v = if let Some(q) = v.strip_prefix('"') {
        &q[..q.find('"')?]
    } else {
        v.split(';').next()?.trim()
    };
    Some(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_parts_as_httpx_sends_them() {
        let body = b"--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"/tmp/a.txt\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\n--b\r\n--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"b\"\r\n\r\nx\r\ny\r\n--b0--\r\n";
        let parts = parse("multipart/form-data; boundary=b0", body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].filename.as_deref(), Some("/tmp/a.txt"));
        assert_eq!(parts[0].data, b"hello\r\n--b");
        assert_eq!(
            (parts[1].filename.as_deref(), parts[1].data),
            (Some("b"), &b"x\r\ny"[..])
        );
        assert!(parse("multipart/form-data", body).is_err());
        assert!(parse("multipart/form-data; boundary=zz", body).is_err());
        assert!(parse("multipart/form-data; boundary=b0", b"--b0\r\nno end").is_err());
    }
}
