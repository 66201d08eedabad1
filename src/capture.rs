//! Runs the wrapped command (Packer) and captures everything it prints.
//!
//! The command runs in a process group of its own, with `PACKER_LOG=1` unless the caller set
//! `PACKER_LOG`. Its stdout and stderr are read by one thread each and merged, a line at a time,
//! in arrival order into the log sink; the console gets stdout as it comes and stderr without
//! Packer's timestamped debug lines (all of it when verbose). Memory stays bounded whatever the
//! command prints: chunks are at most [`CHUNK`] bytes and at most [`IN_FLIGHT`] are queued.
//!
//! Every byte is redacted ([`crate::redact`]) before it reaches the sink or the console: the raw
//! output exists only in this module's bounded buffers. Colour sequences are removed first, so
//! the console shows the same redacted text the log stores.
//!
//! SIGINT, SIGTERM and SIGHUP sent to the wrapper are forwarded to the command's whole process
//! group — Packer 1.6.6 ignores SIGINT sent to its pid alone, and SIGTERM to the pid orphans
//! provisioner children — then the group gets `grace` to clean up (Proxmox clean-up makes API
//! calls) before SIGKILL. Nothing here decides what is stored: the sink does.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::ansi::AnsiStripper;
use crate::error::{Error, Result};
use crate::redact::Redactor;

/// Largest chunk handed from a reader thread to the merger.
pub const CHUNK: usize = 64 * 1024;
/// Chunks queued between the readers and the merger at most.
const IN_FLIGHT: usize = 16;
/// How long output may keep coming after the command exited (grandchildren holding the pipes)
/// before the rest of its process group is killed.
const DRAIN: Duration = Duration::from_secs(5);

/// What to run and how.
#[derive(Debug, Clone)]
pub struct Spec {
    /// argv; the first element is the program.
    pub argv: Vec<OsString>,
    /// Variables added to the command's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Show Packer's debug lines on the console too.
    pub show_debug: bool,
    /// Time the process group gets after a forwarded signal before SIGKILL.
    pub grace: Duration,
    /// What to redact from the output.
    pub redaction: crate::redact::Config,
}

