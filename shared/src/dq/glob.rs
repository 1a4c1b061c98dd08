//! Tag-class patterns: `*` and `?` wildcards, nothing else.
//!
//! Tag classes (`PUMP*.Running`, `TIGER.LINE?.TT_*`) need only the two
//! shell wildcards, so this is a dozen lines instead of a dependency. The
//! match is case-sensitive (Ignition and OPC UA tag paths are; a PI site
//! that wants both spellings lists two classes), and `*` also matches `/`
//! and `.`: a tag is one opaque string, not a path.
//!
//! The algorithm is the classic greedy one with a single backtrack point:
//! on a mismatch it retries from the most recent `*`, one character further
//! into the text. That is O(pattern × text) in the worst case and never
//! recursive, so a hostile pattern such as `*a*a*a*a*b` cannot blow up.

/// Whether `text` matches `pattern`, where `*` matches any run of characters
/// (including none) and `?` exactly one character. Every other character
/// matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    // Pattern index just after the last `*`, and the text index it is
    // currently assumed to have consumed up to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                pi += 1;
                star = Some((pi, ti));
            }
            Some(b'?') => {
                pi += 1;
                ti += char_len(t[ti]);
            }
            // Literal bytes: both strings are UTF-8 and UTF-8 is prefix-free,
            // so a byte-wise match of whole pattern characters only ever ends
            // on a character boundary of the text.
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    // Let the last `*` swallow one more character.
                    let next = st + char_len(t[st]);
                    star = Some((sp, next));
                    pi = sp;
                    ti = next;
                }
                None => return false,
            },
        }
    }
    p[pi.min(p.len())..].iter().all(|&c| c == b'*')
}

/// Length of the UTF-8 sequence that starts with `lead`.
fn char_len(lead: u8) -> usize {
    match lead {
        0xF0.. => 4,
        0xE0.. => 3,
        0xC0.. => 2,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::glob_match;

    #[test]
    fn dq_glob_star_and_question() {
        assert!(glob_match("PUMP*.Running", "PUMP7.Running"));
        assert!(glob_match("PUMP*.Running", "PUMP.Running"));
        assert!(glob_match("PUMP*.Running", "PUMP12/a.Running"));
        assert!(!glob_match("PUMP*.Running", "PUMP7.Running2"));
        assert!(!glob_match("PUMP*.Running", "pump7.Running"));
        assert!(glob_match("TIGER.LINE?.TT_*", "TIGER.LINE2.TT_101.F_CV"));
        assert!(!glob_match("TIGER.LINE?.TT_*", "TIGER.LINE12.TT_101.F_CV"));
        assert!(glob_match("*", ""));
        assert!(glob_match("*", "anything"));
        assert!(glob_match("", ""));
        assert!(!glob_match("", "x"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("a*b*c", "abc"));
        assert!(!glob_match("a*b*c", "acb"));
        assert!(glob_match("*.PV", "\\\\PISRV01\\TT101.PV"));
        assert!(glob_match("**x**", "x"));
    }

    #[test]
    fn dq_glob_question_matches_one_character_not_one_byte() {
        assert!(glob_match("T?.PV", "Tä.PV"));
        assert!(glob_match("?", "€"));
        assert!(!glob_match("??", "€"));
        assert!(glob_match("*ä", "xxä"));
        assert!(glob_match("*€?", "a€€b"));
        assert!(glob_match("°*", "°C"));
    }

    #[test]
    fn dq_glob_pathological_pattern_is_fast() {
        let text = "a".repeat(10_000);
        let pattern = format!("{}b", "*a".repeat(50));
        assert!(!glob_match(&pattern, &text));
    }
}
