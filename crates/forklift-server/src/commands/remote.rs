//! `forklift enqueue | status | jobs`: clients of a running server's HTTP API.

use std::time::Duration;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};

use crate::cli::{EnqueueArgs, JobsArgs, ServerArgs, StatusArgs};

const FINAL: [&str; 4] = ["SUCCESS", "FAILED", "PARTIAL_SUCCESS", "CANCELLED"];

struct Api {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
}

impl Api {
    fn new(args: &ServerArgs) -> Self {
        Api {
            http: reqwest::Client::new(),
            base: args.server.trim_end_matches('/').to_string(),
            key: args.api_key.clone(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("could not reach the server at {}", self.base))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            let msg = body["error"]["message"].as_str().unwrap_or("no details");
            bail!("{status}: {msg}");
        }
        Ok(body)
    }

    async fn job(&self, id: &str) -> anyhow::Result<Value> {
        self.call(reqwest::Method::GET, &format!("/jobs/{id}"), None)
            .await
    }
}

/// The exit code for a final status: 0 success, 2 partial success, 1 otherwise.
pub fn exit_code(status: &str) -> i32 {
    match status {
        "SUCCESS" => 0,
        "PARTIAL_SUCCESS" => 2,
        _ => 1,
    }
}

pub async fn enqueue(args: EnqueueArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.server);
    let payload: Value =
        serde_json::from_str(&args.payload).context("--payload is not valid JSON")?;
    let mut body = json!({ "type": args.job_type, "payload": payload });
    if let Some(q) = args.queue {
        body["queue"] = json!(q);
    }
    if let Some(p) = args.priority {
        body["priority"] = json!(p);
    }
    let job = api.call(reqwest::Method::POST, "/jobs", Some(body)).await?;
    let id = job["job_id"]
        .as_str()
        .context("the server answered without a job_id")?
        .to_string();
    if !args.wait {
        println!("{id}");
        return Ok(0);
    }
    eprintln!("{id}");
    let bar = ProgressBar::new(100);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos:>3}% {msg}").expect("static template"),
    );
    loop {
        let job = api.job(&id).await?;
        let status = job["status"].as_str().unwrap_or("?").to_string();
        bar.set_position(job["progress"].as_u64().unwrap_or(0));
        bar.set_message(format!("{status} (attempt {})", job["attempt"]));
        if FINAL.contains(&status.as_str()) {
            bar.finish();
            if let Some(e) = job["errors"].as_array().and_then(|e| e.last()) {
                eprintln!("last error: {}", e["message"].as_str().unwrap_or(""));
            }
            println!("{status}");
            return Ok(exit_code(&status));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn status(args: StatusArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.server);
    let mut job = api.job(&args.job_id).await?;
    if !args.follow {
        println!("{}", serde_json::to_string_pretty(&job)?);
        return Ok(0);
    }
    let mut last = String::new();
    loop {
        let status = job["status"].as_str().unwrap_or("?").to_string();
        let line = format!(
            "{status} progress={} attempt={}",
            job["progress"], job["attempt"]
        );
        if line != last {
            println!("{} {line}", chrono::Utc::now().format("%H:%M:%S%.3f"));
            last = line;
        }
        if FINAL.contains(&status.as_str()) {
            return Ok(exit_code(&status));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        job = api.job(&args.job_id).await?;
    }
}

pub async fn jobs(args: JobsArgs) -> anyhow::Result<i32> {
    let api = Api::new(&args.server);
    let mut query = vec![("limit", args.limit.to_string())];
    for (k, v) in [
        ("status", args.status),
        ("type", args.job_type),
        ("queue", args.queue),
    ] {
        if let Some(v) = v {
            query.push((k, v));
        }
    }
    let qs = query
        .iter()
        .map(|(k, v)| format!("{k}={}", urlencode(v)))
        .collect::<Vec<_>>()
        .join("&");
    // A narrow filter's page may come back short (it reads a bounded range): follow the
    // cursor until the limit is shown or the list ends, a bounded number of pages.
    let mut jobs: Vec<serde_json::Value> = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..100 {
        let path = match &cursor {
            None => format!("/jobs?{qs}"),
            Some(c) => format!("/jobs?{qs}&cursor={}", urlencode(c)),
        };
        let page = api.call(reqwest::Method::GET, &path, None).await?;
        jobs.extend(page["jobs"].as_array().into_iter().flatten().cloned());
        cursor = page["next_cursor"].as_str().map(String::from);
        if jobs.len() >= args.limit as usize || cursor.is_none() {
            break;
        }
    }
    jobs.truncate(args.limit as usize);
    println!(
        "{:<36}  {:<20}  {:<10}  {:<15}  {:>4}  {:>7}  CREATED",
        "JOB_ID", "TYPE", "QUEUE", "STATUS", "PROG", "ATTEMPT"
    );
    for j in &jobs {
        println!(
            "{:<36}  {:<20}  {:<10}  {:<15}  {:>3}%  {:>3}/{:<3}  {}",
            j["job_id"].as_str().unwrap_or(""),
            j["type"].as_str().unwrap_or(""),
            j["queue"].as_str().unwrap_or(""),
            j["status"].as_str().unwrap_or(""),
            j["progress"],
            j["attempt"],
            j["max_attempts"],
            j["created_at"].as_str().unwrap_or("")
        );
    }
    Ok(0)
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b',' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