/// Where captured output goes, ANSI sequences already removed.
pub trait LogSink {
    fn write_log(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// How the command ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The command's exit code; 128 + signal when it was killed by one.
    pub exit_code: i32,
    /// The signal the wrapper received and forwarded, if the run was interrupted.
    pub interrupted_by: Option<i32>,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// Replacements made in the output, per redaction rule.
    pub redactions: std::collections::BTreeMap<String, u64>,
}

impl Outcome {
    /// The wrapper's own exit code: 128 + signal when interrupted (130 for SIGINT, 143 for
    /// SIGTERM, 129 for SIGHUP), else the command's.
    pub fn wrapper_exit_code(&self) -> i32 {
        match self.interrupted_by {
            Some(sig) => 128 + sig,
            None => self.exit_code,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Out,
    Err,
}

enum Event {
    Chunk(Stream, Vec<u8>),
    Closed,
    ReadFailed(Stream, io::Error),
    Signal(i32),
    Exited(io::Result<ExitStatus>),
}

/// Runs `spec`, streaming its output into `sink` and to the console.
pub fn run(spec: &Spec, sink: &mut dyn LogSink) -> Result<Outcome> {
    let (program, args) = spec
        .argv
        .split_first()
        .ok_or_else(|| Error::Inconsistent("no command given after --".into()))?;
    // One redactor per stream: each keeps the partial line of its own stream.
    let redactors = [
        Redactor::new(&spec.redaction).map_err(Error::Inconsistent)?,
        Redactor::new(&spec.redaction).map_err(Error::Inconsistent)?,
    ];
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if std::env::var_os("PACKER_LOG").is_none() {
        cmd.env("PACKER_LOG", "1");
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
    }

    // Signals are caught before the command starts, so none is lost in between.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| Error::io("cannot install signal handlers", e))?;
    let signal_handle = signals.handle();

    let started_at = crate::proof::now();
    let mut child = cmd.spawn().map_err(|e| Error::Spawn {
        program: program.to_string_lossy().into_owned(),
        source: e,
    })?;
    let pgid = child.id() as i32;
    let (tx, rx) = mpsc::sync_channel::<Event>(IN_FLIGHT);

    let stdout = child.stdout.take().expect("stdout is piped");
    let stderr = child.stderr.take().expect("stderr is piped");
    let readers = [
        spawn_reader(Stream::Out, stdout, tx.clone()),
        spawn_reader(Stream::Err, stderr, tx.clone()),
    ];
    let waiter = {
        let tx = tx.clone();
        thread::spawn(move || {
            let _ = tx.send(Event::Exited(child.wait()));
        })
    };
    let signal_thread = {
        let tx = tx.clone();
        thread::spawn(move || {
            for sig in signals.forever() {
                if tx.send(Event::Signal(sig)).is_err() {
                    break;
                }
            }
        })
    };
    drop(tx);

    let merged = merge(spec, sink, &rx, pgid, redactors);
    signal_handle.close();
    // Readers end at end of file, or at their next send now that the channel is gone; a reader
    // still blocked on a pipe that an escaped grandchild holds is not waited for.
    drop(rx);
    drop(readers);
    let _ = waiter.join();
    let _ = signal_thread.join();
    let (status, interrupted_by, redactions) = merged?;
    let finished_at = crate::proof::now();
    Ok(Outcome {
        exit_code: exit_code(status),
        interrupted_by,
        started_at,
        finished_at,
        redactions,
    })
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Reads `from` in chunks that end at a line end where one is near, so lines of stdout and
/// stderr interleave whole in the log.
fn spawn_reader(
    stream: Stream,
    mut from: impl Read + Send + 'static,
    tx: SyncSender<Event>,
) -> thread::JoinHandle<()> {
    thread::spawn(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0usize;
        loop {
            match from.read(&mut buf[filled..]) {
                Ok(0) => {
                    if filled > 0
                        && tx
                            .send(Event::Chunk(stream, buf[..filled].to_vec()))
                            .is_err()
                    {
                        return;
                    }
                    let _ = tx.send(Event::Closed);
                    return;
                }
                Ok(n) => {
                    filled += n;
                    // Hand over everything up to the last newline; keep a partial line unless
                    // the buffer is full.
                    let cut = match buf[..filled].iter().rposition(|&b| b == b'\n') {
                        Some(i) => i + 1,
                        None if filled == buf.len() => filled,
                        None => continue,
                    };
                    if tx.send(Event::Chunk(stream, buf[..cut].to_vec())).is_err() {
                        return;
                    }
                    buf.copy_within(cut..filled, 0);
                    filled -= cut;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.send(Event::ReadFailed(stream, e));
                    return;
                }
            }
        }
    })
}

/// Sends `sig` to the process group; a group that is already gone is not an error.
fn signal_group(pgid: i32, sig: i32) {
    // SAFETY: killpg has no memory-safety preconditions.
    let rc = unsafe { libc::killpg(pgid, sig) };
    if rc != 0 {
        tracing::debug!(pgid, sig, "killpg: {}", io::Error::last_os_error());
    }
}

/// One output stream on its way: colours removed, then secrets.
struct Lane {
    strip: AnsiStripper,
    redactor: Redactor,
    clean: Vec<u8>,
    redacted: Vec<u8>,
}

impl Lane {
    fn new(redactor: Redactor) -> Self {
        Lane {
            strip: AnsiStripper::new(),
            redactor,
            clean: Vec::with_capacity(CHUNK),
            redacted: Vec::with_capacity(CHUNK),
        }
    }

    /// Filters `bytes`; the result is in `self.redacted`.
    fn push(&mut self, bytes: &[u8]) {
        self.clean.clear();
        self.redacted.clear();
        self.strip.push(bytes, &mut self.clean);
        self.redactor.push(&self.clean, &mut self.redacted);
    }

    /// The rest held back at the end of the stream; in `self.redacted`.
    fn finish(&mut self) {
        self.redacted.clear();
        self.redactor.finish(&mut self.redacted);
    }
}

type Merged = (
    ExitStatus,
    Option<i32>,
    std::collections::BTreeMap<String, u64>,
);

/// The merge loop: log, console, signals, and the end of the command.
fn merge(
    spec: &Spec,
    sink: &mut dyn LogSink,
    rx: &Receiver<Event>,
    pgid: i32,
    [out_redactor, err_redactor]: [Redactor; 2],
) -> Result<Merged> {
    let mut out_lane = Lane::new(out_redactor);
    let mut err_lane = Lane::new(err_redactor);
    let mut console_err = DebugFilter::new(spec.show_debug);
    let mut open = 2;
    let mut status: Option<ExitStatus> = None;
    let mut interrupted_by: Option<i32> = None;
    let mut kill_at: Option<Instant> = None;
    let mut drain_until: Option<Instant> = None;
    let mut sink_error: Option<io::Error> = None;
    let stderr = io::stderr();

    while open > 0 || status.is_none() {
        let deadline = match (kill_at, drain_until) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let event = match deadline {
            Some(d) => match rx.recv_timeout(d.saturating_duration_since(Instant::now())) {
                Ok(ev) => ev,
                Err(RecvTimeoutError::Timeout) => {
                    if kill_at.is_some_and(|k| Instant::now() >= k) {
                        tracing::warn!(
                            "the command did not stop within the grace period: killing it"
                        );
                        signal_group(pgid, libc::SIGKILL);
                        kill_at = None;
                    }
                    if drain_until.is_some_and(|d| Instant::now() >= d) {
                        // The command is gone but something it started still holds its
                        // output open: end it rather than wait forever.
                        signal_group(pgid, libc::SIGKILL);
                        break;
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            },
            None => match rx.recv() {
                Ok(ev) => ev,
                Err(_) => break,
            },
        };
        match event {
            Event::Chunk(stream, bytes) => {
                let lane = match stream {
                    Stream::Out => &mut out_lane,
                    Stream::Err => &mut err_lane,
                };
                lane.push(&bytes);
                deliver(
                    stream,
                    &lane.redacted,
                    sink,
                    &mut console_err,
                    &mut sink_error,
                );
            }
            Event::Closed => open -= 1,
            Event::ReadFailed(stream, e) => {
                tracing::warn!(?stream, "cannot read the command's output: {e}");
                open -= 1;
            }
            Event::Signal(sig) => {
                tracing::warn!(
                    "received signal {sig}: passing it on to the command and waiting up to {}s for it to stop",
                    spec.grace.as_secs()
                );
                signal_group(pgid, sig);
                if interrupted_by.is_none() {
                    interrupted_by = Some(sig);
                    kill_at = Some(Instant::now() + spec.grace);
                }
            }
            Event::Exited(result) => {
                let st = result.map_err(|e| Error::io("cannot wait for the command", e))?;
                status = Some(st);
                kill_at = None;
                if interrupted_by.is_some() {
                    // Packer has cleaned up; anything left in its group is an orphan.
                    signal_group(pgid, libc::SIGKILL);
                }
                drain_until = Some(Instant::now() + DRAIN);
            }
        }
    }
    for (stream, lane) in [(Stream::Out, &mut out_lane), (Stream::Err, &mut err_lane)] {
        lane.finish();
        deliver(
            stream,
            &lane.redacted,
            sink,
            &mut console_err,
            &mut sink_error,
        );
    }
    let _ = console_err.finish(&mut stderr.lock());
    let mut redactions = out_lane.redactor.counts();
    for (rule, n) in err_lane.redactor.counts() {
        *redactions.entry(rule).or_default() += n;
    }
    if let Some(e) = sink_error {
        return Err(Error::io("cannot write the captured log", e));
    }
    let status = status.ok_or_else(|| {
        Error::io(
            "the command's status is unknown",
            io::Error::other("its waiter ended early"),
        )
    })?;
    Ok((status, interrupted_by, redactions))
}

/// Sends redacted bytes to the console (stdout as is, stderr without debug lines) and the log.
fn deliver(
    stream: Stream,
    bytes: &[u8],
    sink: &mut dyn LogSink,
    console_err: &mut DebugFilter,
    sink_error: &mut Option<io::Error>,
) {
    if bytes.is_empty() {
        return;
    }
    match stream {
        Stream::Out => {
            let mut out = io::stdout().lock();
            let _ = out.write_all(bytes).and_then(|()| out.flush());
        }
        Stream::Err => {
            let _ = console_err.write(bytes, &mut io::stderr().lock());
        }
    }
    if sink_error.is_none()
        && let Err(e) = sink.write_log(bytes)
    {
        // Keep draining the pipes so the command is not blocked, then report.
        *sink_error = Some(e);
    }
}

/// Hides Packer's timestamped debug lines (`2026/11/26 10:15:00 …`) from the console, a line at
/// a time, deciding on each line's first bytes so that lines of any length stream through.
struct DebugFilter {
    show_all: bool,
    /// The start of the current line, until it is long enough to decide.
    head: Vec<u8>,
    /// Whether the rest of the current line is shown (`None`: not decided yet).
    showing: Option<bool>,
    /// The last line decided was hidden debug output: Packer's log continues multi-line
    /// messages on lines of their own, without a time stamp.
    after_debug: bool,
}

/// `YYYY/MM/DD HH:MM:SS ` is 20 bytes.
const STAMP: usize = 20;

impl DebugFilter {
    fn new(show_all: bool) -> Self {
        DebugFilter {
            show_all,
            head: Vec::with_capacity(STAMP),
            showing: None,
            after_debug: false,
        }
    }

    fn is_debug(head: &[u8]) -> bool {
        let shape = b"dddd/dd/dd dd:dd:dd ";
        head.len() >= STAMP
            && head[..STAMP].iter().zip(shape).all(|(&b, &s)| match s {
                b'd' => b.is_ascii_digit(),
                other => b == other,
            })
    }

    /// A line of Packer's debug log without its own time stamp: the rest of a multi-line `ui:`
    /// message (`==> Wait completed…`, already shown from stdout), a blank line, or the
    /// "not using a TTY" notice.
    fn is_continuation(head: &[u8]) -> bool {
        let line = head.strip_suffix(b"\n").unwrap_or(head);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        line.is_empty()
            || line.starts_with(b"==> ")
            || line.starts_with(b"--> ")
            || line.starts_with(b"Running in backgroun")
    }

    fn write(&mut self, bytes: &[u8], out: &mut dyn Write) -> io::Result<()> {
        if self.show_all {
            out.write_all(bytes)?;
            return out.flush();
        }
        for line in bytes.split_inclusive(|&b| b == b'\n') {
            let ends = line.last() == Some(&b'\n');
            match self.showing {
                Some(show) => {
                    if show {
                        out.write_all(line)?;
                    }
                }
                None => {
                    let take = (STAMP - self.head.len()).min(line.len());
                    self.head.extend_from_slice(&line[..take]);
                    if self.head.len() >= STAMP || ends {
                        let hide = Self::is_debug(&self.head)
                            || (self.after_debug && Self::is_continuation(&self.head));
                        self.after_debug = hide;
                        let show = !hide;
                        if show {
                            out.write_all(&self.head)?;
                            out.write_all(&line[take..])?;
                        }
                        self.showing = Some(show);
                        self.head.clear();
                    }
                }
            }
            if ends {
                self.showing = None;
            }
        }
        out.flush()
    }

    fn finish(&mut self, out: &mut dyn Write) -> io::Result<()> {
        if !self.head.is_empty() && !Self::is_debug(&self.head) {
            out.write_all(&self.head)?;
        }
        self.head.clear();
        out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filtered(chunks: &[&[u8]]) -> Vec<u8> {
        let mut f = DebugFilter::new(false);
        let mut out = Vec::new();
        for c in chunks {
            f.write(c, &mut out).unwrap();
        }
        f.finish(&mut out).unwrap();
        out
    }

    #[test]
    fn debug_lines_are_hidden_from_the_console_whatever_the_chunking() {
        let input: &[u8] = b"2026/11/26 19:17:58 [INFO] Packer version: 1.6.6\n\
            Build 'null.x' errored: exit status 3\n\
            2026/11/26 19:17:58 packer-provisioner-shell-local plugin: debug\n\
            short\n";
        let expected: &[u8] = b"Build 'null.x' errored: exit status 3\nshort\n";
        assert_eq!(filtered(&[input]), expected);
        for split in 0..input.len() {
            let (a, b) = input.split_at(split);
            assert_eq!(filtered(&[a, b]), expected, "split at {split}");
        }
    }

    #[test]
    fn continuations_of_debug_messages_are_hidden_but_errors_are_not() {
        let input: &[u8] = b"2026/11/26 19:17:58 Setting cache directory: /x\n\
            Running in background, not using a TTY\n\
            2026/11/26 19:18:02 ui: \n\
            ==> Wait completed after 3 seconds\n\
            \n\
            Error: Failed to prepare build\n\
            ==> shown: not after a debug line\n";
        let expected: &[u8] =
            b"Error: Failed to prepare build\n==> shown: not after a debug line\n";
        for split in [1, 13, input.len()] {
            let (a, b) = input.split_at(split);
            assert_eq!(filtered(&[a, b]), expected, "split at {split}");
        }
    }

    #[test]
    fn an_unfinished_last_line_is_still_shown() {
        assert_eq!(filtered(&[b"no newline"]), b"no newline");
        assert_eq!(filtered(&[b"2026/11/26 19:17:58 x"]), b"");
    }
}
