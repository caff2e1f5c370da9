//! The `.pte` container's fixed header, checked before the runtime sees the
//! bytes.
//!
//! A program is a flatbuffer with file identifier `ETxx` at bytes 4..8,
//! followed by an extended header (`eh00`) that states how long the
//! flatbuffer is and where the segments (delegate blobs, constant data)
//! start and how many bytes they take. Checking those sizes against the
//! file's length turns a truncated download into a typed error here, and a
//! foreign file into "not a .pte", without trusting the runtime's parser
//! with bytes that cannot be a program.

use arny_engine_api::EngineError;

const EXPECTED: &str = "ExecuTorch .pte";
const EXTENDED_MAGIC: &[u8; 4] = b"eh00";
/// Magic, length, program size, segment base offset.
const EXTENDED_MIN_LEN: u32 = 24;

/// What the header says about the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The flatbuffer's size, header included.
    pub program_size: u64,
    /// Where the segments start (0: none).
    pub segment_base_offset: u64,
    /// The segments' total size (0: none, or not recorded).
    pub segment_data_size: u64,
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Checks `head` (at least the first 64 bytes, or the whole file if
/// shorter) against a file of `file_len` bytes.
pub fn check(head: &[u8], file_len: u64, source_name: &str) -> Result<Header, EngineError> {
    let wrong = |reason: String| EngineError::WrongFormat {
        source_name: source_name.to_string(),
        expected: EXPECTED,
        reason,
    };
    let corrupt = |reason: String| EngineError::Corrupt {
        source_name: source_name.to_string(),
        reason,
    };
    if file_len == 0 {
        return Err(wrong("the file is empty".into()));
    }
    if head.len() < 8 {
        return Err(corrupt(format!(
            "{file_len} bytes is too short for a program"
        )));
    }
    let id = &head[4..8];
    if !(id.starts_with(b"ET") && id[2].is_ascii_digit() && id[3].is_ascii_digit()) {
        return Err(wrong(format!(
            "no ExecuTorch file identifier (bytes 4..8 are {:?})",
            String::from_utf8_lossy(id)
        )));
    }
    if head.len() < 8 + EXTENDED_MIN_LEN as usize {
        return Err(corrupt(format!(
            "{file_len} bytes is too short for a program header"
        )));
    }
    if &head[8..12] != EXTENDED_MAGIC {
        // Programs without the extended header predate segments; the
        // runtime's verifier is the only check for them.
        return Ok(Header {
            program_size: file_len,
            segment_base_offset: 0,
            segment_data_size: 0,
        });
    }
    let len = u32_at(head, 12);
    if len < EXTENDED_MIN_LEN || head.len() < 8 + len.min(32) as usize {
        return Err(corrupt(format!("extended header of {len} bytes")));
    }
    let header = Header {
        program_size: u64_at(head, 16),
        segment_base_offset: u64_at(head, 24),
        segment_data_size: if len >= 32 { u64_at(head, 32) } else { 0 },
    };
    if header.program_size > file_len {
        return Err(corrupt(format!(
            "truncated: the program needs {} bytes, the file has {file_len}",
            header.program_size
        )));
    }
    let end = header
        .segment_base_offset
        .checked_add(header.segment_data_size)
        .ok_or_else(|| corrupt("segment sizes overflow".into()))?;
    if header.segment_base_offset > 0 && end > file_len {
        return Err(corrupt(format!(
            "truncated: the segments end at byte {end}, the file has {file_len}"
        )));
    }
    Ok(header)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(program_size: u64, base: u64, data: u64) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[4..8].copy_from_slice(b"ET12");
        b[8..12].copy_from_slice(EXTENDED_MAGIC);
        b[12..16].copy_from_slice(&32u32.to_le_bytes());
        b[16..24].copy_from_slice(&program_size.to_le_bytes());
        b[24..32].copy_from_slice(&base.to_le_bytes());
        b[32..40].copy_from_slice(&data.to_le_bytes());
        b
    }

    #[test]
    fn accepts_a_whole_program() {
        let h = check(&program(1000, 1024, 4096), 5120, "p").unwrap();
        assert_eq!(h.segment_data_size, 4096);
    }

    #[test]
    fn truncation_is_corrupt() {
        for len in [5119, 1024, 999, 64] {
            let err = check(&program(1000, 1024, 4096), len, "p").unwrap_err();
            assert!(matches!(err, EngineError::Corrupt { .. }), "{len}: {err}");
        }
    }

    #[test]
    fn foreign_and_empty_files_are_wrong_format() {
        let zip = b"PK\x03\x04 this is a zip file, not a model";
        let err = check(zip, zip.len() as u64, "z").unwrap_err();
        assert!(matches!(err, EngineError::WrongFormat { .. }), "{err}");
        let err = check(b"", 0, "e").unwrap_err();
        assert!(matches!(err, EngineError::WrongFormat { .. }), "{err}");
        let gguf = b"GGUF\x03\x00\x00\x00rest of a gguf header....";
        let err = check(gguf, 1 << 20, "g").unwrap_err();
        assert!(matches!(err, EngineError::WrongFormat { .. }), "{err}");
    }
}
