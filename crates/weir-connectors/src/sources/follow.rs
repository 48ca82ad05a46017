//! `file` with `follow: true`: a file read as it grows, like `tail -F`,
//! until the run is stopped.
//!
//! After the end of the file the reader polls it every [`POLL`]: new bytes
//! are read; a line is sent only once its newline arrived (a line being
//! written is not cut). Between polls it checks what the path names:
//!
//! * **Rotation** (the path now names another file, or none: `logrotate`
//!   renaming `app.log` to `app.log.1`): the old file is read to its end
//!   (its last line sent even without a newline: it is complete), then the
//!   new file is read from its start once it exists.
//! * **Truncation** (the same file, now shorter than what was read:
//!   `copytruncate`, `> app.log`): reading starts over at its beginning;
//!   a partial line held from before is dropped (it was overwritten).
//!
//! Each new file (or truncation) starts a new *generation*: positions of
//! its lines read `app.log@1:7` (line 7 of the first file after the one
//! the run started with), so a dead letter still says which one.
//!
//! Lines are sent through the [`live`](super::live) stream, so a line
//! reaches the pipeline when it is written, and a stop (Ctrl-C) ends the
//! reader at its next poll. A followed input keeps no checkpoint: `weir
//! run --resume` refuses it (a rotated file's lines could not be told from
//! the new one's).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::record::Position;
use crate::sources::file::is_blank;
use crate::sources::live::Lines;
use crate::sources::{InvalidUtf8, Raw, Text, raw_from_text};

/// How often a file at its end is looked at again.
pub const POLL: Duration = Duration::from_millis(100);

/// Bytes read at a time.
const READ: usize = 64 * 1024;

/// A followed file's lines.
pub(crate) struct Follow {
    path: PathBuf,
    /// The path as positions show it.
    shown: Arc<str>,
    input: Arc<str>,
    invalid_utf8: InvalidUtf8,
    skip_blank: bool,
    file: Option<(File, FileId)>,
    /// Bytes read from the current file.
    offset: u64,
    /// Bytes read and not yet sent as lines.
    buf: Vec<u8>,
    /// Lines sent from the current file.
    line: u64,
    generation: u32,
    /// The position label of the current generation.
    label: Arc<str>,
}

/// What identifies a file whatever its name: device and inode.
type FileId = (u64, u64);

#[cfg(unix)]
fn id_of(meta: &std::fs::Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn id_of(_meta: &std::fs::Metadata) -> FileId {
    (0, 0)
}

impl Follow {
    pub(crate) fn new(
        path: PathBuf,
        shown: &str,
        input: Arc<str>,
        invalid_utf8: InvalidUtf8,
        skip_blank: bool,
    ) -> Follow {
        let shown: Arc<str> = shown.into();
        Follow {
            path,
            label: shown.clone(),
            shown,
            input,
            invalid_utf8,
            skip_blank,
            file: None,
            offset: 0,
            buf: Vec::new(),
            line: 0,
            generation: 0,
        }
    }

    /// A new generation: the lines that follow are another file's.
    fn next_generation(&mut self) {
        self.generation += 1;
        self.label = format!("{}@{}", self.shown, self.generation).into();
        self.line = 0;
        self.offset = 0;
        self.buf.clear();
    }

    /// The first whole line held, as an item.
    fn take_line(&mut self, end: usize, with_newline: bool) -> Option<Raw> {
        let rest = self.buf.split_off(end + usize::from(with_newline));
        let mut bytes = std::mem::replace(&mut self.buf, rest);
        if with_newline {
            bytes.pop();
        }
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        self.line += 1;
        let text = Text::decode(&bytes, self.invalid_utf8, "line");
        if self.skip_blank && matches!(&text, Text::Valid(t) if is_blank(t)) {
            return None;
        }
        Some(raw_from_text(
            Arc::new(Position {
                input: self.input.clone(),
                file: Some(self.label.clone()),
                line: self.line,
            }),
            text,
        ))
    }

    /// What the path names now, if anything.
    fn path_id(&self) -> Option<FileId> {
        std::fs::metadata(&self.path).ok().map(|m| id_of(&m))
    }

    fn read_error(&self, e: &io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("cannot read {} at line {}: {e}", self.label, self.line + 1),
        )
    }
}

impl Lines for Follow {
    fn ready(&self) -> bool {
        self.buf.contains(&b'\n')
    }

