//! `download`: resume after a cut connection, checksum before the file
//! appears, against a loopback HTTP server that honours Range.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use arny_model_store::{NoProgress, StoreError, download};
use sha2::{Digest, Sha256};

/// Serves `data`; the first response is cut after `cut` bytes. Records the
/// Range header of every request.
fn server(data: Vec<u8>, cut: usize) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/files/model.gguf", l.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for (i, conn) in l.incoming().enumerate() {
            let mut s = conn.unwrap();
            let mut range = None;
            let mut r = BufReader::new(s.try_clone().unwrap());
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(v.trim().trim_end_matches('-').to_string());
                }
            }
            seen2.lock().unwrap().push(range.clone());
            let start: usize = range.as_deref().map(|v| v.parse().unwrap()).unwrap_or(0);
            let body = &data[start..];
            let status = if start > 0 {
                "206 Partial Content"
            } else {
                "200 OK"
            };
            let head = format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).unwrap();
            let n = if i == 0 {
                cut.min(body.len())
            } else {
                body.len()
            };
            let _ = s.write_all(&body[..n]);
        }
    });
    (url, seen)
}

#[test]
fn downloads_resume_and_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    // SAFETY: the only test in this binary.
    unsafe { std::env::set_var("ARNY_MODELS_DIR", dir.path()) };
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let sha = format!("{:x}", Sha256::digest(&data));
    let (url, seen) = server(data.clone(), 50_000);

    // The first attempt is cut short: an error, and no file under the final name.
    let e = download(&url, &sha, &NoProgress).unwrap_err();
    assert!(
        matches!(e, StoreError::Download { .. } | StoreError::Checksum { .. }),
        "{e}"
    );
    // The second resumes where the first stopped.
    let path = download(&url, &sha, &NoProgress).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert!(
        path.file_name()
            .unwrap()
            .to_string_lossy()
            .ends_with("model.gguf")
    );
    let ranges = seen.lock().unwrap().clone();
    assert_eq!(ranges[0], None);
    assert!(
        ranges[1]
            .as_deref()
            .is_some_and(|r| r.parse::<usize>().unwrap() > 0),
        "{ranges:?}"
    );
    // Present and valid: no request at all.
    assert_eq!(download(&url, &sha, &NoProgress).unwrap(), path);
    assert_eq!(seen.lock().unwrap().len(), 2);
    // A file changed behind Arny's back is checked again, found wrong, and
    // fetched again.
    std::fs::write(&path, b"tampered").unwrap();
    assert_eq!(download(&url, &sha, &NoProgress).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(seen.lock().unwrap().len(), 3);

    // A wrong checksum never becomes a model file.
    let wrong = "0".repeat(64);
    let e = download(&url, &wrong, &NoProgress).unwrap_err();
    assert!(matches!(e, StoreError::Checksum { .. }), "{e}");
    assert!(
        !dir.path()
            .join(format!("{}-model.gguf", &wrong[..12]))
            .exists()
    );
}
