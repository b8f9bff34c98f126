//! Downloading the published open_clip checkpoints (`--features fetch`).
//!
//! Files come from the Hugging Face hub repositories open_clip uses, into a cache folder. A
//! download goes to `<file>.part` and resumes from there with an HTTP range request when
//! interrupted; the finished file is checked against the SHA-256 the hub publishes for it (the
//! `X-Linked-Etag` of large files) and only then renamed into place, with that checksum beside
//! it (`<file>.sha256`): a cached file is checked against it without asking the hub, so cached
//! weights work offline. A `.part` file the server cannot continue (larger than the file, or
//! answered with HTTP 416) is started again from zero. The hub address is
//! configurable (`HF_ENDPOINT`), which is also how the tests point it at a local server.

use crate::error::{Error, Result};
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Where a published checkpoint lives on the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// open_clip model name.
    pub model: &'static str,
    /// Hub repository.
    pub repo: &'static str,
    /// File inside the repository.
    pub file: &'static str,
}

/// The checkpoints CLIP-VIS builds on (SPEC §1).
pub const PUBLISHED: [Published; 2] = [
    Published {
        model: "RN50",
        // OpenAI's RN50 weights as open_clip re-publishes them (a plain state dict; OpenAI's own
        // `RN50.pt` is a TorchScript archive).
        repo: "timm/resnet50_clip.openai",
        file: "open_clip_pytorch_model.bin",
    },
    Published {
        model: "convnext_base_w_320",
        repo: "laion/CLIP-convnext_base_w_320-laion_aesthetic-s13B-b82K",
        file: "open_clip_pytorch_model.bin",
    },
];

/// Where to download from and to.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Cache folder; files land in `<cache>/<repo with / as -->/<file>`.
    pub cache_dir: PathBuf,
    /// Hub address, without trailing slash.
    pub endpoint: String,
}

impl FetchOptions {
    /// Defaults: `$CLIP_VIS_CACHE` else `~/.cache/clip-vis`, `$HF_ENDPOINT` else the public hub.
    pub fn from_env(cache_dir: Option<PathBuf>, endpoint: Option<String>) -> Self {
        let cache_dir = cache_dir
            .or_else(|| std::env::var_os("CLIP_VIS_CACHE").map(PathBuf::from))
            .unwrap_or_else(|| {
                let home = std::env::var_os("HOME")
                    .map(PathBuf::from)
                    .unwrap_or_default();
                home.join(".cache").join("clip-vis")
            });
        let endpoint = endpoint
            .or_else(|| std::env::var("HF_ENDPOINT").ok())
            .unwrap_or_else(|| "https://huggingface.co".into());
        Self {
            cache_dir,
            endpoint: endpoint.trim_end_matches('/').to_string(),
        }
    }
}

/// Downloads (or finds in the cache) the checkpoint of `model`; returns its path.
pub fn fetch(model: &str, options: &FetchOptions) -> Result<PathBuf> {
    let published = PUBLISHED
        .iter()
        .find(|p| p.model.eq_ignore_ascii_case(model))
        .ok_or_else(|| {
            Error::Usage(format!(
                "no published checkpoint for `{model}` (known: RN50, convnext_base_w_320)"
            ))
        })?;
    fetch_file(published.repo, published.file, options)
}

/// Downloads `file` of hub repository `repo` into the cache, resumably, checksum-verified.
pub fn fetch_file(repo: &str, file: &str, options: &FetchOptions) -> Result<PathBuf> {
    let url = format!("{}/{repo}/resolve/main/{file}", options.endpoint);
    let folder = options.cache_dir.join(repo.replace('/', "--"));
    std::fs::create_dir_all(&folder).map_err(|source| Error::Io {
        file: folder.clone(),
        source,
    })?;
    let destination = folder.join(file);
    let recorded = folder.join(format!("{file}.sha256"));
    if destination.exists() {
        if let Ok(checksum) = std::fs::read_to_string(&recorded) {
            if sha256_of(&destination)? == checksum.trim() {
                eprintln!("clip-vis: {} is cached", destination.display());
                return Ok(destination);
            }
            eprintln!(
                "clip-vis: {} does not match the checksum recorded when it was downloaded; \
                 downloading it again",
                destination.display()
            );
        }
    }
    let (location, checksum, size) = resolve(&url)?;
    if destination.exists() && sha256_of(&destination)? == checksum {
        record_checksum(&recorded, &checksum)?;
        eprintln!("clip-vis: {} is cached", destination.display());
        return Ok(destination);
    }
    let partial = folder.join(format!("{file}.part"));
    download(&location, &partial, size)?;
    let actual = sha256_of(&partial)?;
    if actual != checksum {
        let _ = std::fs::remove_file(&partial);
        return Err(Error::Fetch(format!(
            "{url}: checksum mismatch (hub says sha256 {checksum}, download has {actual}); the partial file was removed, run the command again"
        )));
    }
    std::fs::rename(&partial, &destination).map_err(|source| Error::Io {
        file: destination.clone(),
        source,
    })?;
    record_checksum(&recorded, &checksum)?;
    eprintln!("clip-vis: saved {}", destination.display());
    Ok(destination)
}

