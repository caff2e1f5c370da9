//! Turning a token stream into text that is safe to show as it arrives.
//!
//! Byte-level BPE splits a multi-byte character across tokens and stop
//! strings span tokens, so a streamed piece must hold back two kinds of
//! suffix: an incomplete UTF-8 sequence, and text that may be the start of a
//! stop string.

/// Accumulates token bytes and releases only complete UTF-8 characters.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `bytes` and returns every complete character now available.
    /// Invalid sequences become U+FFFD instead of stalling the stream.
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // SAFETY-free: from_utf8 just validated this prefix.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid])
                            .unwrap_or_default(),
                    );
                    start += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += bad;
                        }
                        // An incomplete sequence at the end: wait for more.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
        out
    }

    /// Releases whatever is left; an unfinished character becomes U+FFFD.
    pub fn finish(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

/// Outcome of feeding text to a [`StopMatcher`].
#[derive(Debug, Default, PartialEq, Eq)]
pub struct StopScan {
    /// Text that can be shown now.
    pub emit: String,
    /// Set when a stop string completed; `emit` ends right before it.
    pub stopped: Option<String>,
}

/// Finds stop strings in streamed text, holding back any suffix that could
/// still grow into one.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

impl StopMatcher {
    pub fn new(stops: impl IntoIterator<Item = String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            held: String::new(),
        }
    }

    pub fn push(&mut self, text: &str) -> StopScan {
        if self.stops.is_empty() {
            return StopScan {
                emit: text.to_string(),
                stopped: None,
            };
        }
        self.held.push_str(text);
        // The earliest complete match wins, whichever stop string it is.
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, s)| (*at, std::cmp::Reverse(s.len())));
        if let Some((at, stop)) = first {
            let stop = stop.clone();
            let emit = self.held[..at].to_string();
            self.held.clear();
            return StopScan {
                emit,
                stopped: Some(stop),
            };
        }
        let keep = self.partial_suffix_len();
        let cut = self.held.len() - keep;
        let emit = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopScan {
            emit,
            stopped: None,
        }
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }

    /// Length of the longest suffix of `held` that is a proper prefix of a
    /// stop string, measured on character boundaries.
    fn partial_suffix_len(&self) -> usize {
        let mut best = 0;
        for (i, _) in self.held.char_indices() {
            let suffix = &self.held[i..];
            if self.stops.iter().any(|s| s.starts_with(suffix)) {
                best = suffix.len();
                break;
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_stream_joins_split_characters() {
        let text = "héllo 日本 🎉!";
        let bytes = text.as_bytes();
        // Feed one byte at a time: no piece may contain a broken character.
        let mut s = Utf8Stream::new();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&s.push(std::slice::from_ref(b)));
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
    }

    #[test]
    fn utf8_stream_replaces_invalid_bytes_and_keeps_going() {
        let mut s = Utf8Stream::new();
        assert_eq!(s.push(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(s.push(&[0xe6, 0x97]), "");
        assert!(s.has_pending());
        assert_eq!(s.finish(), "\u{fffd}");
    }

    #[test]
    fn stop_matcher_holds_back_possible_prefixes() {
        let mut m = StopMatcher::new(["\nUser:".to_string()]);
        assert_eq!(m.push("Hello").emit, "Hello");
        let r = m.push(" there\nUs");
        assert_eq!(r.emit, " there");
        assert_eq!(r.stopped, None);
        let r = m.push("er: hi");
        assert_eq!(r.emit, "");
        assert_eq!(r.stopped.as_deref(), Some("\nUser:"));
    }

    #[test]
    fn stop_matcher_releases_false_alarms() {
        let mut m = StopMatcher::new(["STOP".to_string()]);
        assert_eq!(m.push("ST").emit, "");
        assert_eq!(m.push("ART").emit, "START");
        assert_eq!(m.push("S").emit, "");
        assert_eq!(m.finish(), "S");
    }

    #[test]
    fn stop_matcher_earliest_match_wins() {
        let mut m = StopMatcher::new(["bc".to_string(), "abcd".to_string()]);
        let r = m.push("xabcd");
        assert_eq!(r.emit, "x");
        assert_eq!(r.stopped.as_deref(), Some("abcd"));
    }

    #[test]
    fn stop_matcher_without_stops_is_a_passthrough() {
        let mut m = StopMatcher::new(Vec::new());
        assert_eq!(m.push("abc").emit, "abc");
        assert_eq!(m.finish(), "");
    }
}