    fn next(&mut self, quit: &dyn Fn() -> bool) -> Option<Option<io::Result<Raw>>> {
        let mut chunk = vec![0u8; READ];
        loop {
            if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                return Some(self.take_line(end, true).map(Ok));
            }
            let Some((file, id)) = &mut self.file else {
                // Not open yet (the start, or after a rotation): open what
                // the path names, or wait for it to exist.
                match File::open(&self.path) {
                    Ok(f) => match f.metadata() {
                        Ok(m) => self.file = Some((f, id_of(&m))),
                        Err(e) => return Some(Some(Err(self.read_error(&e)))),
                    },
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        if wait(quit) {
                            return None;
                        }
                    }
                    Err(e) => return Some(Some(Err(self.read_error(&e)))),
                }
                continue;
            };
            let id = *id;
            match file.read(&mut chunk) {
                Ok(0) => {}
                Ok(n) => {
                    self.offset += n as u64;
                    self.buf.extend_from_slice(&chunk[..n]);
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Some(Some(Err(self.read_error(&e)))),
            }
            // At the end of what the file holds now.
            let len = match file.metadata() {
                Ok(m) => m.len(),
                Err(e) => return Some(Some(Err(self.read_error(&e)))),
            };
            if self.path_id() != Some(id) {
                // Rotated: what was written to it before the rotation is
                // read to its end (the writer may have added to it since
                // the read above), then it is complete, its last line too.
                let (mut old, _) = self.file.take().expect("open");
                loop {
                    match old.read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => return Some(Some(Err(self.read_error(&e)))),
                    }
                }
                if let Some(end) = self.buf.iter().position(|&b| b == b'\n') {
                    // Whole lines first; the check comes round again.
                    self.file = Some((old, id));
                    return Some(self.take_line(end, true).map(Ok));
                }
                let last = (!self.buf.is_empty())
                    .then(|| self.take_line(self.buf.len(), false))
                    .flatten();
                self.next_generation();
                if let Some(raw) = last {
                    return Some(Some(Ok(raw)));
                }
                continue;
            }
            if len < self.offset {
                // Truncated: start over on what it holds now.
                let rewound = self.file.as_mut().map(|(f, _)| f.seek(SeekFrom::Start(0)));
                if let Some(Err(e)) = rewound {
                    return Some(Some(Err(self.read_error(&e))));
                }
                self.next_generation();
                continue;
            }
            if wait(quit) {
                return None;
            }
        }
    }
}

/// Sleeps one [`POLL`]; true when the reader should end instead.
fn wait(quit: &dyn Fn() -> bool) -> bool {
    if quit() {
        return true;
    }
    std::thread::sleep(POLL);
    quit()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn lines(f: &mut Follow, n: usize) -> Vec<(String, String)> {
        let never = || false;
        (0..n)
            .map(|_| match f.next(&never) {
                Some(Some(Ok(Raw::Line { pos, text }))) => (pos.to_string(), text),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn grows_rotates_and_truncates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let mut w = File::create(&path).unwrap();
        write!(w, "a\nb\npart").unwrap();
        let mut f = Follow::new(
            path.clone(),
            "app.log",
            "in".into(),
            InvalidUtf8::DeadLetter,
            false,
        );
        assert_eq!(
            lines(&mut f, 2),
            [
                ("app.log:1".into(), "a".into()),
                ("app.log:2".into(), "b".into())
            ]
        );
        assert!(!f.ready(), "a line being written is held");
        // The line is finished, and more comes.
        write!(w, "ial\r\nc\n").unwrap();
        assert_eq!(
            lines(&mut f, 2),
            [
                ("app.log:3".into(), "partial".into()),
                ("app.log:4".into(), "c".into())
            ]
        );
        // Rotation: the old file's last line (no newline) is sent, then
        // the new file from its start.
        write!(w, "last").unwrap();
        std::fs::rename(&path, dir.path().join("app.log.1")).unwrap();
        let mut w = File::create(&path).unwrap();
        writeln!(w, "new").unwrap();
        assert_eq!(
            lines(&mut f, 2),
            [
                ("app.log:5".into(), "last".into()),
                ("app.log@1:1".into(), "new".into())
            ]
        );
        // Truncation: from the start again.
        w.set_len(0).unwrap();
        drop(w);
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        writeln!(w, "x").unwrap();
        assert_eq!(lines(&mut f, 1), [("app.log@2:1".into(), "x".into())]);
    }

    #[test]
    fn waits_for_the_file_and_ends_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        let mut f = Follow::new(
            path.clone(),
            "later.log",
            "in".into(),
            InvalidUtf8::DeadLetter,
            true,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(250));
            std::fs::write(&path, "{\"a\":1}\n\n").unwrap();
            std::thread::sleep(Duration::from_millis(300));
            s.store(true, Ordering::SeqCst);
        });
        let quit = || stop.load(Ordering::SeqCst);
        match f.next(&quit) {
            Some(Some(Ok(Raw::Line { text, .. }))) => assert_eq!(text, "{\"a\":1}"),
            other => panic!("{other:?}"),
        }
        // The blank line is skipped; then nothing until told to end.
        assert!(matches!(f.next(&quit), Some(None)));
        assert!(f.next(&quit).is_none());
        writer.join().unwrap();
    }
}