/// Writes the verified checksum beside the cached file (atomically).
fn record_checksum(path: &Path, checksum: &str) -> Result<()> {
    clip_vis_clip::weights::write_atomically(path, format!("{checksum}\n").as_bytes()).map_err(
        |source| Error::Io {
            file: path.to_path_buf(),
            source,
        },
    )
}

fn agent(redirects: u32) -> ureq::Agent {
    ureq::Agent::config_builder()
        .max_redirects(redirects)
        .http_status_as_error(false)
        .build()
        .into()
}

/// Asks the hub where the file is, its SHA-256 and size, without following the redirect (the
/// checksum headers sit on the hub's own answer, not on the storage server's).
fn resolve(url: &str) -> Result<(String, String, Option<u64>)> {
    let response = agent(0)
        .head(url)
        .call()
        .map_err(|e| Error::Fetch(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    if !(200..400).contains(&status) {
        return Err(Error::Fetch(format!(
            "{url}: the hub answered HTTP {status}"
        )));
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.trim()
                    .trim_start_matches("W/")
                    .trim_matches('"')
                    .to_string()
            })
    };
    let checksum = header("x-linked-etag")
        .or_else(|| header("etag"))
        .filter(|v| v.len() == 64 && v.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| {
            Error::Fetch(format!(
                "{url}: the hub published no SHA-256 for this file, so it cannot be verified"
            ))
        })?
        .to_ascii_lowercase();
    let size = header("x-linked-size")
        .or_else(|| header("content-length"))
        .and_then(|v| v.parse().ok());
    let location = match header("location") {
        Some(target) if target.starts_with('/') => {
            let origin_end = url.find("://").map(|i| i + 3).unwrap_or(0);
            let host_end = url[origin_end..]
                .find('/')
                .map(|i| origin_end + i)
                .unwrap_or(url.len());
            format!("{}{target}", &url[..host_end])
        }
        Some(target) => target,
        None => url.to_string(),
    };
    Ok((location, checksum, size))
}

/// Streams `url` into `partial`, continuing after the bytes already there.
fn download(url: &str, partial: &Path, size: Option<u64>) -> Result<()> {
    let io_error = |source| Error::Io {
        file: partial.to_path_buf(),
        source,
    };
    let mut already = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    if size.is_some_and(|s| already > s) {
        // Not a prefix of this file (another version's, or corrupt): start again.
        eprintln!(
            "clip-vis: {} is larger than the file; starting again",
            partial.display()
        );
        std::fs::remove_file(partial).map_err(io_error)?;
        already = 0;
    }
    if size.is_some_and(|s| already == s) {
        return Ok(());
    }
    let mut request = agent(5).get(url);
    if already > 0 {
        request = request.header("Range", format!("bytes={already}-"));
        eprintln!("clip-vis: resuming at {} MB", already >> 20);
    }
    let mut response = request
        .call()
        .map_err(|e| Error::Fetch(format!("{url}: {e}")))?;
    let status = response.status().as_u16();
    let append = match status {
        206 => true,
        200 => false,
        416 if already > 0 => {
            // The server cannot continue after the bytes we have: start again, once.
            eprintln!(
                "clip-vis: the server cannot resume {}; starting again",
                partial.display()
            );
            std::fs::remove_file(partial).map_err(io_error)?;
            return download(url, partial, size);
        }
        _ => return Err(Error::Fetch(format!("{url}: HTTP {status}"))),
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(io_error)?;
    let mut reader = response.body_mut().as_reader();
    let mut buffer = vec![0u8; 1 << 20];
    let mut written = if append { already } else { 0 };
    let mut next_report = 0u64;
    loop {
        let count = reader.read(&mut buffer).map_err(|e| {
            Error::Fetch(format!(
                "{url}: download interrupted after {written} bytes ({e}); run the command again to resume"
            ))
        })?;
        if count == 0 {
            break;
        }
        file.write_all(&buffer[..count]).map_err(io_error)?;
        written += count as u64;
        if written >= next_report {
            match size {
                Some(total) => eprint!("\rclip-vis: {} / {} MB", written >> 20, total >> 20),
                None => eprint!("\rclip-vis: {} MB", written >> 20),
            }
            next_report = written + (64 << 20);
        }
    }
    eprintln!();
    file.sync_all().map_err(io_error)?;
    if let Some(total) = size {
        if written != total {
            return Err(Error::Fetch(format!(
                "{url}: got {written} of {total} bytes; run the command again to resume"
            )));
        }
    }
    Ok(())
}

fn sha256_of(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).map_err(|source| Error::Io {
        file: path.to_path_buf(),
        source,
    })?;
    Ok(format!("{:x}", hasher.finalize()))
}
