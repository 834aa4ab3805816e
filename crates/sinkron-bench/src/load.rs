//! The load generator: N keep-alive HTTP/1.1 connections (hyper, no pooling layer) to one
//! loopback address, each sending its next request as soon as the previous answer is read,
//! for a fixed time. It records every latency after the warm-up.
//!
//! It must only ever target loopback: [`run`] refuses any other address.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

/// What one measurement saw.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Answers with the expected status, after the warm-up.
    pub ok: u64,
    /// Answers with another status, or failed requests, after the warm-up.
    pub errors: u64,
    pub secs: f64,
    /// Per answer, in microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn per_sec(&self) -> f64 {
        self.ok as f64 / self.secs
    }

    /// The `p`th percentile latency in milliseconds.
    pub fn percentile_ms(&self, p: usize) -> f64 {
        if self.latencies_us.is_empty() {
            return f64::NAN;
        }
        let i = (self.latencies_us.len() * p / 100).min(self.latencies_us.len() - 1);
        f64::from(self.latencies_us[i]) / 1000.0
    }
}

/// Makes the `seq`th request of connection `conn`.
pub type MakeRequest = dyn Fn(usize, u64) -> Request<Full<Bytes>> + Send + Sync;

/// Runs `connections` connections for `warmup + duration`; counts only what finishes after
/// the warm-up.
pub async fn run(
    addr: SocketAddr,
    connections: usize,
    warmup: Duration,
    duration: Duration,
    expect: StatusCode,
    make: Arc<MakeRequest>,
) -> Result<Outcome, String> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to load {addr}: only loopback is a target"
        ));
    }
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let mut tasks = Vec::with_capacity(connections);
    for conn in 0..connections {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            connection(addr, conn, measure_from, end, expect, make).await
        }));
    }
    let mut total = Outcome::default();
    for task in tasks {
        let one = task.await.map_err(|e| format!("load task failed: {e}"))??;
        total.ok += one.ok;
        total.errors += one.errors;
        total.latencies_us.extend(one.latencies_us);
    }
    total.secs = duration.as_secs_f64();
    total.latencies_us.sort_unstable();
    Ok(total)
}

async fn connection(
    addr: SocketAddr,
    conn: usize,
    measure_from: Instant,
    end: Instant,
    expect: StatusCode,
    make: Arc<MakeRequest>,
) -> Result<Outcome, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(driver);
    let mut out = Outcome::default();
    let mut seq = 0u64;
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        let req = make(conn, seq);
        seq += 1;
        let answer = async {
            sender.ready().await?;
            let res = sender.send_request(req).await?;
            let status = res.status();
            res.into_body().collect().await?;
            Ok::<_, hyper::Error>(status)
        }
        .await;
        let done = Instant::now();
        if done < measure_from {
            if answer.is_err() {
                return Err(format!("request failed during warm-up: {answer:?}"));
            }
            continue;
        }
        match answer {
            Ok(status) if status == expect => {
                out.ok += 1;
                let us = done.duration_since(sent).as_micros();
                out.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            }
            Ok(_) => out.errors += 1,
            Err(_) => {
                out.errors += 1;
                break;
            }
        }
    }
    drop(sender);
    let _ = driver.await;
    Ok(out)
}

/// Sends one request on a fresh connection and reads the whole answer.
pub async fn send_one(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), String> {
    if !addr.ip().is_loopback() {
        return Err(format!(
            "refusing to send to {addr}: only loopback is a target"
        ));
    }
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    let (mut sender, driver) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(driver);
    let res = sender
        .send_request(req)
        .await
        .map_err(|e| format!("request: {e}"))?;
    let status = res.status();
    let body = res
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("body: {e}"))?
        .to_bytes();
    drop(sender);
    let _ = driver.await;
    Ok((status, body))
}
