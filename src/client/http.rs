//! `GET /v1/route` over plain HTTP/1.1: one small request at connect time does not justify
//! an HTTP client crate in the client's dependencies.

use serde_json::Value;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{ClientError, RegionLink};

/// Asks `url` for a region and its alternates; returns them in failover order.
pub(crate) async fn route(url: &str, limit: Duration) -> Result<Vec<RegionLink>, ClientError> {
    let err = |reason: String| ClientError::Route { url: url.to_owned(), reason };
    let body = tokio::time::timeout(limit, get(url))
        .await
        .map_err(|_| err(format!("no answer within {limit:?}")))?
        .map_err(err)?;
    parse_route(&body).map_err(err)
}

/// Parses `{"region","ws_url","alternates":[{"region","ws_url"},...]}`.
pub(crate) fn parse_route(body: &str) -> Result<Vec<RegionLink>, String> {
    let v: Value = serde_json::from_str(body).map_err(|e| format!("answer is not JSON ({e}): {body:.200}"))?;
    let link = |o: &Value| -> Option<RegionLink> {
        Some(RegionLink {
            region: o.get("region")?.as_str()?.to_owned(),
            ws_url: o.get("ws_url")?.as_str()?.to_owned(),
        })
    };
    let first = link(&v).ok_or_else(|| format!("answer has no region and ws_url: {body:.200}"))?;
    let mut out = vec![first];
    for a in v.get("alternates").and_then(Value::as_array).into_iter().flatten() {
        if let Some(l) = link(a) {
            out.push(l);
        }
    }
    Ok(out)
}

async fn get(url: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or("only http:// route URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = tokio::net::TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("the answer has no HTTP header end")?;
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no HTTP status")?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked { dechunk(body)? } else { body.to_owned() };
    if status != 200 {
        return Err(format!("HTTP {status}: {body:.200}"));
    }
    Ok(body)
}

fn dechunk(mut s: &str) -> Result<String, String> {
    let mut out = String::new();
    loop {
        let (size, rest) = s.split_once("\r\n").ok_or("truncated chunked body")?;
        let n = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| format!("bad chunk size {size:?}"))?;
        if n == 0 {
            return Ok(out);
        }
        let chunk = rest.get(..n).ok_or("truncated chunk")?;
        out.push_str(chunk);
        s = rest.get(n + 2..).ok_or("truncated chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_answers_become_a_failover_list() {
        let body = r#"{"region":"eu-west-1","ws_url":"ws://b/v1/ws","http_url":"http://b","alternates":[{"region":"us-east-1","ws_url":"ws://a/v1/ws","http_url":"http://a"}]}"#;
        let l = parse_route(body).unwrap();
        assert_eq!(l.iter().map(|r| r.region.as_str()).collect::<Vec<_>>(), ["eu-west-1", "us-east-1"]);
        assert!(parse_route("{}").is_err());
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap(), "abcde");
    }
}
