//! The gRPC health checking protocol (`grpc.health.v1.Health/Check`) for `grpc` probes, as
//! the kubelet speaks it: one unary call over plaintext HTTP/2, success when the server
//! answers `SERVING` for the probe's `service` (empty: the whole server).
//!
//! The two messages are encoded and decoded with prost; the call itself is a gRPC request
//! over hyper's HTTP/2 client: a length-prefixed message in the body, the answer's status in
//! the `grpc-status` trailer (or header, for a trailers-only answer).

use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost::Message;

/// `grpc.health.v1.HealthCheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `grpc.health.v1.HealthCheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HealthCheckResponse {
    #[prost(enumeration = "ServingStatus", tag = "1")]
    pub status: i32,
}

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
#[repr(i32)]
pub enum ServingStatus {
    Unknown = 0,
    Serving = 1,
    NotServing = 2,
    ServiceUnknown = 3,
}

impl ServingStatus {
    /// The protocol's name for the status, as the kubelet prints it.
    pub fn name(self) -> &'static str {
        match self {
            ServingStatus::Unknown => "UNKNOWN",
            ServingStatus::Serving => "SERVING",
            ServingStatus::NotServing => "NOT_SERVING",
            ServingStatus::ServiceUnknown => "SERVICE_UNKNOWN",
        }
    }
}

/// The path of the call.
pub const PATH: &str = "/grpc.health.v1.Health/Check";

/// Frames a message as gRPC does: an uncompressed flag byte, the length (big-endian), the bytes.
pub fn frame(msg: &impl Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(0);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The message of a single-message gRPC body.
pub fn unframe(body: &[u8]) -> Result<&[u8], String> {
    if body.len() < 5 {
        return Err("health rpc: empty response".into());
    }
    if body[0] != 0 {
        return Err("health rpc: compressed responses are not supported".into());
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    body.get(5..5 + len)
        .ok_or_else(|| "health rpc: truncated response".to_string())
}

/// Calls `Check` for `service` over `stream` (already connected to the pod); `Ok` when the
/// answer is `SERVING`, else the kubelet's wording of what went wrong.
pub async fn check(
    stream: tokio::net::TcpStream,
    authority: &str,
    service: &str,
    timeout: Duration,
) -> Result<String, String> {
    let call = async {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .map_err(|e| {
                    format!(
                        "timeout: failed to connect service {authority:?} within {timeout:?}: {e}"
                    )
                })?;
        // The connection task ends with the call (the sender is dropped).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = hyper::Request::post(format!("http://{authority}{PATH}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header(
                "user-agent",
                concat!("kube-probe/skiff-", env!("CARGO_PKG_VERSION")),
            )
            .header("grpc-timeout", format!("{}m", timeout.as_millis().max(1)))
            .body(Full::new(Bytes::from(frame(&HealthCheckRequest {
                service: service.to_string(),
            }))))
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let (parts, body) = resp.into_parts();
        if parts.status != hyper::StatusCode::OK {
            return Err(format!(
                "error: health rpc probe failed: HTTP status {}",
                parts.status
            ));
        }
        let collected = body
            .collect()
            .await
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        let trailers = collected.trailers().cloned();
        let data = collected.to_bytes();
        // A trailers-only answer (an error) carries grpc-status among the headers.
        let status = trailers
            .as_ref()
            .and_then(|t| t.get("grpc-status"))
            .or_else(|| parts.headers.get("grpc-status"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        if status != "0" {
            let message = trailers
                .as_ref()
                .and_then(|t| t.get("grpc-message"))
                .or_else(|| parts.headers.get("grpc-message"))
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            // 12 is UNIMPLEMENTED: no health service at all.
            if status == "12" {
                return Err(format!(
                    "error: this server does not implement the grpc health protocol (grpc.health.v1.Health): {message}"
                ));
            }
            return Err(format!(
                "error: health rpc probe failed: rpc error: code = {status} desc = {message}"
            ));
        }
        let msg = HealthCheckResponse::decode(unframe(&data)?)
            .map_err(|e| format!("error: health rpc probe failed: {e}"))?;
        match ServingStatus::try_from(msg.status) {
            Ok(ServingStatus::Serving) => Ok(String::new()),
            Ok(s) => Err(format!("service unhealthy (responded with {:?})", s.name())),
            Err(_) => Err(format!(
                "service unhealthy (responded with status {})",
                msg.status
            )),
        }
    };
    match tokio::time::timeout(timeout, call).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timeout: health rpc did not complete within {timeout:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_encode_as_the_protocol_says() {
        // Field 1, wire type 2 (length-delimited): 0x0a, length, bytes.
        assert_eq!(
            frame(&HealthCheckRequest {
                service: "ab".into()
            }),
            [0, 0, 0, 0, 4, 0x0a, 2, b'a', b'b']
        );
        // An empty service is the default value: no field at all.
        assert_eq!(
            frame(&HealthCheckRequest {
                service: String::new()
            }),
            [0, 0, 0, 0, 0]
        );
        let resp = frame(&HealthCheckResponse {
            status: ServingStatus::NotServing as i32,
        });
        assert_eq!(resp, [0, 0, 0, 0, 2, 0x08, 2]);
        let back = HealthCheckResponse::decode(unframe(&resp).unwrap()).unwrap();
        assert_eq!(
            ServingStatus::try_from(back.status),
            Ok(ServingStatus::NotServing)
        );
        assert!(unframe(&[0, 0, 0, 0, 9, 1]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
    }
}
