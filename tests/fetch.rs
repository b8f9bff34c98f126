//! `clip-vis weights fetch` against a small HTTP server on loopback (nothing outside is
//! reachable in CI): redirect handling, checksum verification, resuming an interrupted download.
#![cfg(feature = "fetch")]

use clip_vis::fetch::{fetch_file, FetchOptions};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

/// A hub stand-in: `HEAD /<repo>/resolve/main/<file>` redirects to `/cdn/<file>` with the
/// checksum headers the hub sends; `GET /cdn/<file>` serves the payload, honouring `Range`.
/// With `cut_first_download`, the first full GET stops halfway through the body.
struct Hub {
    endpoint: String,
    requests: Arc<Mutex<Vec<String>>>,
}

fn start_hub(payload: Vec<u8>, advertised_sha256: String, cut_first_download: bool) -> Hub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    std::thread::spawn(move || {
        let mut cut_pending = cut_first_download;
        for stream in listener.incoming().take(16) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut range_start = None;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range_start = value.trim().trim_end_matches('-').parse::<usize>().ok();
                }
            }
            log.lock()
                .unwrap()
                .push(format!("{} range={range_start:?}", request_line.trim()));
            let head = if request_line.starts_with("HEAD ")
                && request_line.contains("/resolve/main/")
            {
                format!(
                    "HTTP/1.1 302 Found\r\nLocation: /cdn/blob\r\nX-Linked-Etag: \"{advertised_sha256}\"\r\nX-Linked-Size: {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                    payload.len()
                )
            } else if request_line.starts_with("GET /cdn/blob") {
                let start = range_start.unwrap_or(0);
                if start >= payload.len() {
                    let _ = stream.write_all(
                        format!("HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", payload.len()).as_bytes(),
                    );
                    continue;
                }
                let body = &payload[start..];
                let status = if start > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let header = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len(),
                    payload.len() - 1,
                    payload.len()
                );
                stream.write_all(header.as_bytes()).unwrap();
                if cut_pending && start == 0 {
                    cut_pending = false;
                    let _ = stream.write_all(&body[..body.len() / 2]);
                } else {
                    let _ = stream.write_all(body);
                }
                continue;
            } else {
                "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_string()
            };
            let _ = stream.write_all(head.as_bytes());
        }
    });
    Hub { endpoint, requests }
}

fn payload() -> (Vec<u8>, String) {
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = format!("{:x}", Sha256::digest(&bytes));
    (bytes, sha)
}

fn cache(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("clip-vis-fetch-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn downloads_verifies_and_caches() {
    let (bytes, sha) = payload();
    let hub = start_hub(bytes.clone(), sha, false);
    let options = FetchOptions {
        cache_dir: cache("plain"),
        endpoint: hub.endpoint.clone(),
    };
    let path = fetch_file("org/model", "weights.bin", &options).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(path.ends_with("org--model/weights.bin"));
    // A second call finds the verified file and downloads nothing.
    fetch_file("org/model", "weights.bin", &options).unwrap();
    let gets = hub
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("GET"))
        .count();
    assert_eq!(gets, 1);
}

#[test]
fn an_interrupted_download_resumes_with_a_range_request() {
    let (bytes, sha) = payload();
    let hub = start_hub(bytes.clone(), sha, true);
    let options = FetchOptions {
        cache_dir: cache("resume"),
        endpoint: hub.endpoint.clone(),
    };
    let error = fetch_file("org/model", "weights.bin", &options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("run the command again"), "{error}");
    let partial = options.cache_dir.join("org--model/weights.bin.part");
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < bytes.len() as u64);
    let path = fetch_file("org/model", "weights.bin", &options).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!partial.exists());
    let log = hub.requests.lock().unwrap().clone();
    assert!(
        log.iter()
            .any(|r| r.starts_with("GET") && r.ends_with(&format!("range=Some({kept})"))),
        "{log:?}"
    );
}

#[test]
fn a_checksum_mismatch_is_an_error_and_leaves_no_file() {
    let (bytes, _) = payload();
    let hub = start_hub(bytes, "0".repeat(64), false);
    let options = FetchOptions {
        cache_dir: cache("mismatch"),
        endpoint: hub.endpoint.clone(),
    };
    let error = fetch_file("org/model", "weights.bin", &options)
        .unwrap_err()
        .to_string();
    assert!(error.contains("checksum mismatch"), "{error}");
    let folder = options.cache_dir.join("org--model");
    assert!(!folder.join("weights.bin").exists() && !folder.join("weights.bin.part").exists());
}

#[test]
fn unknown_model_is_a_usage_error() {
    let options = FetchOptions {
        cache_dir: cache("unknown"),
        endpoint: "http://127.0.0.1:9".into(),
    };
    assert!(clip_vis::fetch::fetch("ViT-Q-99", &options)
        .unwrap_err()
        .to_string()
        .contains("no published checkpoint"));
}

/// A verified file in the cache is used without asking the hub (offline), checked against the
/// checksum recorded when it was downloaded; a cached file that no longer matches it is
/// downloaded again.
#[test]
fn cached_weights_are_used_offline() {
    let (bytes, sha) = payload();
    let hub = start_hub(bytes.clone(), sha, false);
    let cache_dir = cache("offline");
    let online = FetchOptions {
        cache_dir: cache_dir.clone(),
        endpoint: hub.endpoint.clone(),
    };
    let path = fetch_file("org/model", "weights.bin", &online).unwrap();
    // Nothing listens on port 9 of loopback (discard is not served here).
    let offline = FetchOptions {
        cache_dir,
        endpoint: "http://127.0.0.1:9".into(),
    };
    assert_eq!(
        fetch_file("org/model", "weights.bin", &offline).unwrap(),
        path
    );
    // A corrupted cached file is not trusted: it needs the hub again (offline: an error).
    std::fs::write(&path, b"corrupt").unwrap();
    assert!(fetch_file("org/model", "weights.bin", &offline).is_err());
    assert_eq!(
        std::fs::read(fetch_file("org/model", "weights.bin", &online).unwrap()).unwrap(),
        bytes
    );
}

/// A `.part` file longer than the file on the hub (left by another version) is started again,
/// not resumed with a range the server refuses (HTTP 416) at every attempt.
#[test]
fn a_partial_file_larger_than_the_remote_one_starts_again() {
    let (bytes, sha) = payload();
    let hub = start_hub(bytes.clone(), sha, false);
    let options = FetchOptions {
        cache_dir: cache("oversize"),
        endpoint: hub.endpoint.clone(),
    };
    let folder = options.cache_dir.join("org--model");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("weights.bin.part"), vec![1u8; bytes.len() + 10]).unwrap();
    let path = fetch_file("org/model", "weights.bin", &options).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
    assert!(!folder.join("weights.bin.part").exists());
}
