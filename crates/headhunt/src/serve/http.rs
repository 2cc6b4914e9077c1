//! The little HTTP/1.1 that `headhunt serve` needs: one request per connection (`Connection:
//! close`), `GET` and `POST` with a `Content-Length` body, and hard limits on everything a client
//! sends, so that a hostile or broken client costs a bounded read and a clear status code.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Most bytes of the request line and headers together.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most bytes of a request body (an intervention's JSON is a few hundred).
pub const MAX_BODY: usize = 64 * 1024;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    /// The path, percent-decoded.
    pub path: String,
    /// Query parameters, percent-decoded (the last of repeated names).
    pub query: BTreeMap<String, String>,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query.get(name).map(String::as_str)
    }

    /// The token a client presents: `X-Headhunt-Token`, `?token=`, or the cookie set from it.
    pub fn token(&self) -> Option<&str> {
        self.header("x-headhunt-token").or_else(|| self.param("token")).or_else(|| {
            self.header("cookie")?
                .split(';')
                .filter_map(|c| c.trim().split_once('='))
                .find(|(k, _)| *k == "headhunt_token")
                .map(|(_, v)| v)
        })
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub headers: Vec<(&'static str, String)>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    pub fn html(body: String) -> Self {
        Response::new(200, "text/html; charset=utf-8", body)
    }

    pub fn json(value: &serde_json::Value) -> Self {
        Response::new(200, "application/json", value.to_string())
    }

    /// A plain-text error: the status and what was wrong, never a path outside the runs.
    pub fn error(status: u16, message: &str) -> Self {
        Response::new(
            status,
            "text/plain; charset=utf-8",
            format!("{status} {}: {message}\n", reason(status)),
        )
    }

    pub fn with_header(mut self, name: &'static str, value: String) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn write_to(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\
             Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n\
             Content-Security-Policy: default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(&self.body)?;
        stream.flush()
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Payload Too Large",
        415 => "Unsupported Media Type",
        421 => "Misdirected Request",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Read one request, or the response that refuses it.
pub fn read_request(stream: &TcpStream) -> Result<Request, Response> {
    let _ = stream.set_read_timeout(Some(READ_TIMEOUT));
    let mut reader = BufReader::new(stream.take((MAX_HEAD + MAX_BODY + 1) as u64));
    let mut head_bytes = 0usize;
    let mut line = String::new();
    let mut read_line = |reader: &mut BufReader<_>, line: &mut String| -> Result<(), Response> {
        line.clear();
        // At most what is left of the head's budget, plus one byte to see that it ran over.
        let mut limited = reader.by_ref().take((MAX_HEAD - head_bytes.min(MAX_HEAD) + 1) as u64);
        match limited.read_line(line) {
            Ok(0) => Err(Response::error(400, "the request ended early")),
            Ok(n) => {
                head_bytes += n;
                if head_bytes > MAX_HEAD {
                    return Err(Response::error(431, "request line and headers over 16 KiB"));
                }
                if !line.ends_with('\n') {
                    return Err(Response::error(400, "the request ended early"));
                }
                Ok(())
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                Err(Response::error(408, "the request took too long"))
            }
            Err(_) => Err(Response::error(400, "the request is not text")),
        }
    };
    read_line(&mut reader, &mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Response::error(400, "malformed request line"));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(Response::error(400, "only HTTP/1.x"));
    }
    let (method, target) = (method.to_owned(), target.to_owned());
    let mut headers = BTreeMap::new();
    loop {
        read_line(&mut reader, &mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').ok_or_else(|| Response::error(400, "malformed header"))?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    if headers.contains_key("transfer-encoding") {
        return Err(Response::error(501, "chunked request bodies are not accepted; send Content-Length"));
    }
    let length = match headers.get("content-length") {
        None => 0,
        Some(v) => v.parse::<usize>().map_err(|_| Response::error(400, "bad Content-Length"))?,
    };
    if length > MAX_BODY {
        return Err(Response::error(413, "request body over 64 KiB"));
    }
    let mut body = vec![0u8; length];
    reader
        .read_exact(&mut body)
        .map_err(|_| Response::error(400, "the body is shorter than its Content-Length"))?;
    let (raw_path, raw_query) = target.split_once('?').unwrap_or((&target, ""));
    let path = percent_decode(raw_path).ok_or_else(|| Response::error(400, "bad percent-encoding in the path"))?;
    let mut query = BTreeMap::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(&k.replace('+', " ")).ok_or_else(|| Response::error(400, "bad percent-encoding in the query"))?;
        let v = percent_decode(&v.replace('+', " ")).ok_or_else(|| Response::error(400, "bad percent-encoding in the query"))?;
        query.insert(k, v);
    }
    Ok(Request {
        method,
        path,
        query,
        headers,
        body,
    })
}

/// `%XX` decoded; None for a bad escape, for text that is not UTF-8, or for a NUL.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    (!s.contains('\0')).then_some(s)
}

/// `s` escaped for a URL's query value.
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_refuses_what_it_cannot_read() {
        assert_eq!(percent_decode("a%2Fb%20c").as_deref(), Some("a/b c"));
        assert_eq!(percent_decode("%2e%2e/x").as_deref(), Some("../x"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("a%00b"), None);
        assert_eq!(percent_decode("%ff"), None);
        assert_eq!(percent_encode("runs/a b?&"), "runs/a%20b%3F%26");
    }
}
