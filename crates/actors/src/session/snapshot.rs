//! Session snapshots: one file per session, written atomically.
//!
//! A file is a header line (`DSPEX-SESSION 1 <len> <fnv64>`) and the
//! state as JSON of exactly `len` bytes, written to a temporary file,
//! synced and renamed into place, so a crash mid-write leaves the previous
//! snapshot. A torn, truncated or altered file is detected on load, never
//! half-loaded.

use std::path::{Path, PathBuf};

use dspex_core::{Error, ErrorKind, Result};

use super::SessionState;

const MAGIC: &str = "DSPEX-SESSION";
const VERSION: u32 = 1;

/// Encode a snapshot: a header line (`DSPEX-SESSION 1 <len> <fnv64>`) and
/// the state as JSON of exactly `len` bytes.
pub fn encode_snapshot(state: &SessionState) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(state).map_err(|e| Error::internal(format!("cannot encode session: {e}")))?;
    let mut out = format!("{MAGIC} {VERSION} {} {:016x}\n", body.len(), dspex_core::hash::fnv1a64(&body)).into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decode a snapshot; a torn, truncated or altered file is an error that
/// says which.
pub fn decode_snapshot(bytes: &[u8]) -> Result<SessionState> {
    let corrupt = |why: String| Error::new(ErrorKind::Io, why);
    let nl = bytes.iter().position(|b| *b == b'\n').ok_or_else(|| corrupt("no header line (torn file?)".into()))?;
    let header = std::str::from_utf8(&bytes[..nl]).map_err(|_| corrupt("the header is not text".into()))?;
    let parts: Vec<&str> = header.split(' ').collect();
    let [magic, version, len, sum] = parts.as_slice() else {
        return Err(corrupt(format!("malformed header {header:?}")));
    };
    if *magic != MAGIC {
        return Err(corrupt(format!("not a dspex session snapshot (header {header:?})")));
    }
    if version.parse::<u32>().ok() != Some(VERSION) {
        return Err(corrupt(format!("snapshot version {version} is not {VERSION}")));
    }
    let len: usize = len.parse().map_err(|_| corrupt(format!("bad length {len:?}")))?;
    let body = &bytes[nl + 1..];
    if body.len() != len {
        return Err(corrupt(format!("torn snapshot: header promises {len} bytes, file holds {}", body.len())));
    }
    if format!("{:016x}", dspex_core::hash::fnv1a64(body)) != *sum {
        return Err(corrupt("checksum mismatch: the snapshot was altered or half-written".into()));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(format!("snapshot body does not decode: {e}")))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        // A full disk leaves no partial file behind; the last snapshot stays.
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    if let Some(dir) = path.parent().and_then(|d| std::fs::File::open(d).ok()) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Where session `id`'s snapshot lives under `dir`.
pub(crate) fn snapshot_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.session"))
}

/// Write `state`'s snapshot under `dir`, all or nothing (a new file
/// renamed over the old one). A failure is the caller's to report, not
/// fatal: the session goes on in memory, the previous snapshot stays.
pub(crate) fn persist(dir: &Path, state: &SessionState) -> Result<()> {
    let path = snapshot_path(dir, &state.id);
    let io = |e: std::io::Error| {
        Error::new(ErrorKind::Io, format!("cannot write the session snapshot {}: {e}", path.display()))
            .with_session(&state.id)
            .with_retryable(true)
    };
    let bytes = encode_snapshot(state)?;
    std::fs::create_dir_all(dir).map_err(io)?;
    write_atomically(&path, &bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use dspex_core::{Map, ProgramSpec};
    use serde_json::json;

    fn state() -> SessionState {
        SessionState {
            id: "s1".into(),
            programs: BTreeMap::from([(
                "chat".into(),
                ProgramSpec::predict("history: dspy.History, question -> answer"),
            )]),
            history: BTreeMap::from([(
                "chat".into(),
                vec![json!({"question": "hi", "answer": "hello"}).as_object().cloned().unwrap()],
            )]),
            variables: Map::new(),
            pool: "general".into(),
            ttl_ms: 1000,
            created_ms: 1,
            requests: 2,
            history_turns: Some(5),
            tenant: Some("acme".into()),
        }
    }

    #[test]
    fn snapshots_round_trip_and_torn_files_are_detected() {
        let bytes = encode_snapshot(&state()).unwrap();
        assert_eq!(decode_snapshot(&bytes).unwrap(), state());
        let torn = &bytes[..bytes.len() - 7];
        assert!(decode_snapshot(torn).unwrap_err().message().contains("torn"));
        let mut flipped = bytes.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        assert!(decode_snapshot(&flipped).unwrap_err().message().contains("checksum"));
        assert!(decode_snapshot(b"DSPEX-SESS").unwrap_err().message().contains("header"));
        assert!(decode_snapshot(b"garbage 1 2 3\n{}").unwrap_err().message().contains("not a dspex"));
    }
}
