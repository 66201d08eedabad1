//! Removes ANSI escape sequences (colours, cursor movement) from a byte stream.
//!
//! Packer 1.6.6 colours its output even when piped unless told not to, and colour codes make a
//! stored log hard to read and grep. This filter removes escape sequences and nothing else:
//! every other byte — CR, invalid UTF-8, NUL — passes through unchanged. It keeps its parsing
//! state between calls, so a sequence split across two reads is still removed whole.

/// Where the parser is between two chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [ …` until a final byte in 0x40..=0x7E.
    Csi,
    /// Inside `ESC ] …` (or another string sequence) until BEL or `ESC \`.
    Str,
    /// ESC seen inside a string sequence: `\` ends it.
    StrEscape,
    /// After `ESC (`-style designators, which take exactly one more byte.
    OneMore,
}

/// A streaming ANSI escape-sequence stripper.
#[derive(Debug, Default)]
pub struct AnsiStripper {
    state: State,
}

const ESC: u8 = 0x1b;
const BEL: u8 = 0x07;
/// Sequences longer than this are not escape sequences but garbage; give the bytes back.
const MAX_CSI: usize = 64;

impl AnsiStripper {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends `input` without escape sequences to `out`.
    pub fn push(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len());
        let mut csi_len = 0usize;
        for &b in input {
            self.state = match self.state {
                State::Text => {
                    if b == ESC {
                        State::Escape
                    } else {
                        out.push(b);
                        State::Text
                    }
                }
                State::Escape => match b {
                    b'[' => {
                        csi_len = 0;
                        State::Csi
                    }
                    b']' | b'P' | b'X' | b'^' | b'_' => State::Str,
                    b'(' | b')' | b'*' | b'+' | b'#' | b'%' => State::OneMore,
                    ESC => State::Escape,
                    // Any other byte completes a two-byte escape (ESC 7, ESC M, …).
                    _ => State::Text,
                },
                State::Csi => {
                    csi_len += 1;
                    if (0x40..=0x7e).contains(&b) || csi_len > MAX_CSI {
                        State::Text
                    } else if b == ESC {
                        State::Escape
                    } else {
                        State::Csi
                    }
                }
                State::Str => match b {
                    BEL => State::Text,
                    ESC => State::StrEscape,
                    _ => State::Str,
                },
                State::StrEscape => {
                    if b == b'\\' {
                        State::Text
                    } else {
                        State::Str
                    }
                }
                State::OneMore => State::Text,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip(chunks: &[&[u8]]) -> Vec<u8> {
        let mut s = AnsiStripper::new();
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut out);
        }
        out
    }

    #[test]
    fn colours_go_and_everything_else_stays() {
        let input = b"\x1b[1;32m==> null.x: Running\x1b[0m\r\n\xff\xfe\x00 raw\n";
        assert_eq!(
            strip(&[input]),
            b"==> null.x: Running\r\n\xff\xfe\x00 raw\n"
        );
    }

    #[test]
    fn a_sequence_split_across_reads_is_removed_whole() {
        let input = b"a\x1b[38;5;196mred\x1b[0mb";
        for split in 0..input.len() {
            let (x, y) = input.split_at(split);
            assert_eq!(strip(&[x, y]), b"aredb", "split at {split}");
        }
    }

    #[test]
    fn osc_titles_and_designators_are_removed() {
        assert_eq!(
            strip(&[b"\x1b]0;title\x07text\x1b]8;;http://x\x1b\\link\x1b(Bok"]),
            b"textlinkok"
        );
    }
}
