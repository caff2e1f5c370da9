//! Checks a file before llama.cpp sees it, so that the common mistakes get
//! precise errors (llama.cpp only says "failed to load").

use std::io::Read;
use std::path::Path;

use arny_engine_api::{EngineError, Result};

/// Fixed part of a GGUF header: magic, version, tensor count, KV count.
const HEADER_LEN: u64 = 4 + 4 + 8 + 8;

/// Ensures `path` is a regular file that starts like a GGUF v2/v3 file.
pub fn check_gguf_file(path: &Path) -> Result<u64> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(EngineError::NotFound(path.to_path_buf()));
        }
        Err(e) => return Err(EngineError::io(format!("{}", path.display()), e)),
    };
    if !meta.is_file() {
        return Err(EngineError::NotAFile(path.to_path_buf()));
    }
    let mut header = [0u8; HEADER_LEN as usize];
    let mut f = std::fs::File::open(path)
        .map_err(|e| EngineError::io(format!("open {}", path.display()), e))?;
    let n = read_up_to(&mut f, &mut header)
        .map_err(|e| EngineError::io(format!("read {}", path.display()), e))?;
    check_header(&header[..n], &path.display().to_string())?;
    Ok(meta.len())
}

/// Same checks for an in-memory model.
pub fn check_gguf_bytes(bytes: &[u8], name: &str) -> Result<()> {
    check_header(&bytes[..bytes.len().min(HEADER_LEN as usize)], name)
}

fn check_header(header: &[u8], name: &str) -> Result<()> {
    let wrong = |reason: String| EngineError::WrongFormat {
        source_name: name.to_string(),
        expected: "GGUF",
        reason,
    };
    if header.len() < 4 || &header[..4] != b"GGUF" {
        let shown: Vec<String> = header.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(wrong(format!(
            "missing GGUF magic; file starts with [{}]",
            shown.join(" ")
        )));
    }
    if header.len() < HEADER_LEN as usize {
        return Err(EngineError::Corrupt {
            source_name: name.to_string(),
            reason: format!("only {} bytes, shorter than a GGUF header", header.len()),
        });
    }
    let version = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(2..=3).contains(&version) {
        return Err(wrong(format!("unsupported GGUF version {version}")));
    }
    Ok(())
}

fn read_up_to(f: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_checks() {
        let mut ok = b"GGUF".to_vec();
        ok.extend_from_slice(&3u32.to_le_bytes());
        ok.extend_from_slice(&[0; 16]);
        assert!(check_gguf_bytes(&ok, "m").is_ok());
        assert!(matches!(
            check_gguf_bytes(b"PK\x03\x04 zip", "m"),
            Err(EngineError::WrongFormat { .. })
        ));
        assert!(matches!(
            check_gguf_bytes(b"GGUF\x03\0", "m"),
            Err(EngineError::Corrupt { .. })
        ));
        let mut v9 = ok.clone();
        v9[4] = 9;
        assert!(matches!(
            check_gguf_bytes(&v9, "m"),
            Err(EngineError::WrongFormat { .. })
        ));
        assert!(matches!(
            check_gguf_bytes(b"", "m"),
            Err(EngineError::WrongFormat { .. })
        ));
    }
}
